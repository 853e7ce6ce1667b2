//! GGUF loader, config and tokenizer on small synthetic files, including every kind of bad input:
//! each must give a typed error naming the file and the field or tensor, never a panic.

mod gguf_writer;

use candle_core::DType;
use gguf_writer::{GgufWriter, Value, temp_dir, tiny_llama};
use meft_models::gguf::GgufFile;
use meft_models::{ModelError, RopeLayout, Tokenizer};
use proptest::prelude::*;

/// Opens `w` written to a fresh file and runs the whole load path (config, tokenizer, weights).
fn check(w: &GgufWriter, test: &str) -> Result<(), ModelError> {
    let dir = temp_dir(test);
    let path = w.write(&dir, "model.gguf");
    let result = load_all(&path);
    std::fs::remove_dir_all(&dir).ok();
    result
}

fn load_all(path: &std::path::Path) -> Result<(), ModelError> {
    let gguf = GgufFile::open(path)?;
    let config = gguf.config()?;
    Tokenizer::from_gguf(&gguf, &config)?;
    gguf.weights(DType::F32)?;
    Ok(())
}

fn check_bytes(bytes: &[u8], test: &str) -> Result<(), ModelError> {
    let dir = temp_dir(test);
    let path = dir.join("model.gguf");
    std::fs::write(&path, bytes).expect("write");
    let result = load_all(&path);
    std::fs::remove_dir_all(&dir).ok();
    result
}

