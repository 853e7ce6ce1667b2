//! Shared helpers of the model tests: the committed PyTorch fixtures and comparisons.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use meft_models::{Llama, ModelConfig, OpPath, WeightMap, hf};

/// The fixture cases written by `tools/golden/make_fixtures.py`.
pub const CASES: [&str; 2] = ["llama_tiny", "mistral_tiny"];

/// Directory of a fixture case.
pub fn fixture(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(case)
}

/// The configuration of a case.
pub fn config(case: &str) -> ModelConfig {
    ModelConfig::from_hf_json(fixture(case).join("config.json")).expect("fixture config")
}

/// Raw tensors of the case checkpoint.
pub fn raw_weights(case: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(case).join("model.safetensors"), &Device::Cpu).expect("fixture weights")
}

/// PyTorch outputs of the case.
pub fn expected(case: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(case).join("expected.safetensors"), &Device::Cpu).expect("fixture outputs")
}

/// The model of a case in f32, through the public HF loader.
pub fn model(case: &str, path: OpPath) -> Llama {
    let weights = hf::load_safetensors(&fixture(case), DType::F32, &Device::Cpu).expect("load");
    let mut m = Llama::load(&config(case), weights, DType::F32, &Device::Cpu).expect("build");
    m.op_path = path;
    m
}

/// A model built from a prepared weight map.
pub fn model_from(cfg: &ModelConfig, weights: HashMap<String, Tensor>, path: OpPath) -> Llama {
    let mut m = Llama::load(cfg, WeightMap::new(weights, "test"), DType::F32, &Device::Cpu).expect("build");
    m.op_path = path;
    m
}

/// The fixture's input tokens as u32, `(batch, seq)`.
pub fn tokens(case: &str) -> Tensor {
    expected(case)["tokens"].to_dtype(DType::U32).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

/// Asserts `|a − b| ≤ rel · max(|b|, 1)` elementwise (relative for large values, absolute near 0).
pub fn assert_rel_close(what: &str, a: &Tensor, b: &Tensor, rel: f32) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    for (i, (x, y)) in flat(a).iter().zip(flat(b)).enumerate() {
        assert!((x - y).abs() <= rel * y.abs().max(1.0), "{what}[{i}]: got {x}, expected {y}");
    }
}

/// Asserts `max|a − b| ≤ rel · max|b|` (norm-wise relative; gradients span many magnitudes).
pub fn assert_norm_close(what: &str, a: &Tensor, b: &Tensor, rel: f32) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes differ");
    let (a, b) = (flat(a), flat(b));
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(scale > 0.0, "{what}: reference is all zeros");
    assert!(err <= rel * scale, "{what}: max error {err} exceeds {rel} × {scale}");
}

/// A scalar tensor as f64.
pub fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}
