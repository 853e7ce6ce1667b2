//! JSON results, written atomically, and the run metadata shared with the HDF5 files.
//!
//! A results file is replaced in one step: the JSON is written to `<name>.tmp` beside it, flushed
//! to disk (`fsync`), then renamed over the target, so a reader never sees half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};

/// What produced a result file; stored with every JSON report and as HDF5 root attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMetadata {
    /// The experiment configuration, as JSON text.
    pub config_json: String,
    /// `git rev-parse HEAD` of the code that ran (with `-dirty` when the tree had changes).
    pub git_revision: String,
    /// A one-line description of the run.
    pub description: String,
}

/// A report together with its metadata, as written to JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WithMetadata<T> {
    /// Where the result came from.
    pub metadata: RunMetadata,
    /// The result.
    pub result: T,
}

/// The temporary file used while writing `path`.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Flushes `tmp` to disk and renames it over `path`.
pub(crate) fn commit_temp(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::File::open(tmp).and_then(|f| f.sync_all()).map_err(|e| EvalError::io(tmp, e))?;
    std::fs::rename(tmp, path).map_err(|e| EvalError::io(path, e))
}

/// Writes `value` as pretty JSON to `path` atomically, creating parent directories.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| EvalError::io(parent, e))?;
    }
    let tmp = temp_path(path);
    let text = serde_json::to_string_pretty(value).map_err(|e| EvalError::io(path, e.into()))?;
    let mut file = std::fs::File::create(&tmp).map_err(|e| EvalError::io(&tmp, e))?;
    file.write_all(text.as_bytes()).and_then(|()| file.write_all(b"\n")).map_err(|e| EvalError::io(&tmp, e))?;
    drop(file);
    commit_temp(&tmp, path)
}

/// Reads a JSON file written by [`write_json`].
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| EvalError::Json { path: path.to_path_buf(), line: 1, source })
}

/// `git rev-parse HEAD` (`-dirty` when tracked files have changes; untracked files such as fresh
/// outputs do not count); `unknown` outside a repository.
pub fn git_revision() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(rev) if run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) => {
            format!("{rev}-dirty")
        }
        Some(rev) => rev,
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/report.json");
        let value = WithMetadata {
            metadata: RunMetadata { config_json: "{}".into(), git_revision: "abc".into(), description: "t".into() },
            result: vec![1.5, 2.0],
        };
        write_json(&path, &value).unwrap();
        let back: WithMetadata<Vec<f64>> = read_json(&path).unwrap();
        assert_eq!(back, value);
        assert!(!temp_path(&path).exists());
    }
}
