//! `meft reproduce` end to end: the smoke profile on the real assets writes every section,
//! figure and result file (this is the smoke profile CI runs); the synthetic fallback says so at
//! the top of the report; `--only` re-runs one experiment and keeps the others' sections.

use std::path::Path;
use std::process::{Command, Output};

fn reproduce(paper: &Path, runs: &Path, extra: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_meft"))
        .args(["reproduce", "--profile", "smoke", "--paper-dir"])
        .arg(paper)
        .arg("--runs-dir")
        .arg(runs)
        .args(extra)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("run meft reproduce");
    assert!(out.status.success(), "meft reproduce failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Every experiment's section, figures (PNG + SVG) and results (JSON + HDF5) are there.
fn assert_complete(paper: &Path) -> String {
    let report = std::fs::read_to_string(paper.join("REPRODUCTION.md")).expect("report");
    assert!(!report.contains("not run"), "{report}");
    for name in ["table1", "size", "key_experts", "top_k", "experts", "traffic"] {
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(paper.join(format!("results/{name}.json"))).expect("section json")).expect("json");
        assert!(paper.join(format!("results/{name}.h5")).is_file(), "{name}.h5");
        let figures = json["figures"].as_array().expect("figures");
        assert!(figures.len() >= 2, "{name}: {figures:?} (PNG and SVG of every figure)");
        for f in figures {
            assert!(paper.join(f.as_str().expect("path")).is_file(), "{name}: missing {f}");
        }
        assert!(report.contains(json["title"].as_str().expect("title")), "{name} section missing");
    }
    report
}

#[test]
fn smoke_profile_on_the_real_assets_writes_the_whole_report() {
    let (Some(_), Some(_), Some(_)) =
        (meft_assets::require_model("smollm2-135m-instruct"), meft_assets::require_dataset("nq_open"), meft_assets::require_dataset("trivia_qa"))
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let paper = dir.path().join("paper");
    reproduce(&paper, &dir.path().join("runs"), &[]);
    let report = assert_complete(&paper);
    assert!(!report.contains("SYNTHETIC"), "real assets were available");
    assert!(report.contains("SmolLM2-135M"));
}

#[test]
fn synthetic_fallback_is_loud_and_only_keeps_other_sections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paper = dir.path().join("paper");
    let runs = dir.path().join("runs");
    reproduce(&paper, &runs, &["--offline-reason", "test: no network"]);
    let report = assert_complete(&paper);
    let warning = report.lines().find(|l| l.starts_with('>')).expect("a warning block");
    assert!(warning.contains("SYNTHETIC FALLBACK") && warning.contains("test: no network"), "{warning}");
    assert!(report.find("SYNTHETIC FALLBACK") < report.find("## 1."), "the warning must come first");
    let before = std::fs::read_to_string(paper.join("results/top_k.json")).expect("top_k");
    reproduce(&paper, &runs, &["--offline-reason", "test: no network", "--only", "table1"]);
    assert_complete(&paper);
    assert_eq!(std::fs::read_to_string(paper.join("results/top_k.json")).expect("top_k"), before, "--only table1 must not touch top_k");
}

/// The `runs` tally of `results/<name>.json`: (from scratch, resumed, reused).
fn tally(paper: &Path, name: &str) -> (u64, u64, u64) {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(paper.join(format!("results/{name}.json"))).expect("section json")).expect("json");
    let n = |k: &str| json["runs"][k].as_u64().unwrap_or_else(|| panic!("runs.{k} missing: {}", json["runs"]));
    (n("fresh"), n("resumed"), n("reused"))
}

#[test]
fn rerunning_reuses_every_outcome_and_a_lost_outcome_resumes_its_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paper = dir.path().join("paper");
    let runs = dir.path().join("runs");
    let args = ["--offline-reason", "test: no network", "--only", "table1"];
    reproduce(&paper, &runs, &args);
    let (fresh, resumed, reused) = tally(&paper, "table1");
    assert!(fresh > 1 && resumed == 0, "first invocation: {fresh} fresh, {resumed} resumed, {reused} reused");
    reproduce(&paper, &runs, &args);
    assert_eq!(tally(&paper, "table1"), (0, 0, fresh + reused), "an unchanged rerun reads every saved outcome");
    let trained = |path: &std::path::PathBuf| {
        let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).expect("outcome")).expect("json");
        saved["outcome"]["steps"].as_u64().unwrap_or(0) > 0
    };
    let outcome = std::fs::read_dir(runs.join("smoke").join("outcomes"))
        .expect("outcomes")
        .map(|e| e.expect("entry").path())
        .filter(trained)
        .max()
        .expect("a trained run's outcome");
    std::fs::remove_file(outcome).expect("remove one outcome");
    reproduce(&paper, &runs, &args);
    assert_eq!(tally(&paper, "table1"), (0, 1, fresh + reused - 1), "the run without its outcome continues from its checkpoint");
    let report = std::fs::read_to_string(paper.join("REPRODUCTION.md")).expect("report");
    assert!(report.contains("0 run from scratch, 1 resumed from checkpoints"), "the section's heading says how its runs were satisfied");
}
