//! Tidy checks on the whole workspace: allowed crate edges (from `cargo metadata`), light
//! dependencies for `xtask` and `meft-assets`, workspace lints and pinned versions in every
//! manifest, file length limits, module docs, and `rustfmt.toml`'s formatting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Workspace crates each crate may depend on (normal, dev or build), as ARCHITECTURE.md draws them.
const ALLOWED_EDGES: &[(&str, &[&str])] = &[
    ("meft-assets", &[]),
    ("meft-core", &[]),
    ("meft-kernels", &["meft-core"]),
    ("meft-router", &[]),
    ("meft-offload", &["meft-core", "meft-router", "meft-kernels"]),
    ("meft-models", &["meft-core", "meft-assets"]),
    ("meft-eval", &["meft-core", "meft-models", "meft-assets"]),
    ("experiments", &["meft-core", "meft-kernels", "meft-router", "meft-offload", "meft-models", "meft-eval", "meft-assets"]),
    ("xtask", &["meft-assets"]),
];

/// External crates allowed in the two crates that must build in seconds on a fresh machine.
const LIGHT_DEPS: &[(&str, &[&str])] = &[
    ("meft-assets", &["serde", "serde_json", "thiserror", "sha2", "zip", "flate2", "indicatif"]),
    ("xtask", &["meft-assets", "anyhow", "clap", "serde_json"]),
];

/// Longest allowed file under a crate's `src/`, in lines.
const MAX_SRC_LINES: usize = 900;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace root").to_path_buf()
}

/// Workspace members: name -> (manifest path, direct dependencies as (name, kind)).
type Members = BTreeMap<String, (PathBuf, Vec<(String, String)>)>;

fn members() -> Members {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo).args(["metadata", "--format-version", "1", "--no-deps"]).current_dir(root()).output().expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let ids: Vec<&Value> = meta["workspace_members"].as_array().expect("workspace_members").iter().collect();
    let mut members = BTreeMap::new();
    for pkg in meta["packages"].as_array().expect("packages") {
        if !ids.contains(&&pkg["id"]) {
            continue;
        }
        let deps = pkg["dependencies"].as_array().into_iter().flatten().map(|d| {
            let kind = d["kind"].as_str().unwrap_or("normal").to_string();
            (d["name"].as_str().unwrap_or_default().to_string(), kind)
        });
        let manifest = PathBuf::from(pkg["manifest_path"].as_str().expect("manifest_path"));
        members.insert(pkg["name"].as_str().expect("name").to_string(), (manifest, deps.collect()));
    }
    members
}

/// Fails with every violation listed, or passes when there are none.
fn check(what: &str, violations: Vec<String>) {
    assert!(violations.is_empty(), "tidy: {what}:\n  {}", violations.join("\n  "));
}

/// Forbidden edges between workspace members.
fn edge_problems(members: &Members) -> Vec<String> {
    let mut bad = Vec::new();
    for (name, (_, deps)) in members {
        let Some((_, allowed)) = ALLOWED_EDGES.iter().find(|(n, _)| n == name) else {
            bad.push(format!("{name}: workspace member missing from ALLOWED_EDGES in xtask/tests/tidy.rs"));
            continue;
        };
        for (dep, kind) in deps.iter().filter(|(d, _)| members.contains_key(d)) {
            if !allowed.contains(&dep.as_str()) {
                bad.push(format!("{name} -> {dep} ({kind} dependency) is a forbidden edge"));
            }
        }
    }
    bad
}

#[test]
fn crate_edges_point_downwards_only() {
    check("forbidden crate edges", edge_problems(&members()));
}

#[test]
fn edge_checker_catches_upward_and_dev_edges() {
    let member = |deps: &[(&str, &str)]| (PathBuf::new(), deps.iter().map(|(d, k)| (d.to_string(), k.to_string())).collect());
    let mut m = Members::new();
    m.insert("meft-core".into(), member(&[("meft-models", "dev")]));
    m.insert("meft-models".into(), member(&[("meft-core", "normal"), ("candle-core", "normal")]));
    m.insert("xtask".into(), member(&[("meft-models", "build")]));
    m.insert("experiments".into(), member(&[("meft-models", "normal"), ("xtask", "dev")]));
    let bad = edge_problems(&m);
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(bad.iter().any(|b| b.contains("meft-core -> meft-models (dev")), "{bad:?}");
    m.insert("newcrate".into(), member(&[]));
    assert!(bad.iter().any(|b| b.contains("experiments -> xtask (dev")), "{bad:?}");
    assert_eq!(edge_problems(&m).len(), 4);
}

