//! Bad HF checkpoints give typed errors naming the file and the field, never a panic.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::*;
use meft_models::{Llama, ModelConfig, ModelError, hf};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meft-models-bad-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config_without(field: &str) -> String {
    let text = std::fs::read_to_string(fixture("mistral_tiny").join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_object_mut().unwrap().remove(field);
    v.to_string()
}

#[test]
fn config_missing_field_names_file_and_field() {
    for field in ["hidden_size", "vocab_size", "num_hidden_layers", "model_type", "rms_norm_eps"] {
        let path = Path::new("/some/dir/config.json");
        match ModelConfig::from_hf_json_str(&config_without(field), path) {
            Err(ModelError::ConfigField { file, field: f, .. }) => {
                assert_eq!(file, path);
                assert_eq!(f, field);
            }
            other => panic!("{field}: expected ConfigField, got {other:?}"),
        }
    }
    let err = ModelConfig::from_hf_json_str(&config_without("hidden_size"), Path::new("c.json")).unwrap_err();
    assert!(err.to_string().contains("c.json") && err.to_string().contains("hidden_size"), "{err}");
}

#[test]
fn config_defaults_and_unsupported_values() {
    let text = std::fs::read_to_string(fixture("mistral_tiny").join("config.json")).unwrap();
    let cfg = ModelConfig::from_hf_json_str(&text, Path::new("x")).unwrap();
    assert_eq!((cfg.head_dim, cfg.num_key_value_heads, cfg.sliding_window), (16, 1, Some(5)));
    assert_eq!(cfg.rope_layout, meft_models::RopeLayout::RotateHalf);
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.insert("sliding_window".into(), serde_json::Value::Null);
    obj.remove("head_dim");
    obj.remove("num_key_value_heads");
    let cfg = ModelConfig::from_hf_json_str(&v.to_string(), Path::new("x")).unwrap();
    assert_eq!((cfg.head_dim, cfg.num_key_value_heads, cfg.sliding_window), (16, 4, None));
    for (field, value) in [
        ("model_type", serde_json::json!("gpt2")),
        ("hidden_act", serde_json::json!("gelu")),
        ("hidden_size", serde_json::json!("64")),
        ("num_key_value_heads", serde_json::json!(3)),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v.as_object_mut().unwrap().insert(field.into(), value);
        match ModelConfig::from_hf_json_str(&v.to_string(), Path::new("x")) {
            Err(ModelError::ConfigField { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected ConfigField, got {other:?}"),
        }
    }
    assert!(matches!(ModelConfig::from_hf_json_str("{ not json", Path::new("x")), Err(ModelError::Json { .. })));
    assert!(matches!(ModelConfig::from_hf_json(Path::new("/nonexistent/config.json")), Err(ModelError::Io { .. })));
}

#[test]
fn missing_tensor_is_named() {
    let dir = scratch("missing");
    let mut weights = raw_weights("llama_tiny");
    weights.remove("model.layers.1.mlp.up_proj.weight");
    candle_core::safetensors::save(&weights, dir.join("model.safetensors")).unwrap();
    let map = hf::load_safetensors(&dir, DType::F32, &Device::Cpu).unwrap();
    match Llama::load(&config("llama_tiny"), map, DType::F32, &Device::Cpu) {
        Err(ModelError::MissingTensor { file, tensor }) => {
            assert_eq!(file, dir);
            assert_eq!(tensor, "model.layers.1.mlp.up_proj.weight");
        }
        other => panic!("expected MissingTensor, got {:?}", other.map(|_| ())),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shape_mismatch_is_named() {
    let dir = scratch("shape");
    let mut weights = raw_weights("mistral_tiny");
    let name = "model.layers.0.self_attn.k_proj.weight";
    weights.insert(name.into(), Tensor::zeros((32, 64), DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&weights, dir.join("model.safetensors")).unwrap();
    let map = hf::load_safetensors(&dir, DType::F32, &Device::Cpu).unwrap();
    match Llama::load(&config("mistral_tiny"), map, DType::F32, &Device::Cpu) {
        Err(ModelError::ShapeMismatch { tensor, expected, found, .. }) => {
            assert_eq!(tensor, name);
            assert_eq!((expected, found), (vec![16, 64], vec![32, 64]));
        }
        other => panic!("expected ShapeMismatch, got {:?}", other.map(|_| ())),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_or_foreign_safetensors_are_typed_errors() {
    let dir = scratch("trunc");
    let bytes = std::fs::read(fixture("llama_tiny").join("model.safetensors")).unwrap();
    let file = dir.join("model.safetensors");
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    match hf::load_safetensors(&file, DType::F32, &Device::Cpu) {
        Err(ModelError::Safetensors { file: f, .. }) => assert_eq!(f, file),
        other => panic!("expected Safetensors error, got {:?}", other.map(|_| ())),
    }
    let ints = Tensor::new(&[1i64, 2, 3], &Device::Cpu).unwrap();
    candle_core::safetensors::save(&std::collections::HashMap::from([("ids".to_string(), ints)]), &file).unwrap();
    let err = hf::load_safetensors(&file, DType::F32, &Device::Cpu).map(|_| ()).unwrap_err();
    assert!(matches!(err, ModelError::Safetensors { .. }) && err.to_string().contains("ids"), "{err}");
    let empty = scratch("empty");
    assert!(matches!(hf::load_safetensors(&empty, DType::F32, &Device::Cpu), Err(ModelError::Safetensors { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&empty).unwrap();
}

#[test]
fn out_of_vocabulary_token_is_an_error() {
    let model = model("llama_tiny", meft_models::OpPath::Fused);
    let toks = Tensor::new(&[[1u32, 500]], &Device::Cpu).unwrap();
    assert!(matches!(model.forward(&toks, &meft_core::NoAdapters), Err(ModelError::InvalidInput { .. })));
    assert!(matches!(model.score(&[1, 999]), Err(ModelError::InvalidInput { .. })));
}
