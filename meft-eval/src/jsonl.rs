//! JSONL reading with line numbers, and typed field access whose errors name file, line and field.
//!
//! Blank lines are skipped (a trailing newline is common); every other line must hold one JSON
//! object. Field lookups take a path of keys (`&["answer", "value"]`) so that nested fields are
//! reported as `answer.value`.

use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{EvalError, Result};

/// One JSONL row: the object plus where it came from.
#[derive(Debug)]
pub struct Row<'a> {
    /// The file the row was read from.
    pub path: &'a Path,
    /// 1-based line number.
    pub line: usize,
    /// The parsed object.
    pub object: Map<String, Value>,
}

/// Reads `path` and applies `parse` to every non-blank line, in order.
///
/// Stops at the first error; a line that is not a JSON object is a [`EvalError::Json`] or
/// [`EvalError::Schema`] error naming the line.
pub fn map_rows<T>(path: &Path, mut parse: impl FnMut(&Row<'_>) -> Result<T>) -> Result<Vec<T>> {
    let file = std::fs::File::open(path).map_err(|e| EvalError::io(path, e))?;
    let mut out = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line_text = line.map_err(|e| EvalError::io(path, e))?;
        if line_text.trim().is_empty() {
            continue;
        }
        let line_no = index + 1;
        let value: Value = serde_json::from_str(&line_text).map_err(|source| EvalError::Json { path: path.to_path_buf(), line: line_no, source })?;
        let Value::Object(object) = value else {
            return Err(EvalError::Schema {
                path: path.to_path_buf(),
                line: line_no,
                field: "<row>".into(),
                problem: format!("expected a JSON object, found {}", kind(&value)),
            });
        };
        out.push(parse(&Row { path, line: line_no, object })?);
    }
    Ok(out)
}

/// A short name for the JSON type of `value`, for error messages.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Row<'_> {
    /// A schema error for `field` on this row.
    pub fn schema_error(&self, field: &[&str], problem: impl Into<String>) -> EvalError {
        EvalError::Schema { path: self.path.to_path_buf(), line: self.line, field: field.join("."), problem: problem.into() }
    }

    /// The value at `field`, if present and not null.
    pub fn get(&self, field: &[&str]) -> Option<&Value> {
        let (first, rest) = field.split_first()?;
        let mut value = self.object.get(*first)?;
        for key in rest {
            value = value.as_object()?.get(*key)?;
        }
        (!value.is_null()).then_some(value)
    }

    /// The value at `field`, or a "missing field" error.
    pub fn require(&self, field: &[&str]) -> Result<&Value> {
        self.get(field).ok_or_else(|| self.schema_error(field, "missing (or null); this row format requires it"))
    }

    /// The string at `field`.
    pub fn str(&self, field: &[&str]) -> Result<&str> {
        let value = self.require(field)?;
        value.as_str().ok_or_else(|| self.schema_error(field, format!("expected a string, found {}", kind(value))))
    }

    /// The string at `field`, or `None` when absent or null.
    pub fn opt_str(&self, field: &[&str]) -> Result<Option<&str>> {
        match self.get(field) {
            None => Ok(None),
            Some(_) => self.str(field).map(Some),
        }
    }

    /// A list of strings at `field` (a single string is accepted as a one-element list).
    pub fn str_list(&self, field: &[&str]) -> Result<Vec<String>> {
        match self.require(field)? {
            Value::String(text) => Ok(vec![text.clone()]),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    item.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| self.schema_error(field, format!("element {i}: expected a string, found {}", kind(item))))
                })
                .collect(),
            other => Err(self.schema_error(field, format!("expected a list of strings, found {}", kind(other)))),
        }
    }

    /// An identifier at `field`: a string, or an integer written as its decimal form.
    pub fn id(&self, field: &[&str]) -> Result<String> {
        id_text(self.require(field)?).ok_or_else(|| self.schema_error(field, "expected a string or an integer id"))
    }
}

/// The id text of a JSON value: strings as they are, integers in decimal; `None` for other types.
pub fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn reads_rows_with_line_numbers_and_skips_blank_lines() {
        let file = write("{\"a\": \"x\"}\n\n{\"a\": \"y\"}\n");
        let rows = map_rows(file.path(), |row| Ok((row.line, row.str(&["a"])?.to_owned()))).unwrap();
        assert_eq!(rows, vec![(1, "x".to_owned()), (3, "y".to_owned())]);
    }

    #[test]
    fn bad_json_names_the_line() {
        let file = write("{\"a\": 1}\n{not json\n");
        let err = map_rows(file.path(), |_| Ok(())).unwrap_err();
        assert!(matches!(err, EvalError::Json { line: 2, .. }), "{err}");
    }

    #[test]
    fn non_object_row_is_a_schema_error() {
        let file = write("[1, 2]\n");
        let err = map_rows(file.path(), |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains(":1: field `<row>`: expected a JSON object, found an array"), "{err}");
    }

    #[test]
    fn nested_field_errors_use_dotted_names() {
        let file = write("{\"answer\": {\"value\": 3}}\n");
        let err = map_rows(file.path(), |row| row.str(&["answer", "value"]).map(str::to_owned)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(":1: field `answer.value`: expected a string, found a number"), "{text}");
    }

    #[test]
    fn ids_accept_strings_and_integers_only() {
        let file = write("{\"id\": 7}\n{\"id\": \"q7\"}\n{\"id\": 1.5}\n");
        let err = map_rows(file.path(), |row| row.id(&["id"])).unwrap_err();
        assert!(matches!(err, EvalError::Schema { line: 3, .. }), "{err}");
        let ok = write("{\"id\": 7}\n{\"id\": \"q7\"}\n");
        assert_eq!(map_rows(ok.path(), |row| row.id(&["id"])).unwrap(), vec!["7", "q7"]);
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let err = map_rows(Path::new("/nonexistent/x.jsonl"), |_| Ok(())).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/x.jsonl"), "{err}");
    }
}
