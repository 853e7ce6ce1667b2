//! Typed errors for dataset loading, prediction scoring and results output.
//!
//! Every variant that comes from a file names the file, and schema errors also name the 1-based line
//! and the field, plus what the row should have looked like, so that a user can fix the data.

use std::path::PathBuf;

/// Errors from `meft-eval`.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSONL line is not valid JSON.
    #[error("{path}:{line}: invalid JSON ({source}); each line must be one JSON object")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parser error.
        source: serde_json::Error,
    },
    /// A row parsed as JSON but does not have the expected shape.
    #[error("{path}:{line}: field `{field}`: {problem}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending field (dotted path for nested fields).
        field: String,
        /// What is wrong and what was expected.
        problem: String,
    },
    /// The dataset name is not one this crate knows.
    #[error("unknown dataset `{name}`; known: {known}")]
    UnknownDataset {
        /// The name given.
        name: String,
        /// The names that are accepted.
        known: String,
    },
    /// Two rows of one file share an id.
    #[error("{path}:{line}: duplicate id `{id}` (first seen on line {first_line}); ids must be unique")]
    DuplicateId {
        /// The file.
        path: PathBuf,
        /// 1-based line of the second occurrence.
        line: usize,
        /// The repeated id.
        id: String,
        /// 1-based line of the first occurrence.
        first_line: usize,
    },
    /// A prediction names an id that the dataset does not have.
    #[error("{path}:{line}: prediction id `{id}` is not in dataset `{dataset}`; check that the predictions match the dataset")]
    UnknownPredictionId {
        /// The predictions file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The unknown id.
        id: String,
        /// The dataset scored against.
        dataset: String,
    },
    /// A split configuration is out of range.
    #[error("split: held_out_fraction must be in [0, 1], got {0}")]
    BadSplitFraction(f64),
    /// The HDF5 library reported an error.
    #[error("HDF5 {path}: {what}: {source}")]
    Hdf5 {
        /// The HDF5 file.
        path: PathBuf,
        /// What was being written.
        what: String,
        /// The library error.
        source: hdf5::Error,
    },
    /// A results table is inconsistent (e.g. columns of different lengths).
    #[error("results table `{table}`: {problem}")]
    Table {
        /// The table name.
        table: String,
        /// What is wrong.
        problem: String,
    },
    /// The model failed while generating (shapes, tokenizer, candle).
    #[error("model: {0}")]
    Model(#[from] meft_models::ModelError),
    /// A decoding setting or a model output is unusable.
    #[error("decoding: {problem}")]
    Decode {
        /// What is wrong and how to fix it.
        problem: String,
    },
}

impl EvalError {
    /// Wraps an I/O error with the file it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, EvalError>;
