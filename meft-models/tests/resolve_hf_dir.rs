//! `--model` resolution and loading of HF directories (config.json + safetensors +
//! tokenizer.json), with the tokenizer/vocabulary check and the `[INST]` template detection.

use std::path::{Path, PathBuf};

use candle_core::DType;
use meft_models::ModelError;
use meft_models::chat::{ChatTemplate, Message};
use meft_models::resolve::{self, ModelSource};

const TOKENIZER_JSON: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
  "post_processor": null,
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
  "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4, "Ġ": 5, "ab": 6, "Ġab": 7},
            "merges": ["a b", "Ġ ab"]}
}"#;

const TOKENIZER_CONFIG: &str = r#"{"chat_template": "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"}"#;

/// A temp HF directory holding the tiny LLaMA fixture plus the tokenizer files above.
fn hf_dir(test: &str, config_edit: impl Fn(&str) -> String) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_tiny");
    let dir = std::env::temp_dir().join(format!("meft-hfdir-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = std::fs::read_to_string(fixture.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), config_edit(&config)).unwrap();
    std::fs::copy(fixture.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("tokenizer.json"), TOKENIZER_JSON).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), TOKENIZER_CONFIG).unwrap();
    dir
}

#[test]
fn hf_directory_loads_with_tokenizer_and_inst_template() {
    let dir = hf_dir("ok", str::to_string);
    let source = resolve::resolve(dir.to_str().unwrap()).unwrap();
    assert_eq!(source, ModelSource::HfDir(dir.clone()));
    let bundle = resolve::load(&source, DType::F32).unwrap();
    assert_eq!(bundle.config.vocab_size, 128);
    assert!(bundle.weights.contains("model.layers.1.mlp.down_proj.weight"));
    let tok = &bundle.tokenizer;
    assert_eq!(tok.encode("ab ab").unwrap(), vec![6, 7], "config has no add_bos: no BOS");
    assert_eq!(tok.encode("</s>ab").unwrap(), vec![2, 6]);
    assert_eq!(tok.decode(&[6, 7]).unwrap(), "ab ab");
    let chat = bundle.chat.expect("[INST] template detected");
    assert_eq!(chat, ChatTemplate::Inst { bos: "<s>".into(), eos: "</s>".into() });
    assert_eq!(chat.render(&[Message::user("ab")]), "<s>[INST] ab [/INST]");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tokenizer_larger_than_model_vocab_is_a_typed_error() {
    let dir = hf_dir("vocab", |c| c.replace("\"vocab_size\": 128", "\"vocab_size\": 5"));
    let err = resolve::load(&ModelSource::HfDir(dir.clone()), DType::F32).unwrap_err();
    match &err {
        ModelError::VocabMismatch { file, tokenizer, model } => {
            assert!(file.ends_with("tokenizer.json"));
            assert_eq!((*tokenizer, *model), (8, 5));
        }
        other => panic!("expected VocabMismatch, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unresolvable_arguments_are_typed_errors() {
    let err = resolve::resolve("surely-not-a-model").unwrap_err().to_string();
    assert!(err.contains("surely-not-a-model") && err.contains("smollm2-135m-instruct"), "{err}");
    let dir = hf_dir("notok", str::to_string);
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = resolve::resolve(dir.to_str().unwrap()).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
    let file = std::env::temp_dir().join(format!("meft-not-gguf-{}.gguf", std::process::id()));
    std::fs::write(&file, b"not a gguf file at all").unwrap();
    let source = resolve::resolve(file.to_str().unwrap()).unwrap();
    let err = resolve::load(&source, DType::F32).unwrap_err();
    assert!(matches!(err, ModelError::GgufHeader { .. }), "{err:?}");
    std::fs::remove_file(&file).ok();
}
