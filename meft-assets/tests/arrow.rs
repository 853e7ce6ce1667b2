//! The Arrow IPC stream reader against a pyarrow-written fixture (see
//! `tools/make_arrow_fixture.py`) and against corrupted copies of it.

use serde_json::Value;

const ARROW: &[u8] = include_bytes!("fixtures/tiny.arrow");
const EXPECTED: &str = include_str!("fixtures/tiny.jsonl");

fn read(bytes: &[u8]) -> meft_assets::Result<Vec<Value>> {
    let mut rows = Vec::new();
    let n = meft_assets::arrow::for_each_row(bytes, "tiny.arrow", |row| {
        rows.push(row);
        Ok(())
    })?;
    assert_eq!(n, rows.len());
    Ok(rows)
}

#[test]
fn fixture_rows_match_pyarrow() {
    let rows = read(ARROW).unwrap();
    let expected: Vec<Value> = EXPECTED.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 12);
    for (i, (got, want)) in rows.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "row {i}");
    }
}

#[test]
fn every_truncation_is_an_error_or_a_prefix_never_a_panic() {
    let full = read(ARROW).unwrap();
    for cut in 0..ARROW.len() {
        // A cut exactly between messages is a valid shorter stream; anything else must fail.
        if let Ok(rows) = read(&ARROW[..cut]) {
            assert!(rows.len() <= full.len() && rows[..] == full[..rows.len()], "cut {cut}");
        }
    }
}

#[test]
fn flipped_bytes_never_panic() {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let mut bytes = ARROW.to_vec();
        let at = (rng as usize) % bytes.len();
        bytes[at] ^= (rng >> 32) as u8 | 1;
        let _ = read(&bytes);
    }
}

#[test]
fn empty_input_names_the_file() {
    let err = read(&[]).unwrap_err().to_string();
    assert!(err.contains("tiny.arrow") && err.contains("no schema"), "{err}");
}

#[test]
fn callback_errors_propagate() {
    let err = meft_assets::arrow::for_each_row(ARROW, "tiny.arrow", |_| Err(meft_assets::AssetError::format("sink", "full"))).unwrap_err();
    assert_eq!(err.to_string(), "sink: full");
}
