//! Round trips through the HDF5 library's reader.

use super::*;
use crate::example::{Example, QaExample};
use crate::metrics::qa::CaseRule;
use crate::score::{Coverage, Metric, score_examples};
use std::collections::HashMap;

fn metadata() -> RunMetadata {
    RunMetadata { config_json: r#"{"lr":0.001}"#.into(), git_revision: "0123abc".into(), description: "test run".into() }
}

fn read_text_attr(location: &hdf5::Location, name: &str) -> String {
    location.attr(name).unwrap().read_scalar::<VarLenUnicode>().unwrap().as_str().to_owned()
}

fn small_report() -> Report {
    let qa = |id: &str, answer: &str| Example::Qa(QaExample { id: id.into(), question: "q".into(), answers: vec![answer.into()], context: None });
    let examples = vec![qa("a", "Paris"), qa("b", "Rome"), qa("c", "Oslo")];
    let predictions: HashMap<&str, &str> = [("a", "It is Paris."), ("b", "Milan")].into();
    score_examples("test", &examples, &predictions, Metric::SubstringEm(CaseRule::Sensitive), Coverage::All)
}

#[test]
fn report_and_trace_tables_round_trip_with_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.h5");
    let trace = Table {
        name: "ledger".into(),
        description: "one row per training step".into(),
        columns: vec![
            Column::new("step", "1", "optimizer step", ColumnValues::U64(vec![1, 2])),
            Column::new("h2d_bytes", "bytes", "host to device", ColumnValues::U64(vec![4096, 8192])),
            Column::new("step_time", "s", "wall time", ColumnValues::F64(vec![0.5, 0.25])),
        ],
    };
    write_tables(&path, &metadata(), &[report_table(&small_report()), trace]).unwrap();
    assert!(!temp_path(&path).exists());

    let file = hdf5::File::open(&path).unwrap();
    assert_eq!(read_text_attr(&file, "format"), FORMAT);
    assert_eq!(read_text_attr(&file, "config"), r#"{"lr":0.001}"#);
    assert_eq!(read_text_attr(&file, "git_revision"), "0123abc");
    let predictions = file.group("predictions").unwrap();
    assert_eq!(predictions.attr("rows").unwrap().read_scalar::<u64>().unwrap(), 3);
    let ids: Vec<String> = predictions.dataset("id").unwrap().read_raw::<VarLenUnicode>().unwrap().iter().map(|s| s.as_str().to_owned()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let primary = predictions.dataset("primary").unwrap().read_raw::<f64>().unwrap();
    assert_eq!(primary, [1.0, 0.0, 0.0]);
    let has = predictions.dataset("has_prediction").unwrap().read_raw::<u64>().unwrap();
    assert_eq!(has, [1, 1, 0]);
    let iou = predictions.dataset("api_iou").unwrap().read_raw::<f64>().unwrap();
    assert!(iou.iter().all(|v| v.is_nan()));
    let ledger = file.group("ledger").unwrap();
    let bytes = ledger.dataset("h2d_bytes").unwrap();
    assert_eq!(bytes.read_raw::<u64>().unwrap(), [4096, 8192]);
    assert_eq!(read_text_attr(&bytes, "unit"), "bytes");
    assert_eq!(read_text_attr(&ledger.dataset("step_time").unwrap(), "unit"), "s");
}

#[test]
fn ragged_tables_are_rejected_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.h5");
    let table = Table {
        name: "t".into(),
        description: String::new(),
        columns: vec![Column::new("x", "1", "", ColumnValues::F64(vec![1.0])), Column::new("y", "1", "", ColumnValues::U64(vec![1, 2]))],
    };
    let err = write_tables(&path, &metadata(), &[table]).unwrap_err().to_string();
    assert!(err.contains("column `y` has 2 rows, expected 1"), "{err}");
    assert!(!path.exists());
}

#[test]
fn nul_characters_in_text_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nul.h5");
    let table =
        Table { name: "t".into(), description: "d".into(), columns: vec![Column::new("s", "text", "", ColumnValues::Text(vec!["a\0b".into()]))] };
    write_tables(&path, &metadata(), &[table]).unwrap();
    let file = hdf5::File::open(&path).unwrap();
    let text = file.dataset("t/s").unwrap().read_raw::<VarLenUnicode>().unwrap();
    assert_eq!(text[0].as_str(), "a\u{fffd}b");
}
