//! Shared helpers for the integration tests: fixture paths and temporary JSONL files.

#![allow(dead_code)] // each test binary uses a different subset of the helpers

use std::io::Write;
use std::path::PathBuf;

use meft_eval::{Dataset, Example};

/// Path of a committed fixture file.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A temporary JSONL file holding `text`.
pub fn jsonl(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".jsonl").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

/// Loads the fixture of `dataset` (named after it) and checks the number of examples.
pub fn check(dataset: &str, expected_rows: usize) -> Vec<Example> {
    let parsed = Dataset::parse(dataset).unwrap();
    let examples = parsed.load(&fixture(&format!("{dataset}.jsonl"))).unwrap();
    assert_eq!(examples.len(), expected_rows, "{dataset}");
    examples
}

/// The error text of loading `text` as `dataset`, which must fail.
pub fn load_error(dataset: &str, text: &str) -> String {
    let file = jsonl(text);
    Dataset::parse(dataset).unwrap().load(file.path()).unwrap_err().to_string()
}