#[test]
fn tiny_model_loads_with_hf_names_and_config() {
    let dir = temp_dir("ok");
    let path = tiny_llama().write(&dir, "tiny.gguf");
    let gguf = GgufFile::open(&path).unwrap();
    let cfg = gguf.config().unwrap();
    assert_eq!((cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim), (8, 2, 1, 4));
    assert_eq!((cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers), (8, 16, 1));
    assert_eq!(cfg.rope_layout, RopeLayout::Interleaved);
    assert!(cfg.tie_word_embeddings);
    assert_eq!((cfg.bos_token_id, cfg.eos_token_id, cfg.add_bos_token), (Some(1), Some(2), false));
    let weights = gguf.weights(DType::F32).unwrap();
    assert!(weights.contains("model.embed_tokens.weight"));
    assert!(weights.contains("model.layers.0.mlp.down_proj.weight"));
    assert!(weights.contains("model.norm.weight"));
    assert_eq!(weights.names().len(), 11);
    let info = gguf.tensor_info("blk.0.ffn_down.weight").unwrap();
    assert_eq!(info.shape(), vec![8, 16]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tokenizer_splits_control_tokens_before_bpe() {
    let dir = temp_dir("tok");
    let path = tiny_llama().write(&dir, "tiny.gguf");
    let gguf = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&gguf, &gguf.config().unwrap()).unwrap();
    assert_eq!(tok.encode("ab<|im_end|>a b").unwrap(), vec![7, 2, 3, 6, 4]);
    assert_eq!(tok.decode(&[1, 7, 6, 5]).unwrap(), "<|im_start|>ab c");
    assert_eq!(tok.special_ids(), vec![0, 1, 2]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn truncated_file_is_a_typed_error() {
    let dir = temp_dir("trunc-full");
    let data_start = GgufFile::open(tiny_llama().write(&dir, "full.gguf")).unwrap().header().data_start;
    std::fs::remove_dir_all(&dir).ok();
    let bytes = tiny_llama().to_bytes();
    for cut in [0, 3, 10, 30, 200, data_start - 40, data_start + 40, bytes.len() - 5] {
        match check_bytes(&bytes[..cut], "trunc") {
            Err(ModelError::Truncated { file, what }) => {
                assert!(file.ends_with("model.gguf"), "{file:?}");
                assert!(!what.is_empty());
            }
            other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
        }
    }
    let last = check_bytes(&bytes[..bytes.len() - 5], "trunc-data").unwrap_err().to_string();
    assert!(last.contains("output_norm.weight") && last.contains("model.gguf"), "{last}");
}

#[test]
fn garbled_header_is_a_typed_error() {
    let mut w = tiny_llama();
    w.magic = *b"GGUX";
    let err = check(&w, "magic").unwrap_err();
    assert!(matches!(err, ModelError::GgufHeader { .. }), "{err:?}");
    assert!(err.to_string().contains("magic"), "{err}");
    let mut w = tiny_llama();
    w.version = 1;
    let err = check(&w, "version").unwrap_err();
    assert!(err.to_string().contains("version 1"), "{err}");
    let mut bytes = tiny_llama().to_bytes();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
    let err = check_bytes(&bytes, "count").unwrap_err();
    assert!(matches!(err, ModelError::GgufHeader { .. }), "{err:?}");
    let mut bytes = tiny_llama().to_bytes();
    bytes[24 + 8 + "general.architecture".len()] = 42; // value type of the first key
    let err = check_bytes(&bytes, "vtype").unwrap_err();
    assert!(err.to_string().contains("general.architecture"), "{err}");
}

#[test]
fn unsupported_tensor_type_names_the_tensor() {
    let mut w = tiny_llama();
    let t = w.tensors.iter_mut().find(|t| t.name == "blk.0.attn_q.weight").unwrap();
    t.ggml_type = 6; // Q5_0
    t.data.truncate(44);
    match check(&w, "qtype") {
        Err(ModelError::UnsupportedTensorType { tensor, kind, .. }) => {
            assert_eq!(tensor, "blk.0.attn_q.weight");
            assert_eq!(kind, "Q5_0 (6)");
        }
        other => panic!("expected UnsupportedTensorType, got {other:?}"),
    }
}

#[test]
fn missing_or_mistyped_metadata_names_the_key() {
    let err = check(&tiny_llama().without("llama.embedding_length"), "missing").unwrap_err();
    match &err {
        ModelError::Metadata { key, problem, .. } => {
            assert_eq!(key, "llama.embedding_length");
            assert_eq!(problem, "missing");
        }
        other => panic!("expected Metadata, got {other:?}"),
    }
    let w = tiny_llama().set("llama.block_count", Value::Str("thirty".into()));
    let err = check(&w, "mistyped").unwrap_err().to_string();
    assert!(err.contains("llama.block_count") && err.contains("string"), "{err}");
    let err = check(&tiny_llama().set("general.architecture", Value::Str("gpt2".into())), "arch").unwrap_err();
    assert!(err.to_string().contains("general.architecture"), "{err}");
}

#[test]
fn tokenizer_vocab_mismatch_is_a_typed_error() {
    let w = tiny_llama().set("llama.vocab_size", Value::U32(6));
    match check(&w, "vocab") {
        Err(ModelError::VocabMismatch { tokenizer, model, file }) => {
            assert_eq!((tokenizer, model), (8, 6));
            assert!(file.ends_with("model.gguf"));
        }
        other => panic!("expected VocabMismatch, got {other:?}"),
    }
    let w = tiny_llama().set("tokenizer.ggml.token_type", Value::I32Array(vec![1, 1]));
    assert!(matches!(check(&w, "types"), Err(ModelError::Tokenizer { .. })));
    let w = tiny_llama().set("tokenizer.ggml.merges", Value::StrArray(vec!["a x".into()]));
    assert!(matches!(check(&w, "merges"), Err(ModelError::Tokenizer { .. })));
}

#[test]
fn bad_alignment_is_a_typed_error() {
    let w = tiny_llama().set("general.alignment", Value::U32(24));
    let err = check(&w, "align").unwrap_err();
    assert!(err.to_string().contains("general.alignment"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Corrupting any byte (or cutting the file anywhere) yields Ok or a typed error, never a panic.
    #[test]
    fn corruption_never_panics(pos in 0usize..1400, byte in any::<u8>(), cut in any::<bool>()) {
        let mut bytes = tiny_llama().to_bytes();
        let pos = pos % bytes.len();
        if cut { bytes.truncate(pos) } else { bytes[pos] = byte }
        let outcome = std::panic::catch_unwind(|| check_bytes(&bytes, "fuzz").map_err(|e| e.to_string()));
        prop_assert!(outcome.is_ok(), "panic at pos {pos}");
    }
}
