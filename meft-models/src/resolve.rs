//! `--model` resolution and loading: a known model name, a `.gguf` file or an HF directory
//! becomes a [`ModelBundle`] (config, frozen weights, tokenizer, chat template).
//!
//! Resolution order for an argument `M`:
//! 1. `M` is an existing file → GGUF (checked by its magic when the file is parsed).
//! 2. `M` is an existing directory → HF checkpoint: `config.json`, `tokenizer.json` and
//!    `model.safetensors` or sharded `*.safetensors` (with `model.safetensors.index.json`).
//! 3. `M` is a pinned model name (`smollm2-135m-instruct`) → the cached GGUF, fetched through
//!    `meft-assets` when missing (cache at `$MEFT_HOME`, default `~/.cache/meft`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::chat::ChatTemplate;
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::hf;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightMap;

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A single GGUF file (weights, config and tokenizer in one).
    Gguf(PathBuf),
    /// An HF directory (`config.json`, `*.safetensors`, `tokenizer.json`).
    HfDir(PathBuf),
}

impl ModelSource {
    /// The file or directory.
    pub fn path(&self) -> &Path {
        match self {
            Self::Gguf(p) | Self::HfDir(p) => p,
        }
    }
}

/// Resolves a `--model` argument (see the module doc for the order).
pub fn resolve(arg: &str) -> Result<ModelSource, ModelError> {
    let path = Path::new(arg);
    let fail = |reason: String| ModelError::Resolve { name: arg.to_string(), reason };
    if path.is_file() {
        return Ok(ModelSource::Gguf(path.to_path_buf()));
    }
    if path.is_dir() {
        for needed in ["config.json", "tokenizer.json"] {
            if !path.join(needed).is_file() {
                return Err(fail(format!("directory has no `{needed}`; an HF checkpoint needs config.json, tokenizer.json and *.safetensors")));
            }
        }
        return Ok(ModelSource::HfDir(path.to_path_buf()));
    }
    if meft_assets::is_known_model(arg) {
        let cache = meft_assets::Cache::from_env();
        return cache
            .model_path(arg)
            .map(ModelSource::Gguf)
            .map_err(|e| fail(format!("{e}; fetch the pinned assets with `cargo xtask assets` (cache: {})", cache.root().display())));
    }
    let known: Vec<&str> = meft_assets::MODELS.iter().map(|m| m.name).collect();
    Err(fail(format!("no such file or directory, and not a known model name (known: {})", known.join(", "))))
}

/// How the weights were stored on disk, for `meft info`.
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    /// GGUF: version and parameter count per GGML type.
    Gguf {
        /// GGUF format version.
        version: u32,
        /// `(type name, parameters)`, sorted by name.
        parameters_by_type: Vec<(String, u64)>,
    },
    /// HF safetensors.
    Safetensors,
}

/// Everything needed to run a model.
#[derive(Debug)]
pub struct ModelBundle {
    /// Where it came from.
    pub source: ModelSource,
    /// Architecture hyper-parameters.
    pub config: ModelConfig,
    /// Frozen weights with HF names (dequantised for GGUF).
    pub weights: WeightMap,
    /// The tokenizer, checked against `config.vocab_size`.
    pub tokenizer: Tokenizer,
    /// The chat format, when the model declares one.
    pub chat: Option<ChatTemplate>,
    /// On-disk storage facts.
    pub storage: Storage,
}

/// The model's configuration alone (GGUF metadata or `config.json`; no weights are read).
pub fn config(source: &ModelSource) -> Result<ModelConfig, ModelError> {
    match source {
        ModelSource::Gguf(path) => GgufFile::open(path)?.config(),
        ModelSource::HfDir(dir) => ModelConfig::from_hf_json(dir.join("config.json")),
    }
}

/// Loads config, weights (as `dtype` on the CPU), tokenizer and chat template.
pub fn load(source: &ModelSource, dtype: DType) -> Result<ModelBundle, ModelError> {
    match source {
        ModelSource::Gguf(path) => load_gguf(path, dtype),
        ModelSource::HfDir(dir) => load_hf(dir, dtype),
    }
}

fn load_gguf(path: &Path, dtype: DType) -> Result<ModelBundle, ModelError> {
    let gguf = GgufFile::open(path)?;
    let config = gguf.config()?;
    let tokenizer = Tokenizer::from_gguf(&gguf, &config)?;
    let template = gguf.get_str("tokenizer.chat_template").ok();
    let chat = detect_chat(template, &tokenizer);
    let weights = gguf.weights(dtype)?;
    let storage = Storage::Gguf { version: gguf.header().version, parameters_by_type: gguf.parameter_counts() };
    Ok(ModelBundle { source: ModelSource::Gguf(path.to_path_buf()), config, weights, tokenizer, chat, storage })
}

fn load_hf(dir: &Path, dtype: DType) -> Result<ModelBundle, ModelError> {
    let config = ModelConfig::from_hf_json(dir.join("config.json"))?;
    let tokenizer = Tokenizer::from_json_file(dir.join("tokenizer.json"), &config)?;
    let template = read_hf_chat_template(&dir.join("tokenizer_config.json"))?;
    let chat = detect_chat(template.as_deref(), &tokenizer);
    let weights = hf::load_safetensors(dir, dtype, &Device::Cpu)?;
    Ok(ModelBundle { source: ModelSource::HfDir(dir.to_path_buf()), config, weights, tokenizer, chat, storage: Storage::Safetensors })
}

fn detect_chat(template: Option<&str>, tokenizer: &Tokenizer) -> Option<ChatTemplate> {
    let text = |id: Option<u32>| id.and_then(|i| tokenizer.token(i)).unwrap_or_default();
    ChatTemplate::detect(template, &text(tokenizer.bos()), &text(tokenizer.eos()))
}

/// The `chat_template` string of an HF `tokenizer_config.json` (absent file or field = `None`).
fn read_hf_chat_template(path: &Path) -> Result<Option<String>, ModelError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ModelError::Io { file: path.to_path_buf(), source });
        }
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Metadata {
        file: path.to_path_buf(),
        key: "(whole file)".into(),
        problem: format!("not valid JSON: {e}"),
    })?;
    Ok(json.get("chat_template").and_then(|v| v.as_str()).map(str::to_string))
}
