//! Both Rust dequantisers against the `gguf` Python package on random blocks of every supported
//! type (`tests/fixtures/gguf_dequant_reference.json`, written by
//! `tools/golden/gguf_dequant_reference.py`).
//!
//! Tolerance: |rust − python| ≤ 1e-6 · (1 + |python|); the formulas evaluate in the same order, so
//! in practice the values are identical.

use meft_models::gguf::dequant::{GgmlType, dequantize, dequantize_slow};
use serde_json::Value;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

#[test]
fn dequantisers_match_the_gguf_python_package() {
    let fixture: Value = serde_json::from_str(include_str!("fixtures/gguf_dequant_reference.json")).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8, "one case per supported type");
    for case in cases {
        let name = case["type"].as_str().unwrap();
        let ty = GgmlType::from_id(case["type_id"].as_u64().unwrap() as u32).unwrap();
        let n = case["n"].as_u64().unwrap() as usize;
        let bytes = hex(case["hex"].as_str().unwrap());
        assert_eq!(ty.bytes_for(n), Some(bytes.len()), "{name}: block size");
        let want: Vec<f64> = case["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        for (path, got) in [("fast", dequantize(ty, &bytes, n)), ("slow", dequantize_slow(ty, &bytes, n))] {
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let g = f64::from(*g);
                assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()), "{name} {path} [{i}]: {g} vs {w}");
            }
        }
    }
}