#[test]
fn assets_and_xtask_stay_light() {
    let members = members();
    let mut bad = Vec::new();
    for (name, allowed) in LIGHT_DEPS {
        let (_, deps) = members.get(*name).unwrap_or_else(|| panic!("{name} is not a workspace member"));
        for (dep, kind) in deps.iter().filter(|(_, k)| k != "dev") {
            if !allowed.contains(&dep.as_str()) {
                bad.push(format!("{name} -> {dep} ({kind}): not in its light-dependency list"));
            }
        }
    }
    check("heavy dependencies in crates that must build fast", bad);
}

/// `[section]` name -> its `key = value` lines, for a simple Cargo.toml.
fn sections(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = vec![(String::new(), Vec::new())];
    for line in text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()) {
        if line.starts_with('[') {
            out.push((line.trim_matches(['[', ']']).trim().to_string(), Vec::new()));
        } else if let Some(last) = out.last_mut() {
            last.1.push(line.to_string());
        }
    }
    out
}

fn is_dep_section(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    ["dependencies", "dev-dependencies", "build-dependencies"].contains(&last)
}

/// Problems in one member manifest: missing `[lints] workspace = true`, versions not from the
/// workspace.
fn manifest_problems(name: &str, text: &str) -> Vec<String> {
    let secs = sections(text);
    let mut bad = Vec::new();
    let lints_ok = secs.iter().any(|(s, lines)| s == "lints" && lines.iter().any(|l| l.replace(' ', "") == "workspace=true"));
    if !lints_ok {
        bad.push(format!("{name}: Cargo.toml lacks `[lints] workspace = true`"));
    }
    for (sec, lines) in &secs {
        if is_dep_section(sec) {
            for line in lines {
                let compact = line.replace(' ', "");
                let from_ws = compact.contains(".workspace=true") || compact.contains("{workspace=true");
                if !from_ws {
                    bad.push(format!("{name} [{sec}] `{line}`: use `<dep>.workspace = true` (pin it in the root)"));
                }
            }
        } else if let Some(dep) = sec.strip_prefix("dependencies.").or_else(|| sec.strip_prefix("dev-dependencies."))
            && !lines.iter().any(|l| l.replace(' ', "") == "workspace=true")
        {
            bad.push(format!("{name} [{sec}]: `{dep}` must use `workspace = true`"));
        }
    }
    bad
}

#[test]
fn manifests_use_workspace_lints_and_versions() {
    let mut bad = Vec::new();
    for (name, (manifest, _)) in members() {
        let text = std::fs::read_to_string(&manifest).expect("read member Cargo.toml");
        bad.extend(manifest_problems(&name, &text));
    }
    check("member manifests", bad);
}

#[test]
fn manifest_checker_catches_violations() {
    let good = "[package]\nname = \"a\"\n[lints]\nworkspace = true\n[dependencies]\nserde.workspace = true\n\
                zip = { workspace = true, features = [\"x\"] }\n";
    assert!(manifest_problems("a", good).is_empty());
    let bad = "[package]\nname = \"a\"\n[dependencies]\nserde = \"1\"\n[dev-dependencies.rand]\nversion = \"0.9\"\n";
    let problems = manifest_problems("a", bad);
    assert_eq!(problems.len(), 3, "{problems:?}");
}

/// Every `.rs` file of every member (skipping build outputs).
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() && !name.starts_with('.') && !name.starts_with("target") && name != "fixtures" {
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn source_files_are_documented_and_not_too_long() {
    let mut bad = Vec::new();
    for (_, (manifest, _)) in members() {
        let dir = manifest.parent().expect("crate dir");
        let mut files = Vec::new();
        rust_files(dir, &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read source");
            let rel = file.strip_prefix(root()).unwrap_or(&file).display().to_string();
            let first = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
            if !first.starts_with("//!") {
                bad.push(format!("{rel}: must start with a `//!` module doc"));
            }
            let lines = text.lines().count();
            if file.strip_prefix(dir).is_ok_and(|r| r.starts_with("src")) && lines > MAX_SRC_LINES {
                bad.push(format!("{rel}: {lines} lines (limit {MAX_SRC_LINES}; split it into a module directory)"));
            }
        }
    }
    check("source files", bad);
}

#[test]
fn workspace_is_formatted_by_rustfmt_toml() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let version = Command::new(&cargo).args(["fmt", "--version"]).output();
    if !version.is_ok_and(|o| o.status.success()) {
        println!("skipped: rustfmt is not installed (rustup component add rustfmt)");
        return;
    }
    let out = Command::new(cargo).args(["fmt", "--all", "--check"]).current_dir(root()).output().expect("run cargo fmt");
    let diff = String::from_utf8_lossy(&out.stdout);
    let files: Vec<&str> = diff.lines().filter_map(|l| l.strip_prefix("Diff in ")).collect();
    assert!(out.status.success(), "run `cargo fmt --all`; unformatted:\n  {}\n{}", files.join("\n  "), String::from_utf8_lossy(&out.stderr));
}
