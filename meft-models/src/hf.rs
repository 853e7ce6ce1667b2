//! Hugging Face checkpoints: `config.json` into [`ModelConfig`] and (sharded) safetensors into a
//! [`WeightMap`].
//!
//! Safetensors files are memory-mapped; each tensor is converted once to the requested dtype
//! (F32/F16/BF16 on disk, f32 or bf16 in memory) and the mapping is dropped after loading.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype as StDtype, SafeTensors};
use serde_json::Value;

use crate::config::{Architecture, ModelConfig, RopeLayout};
use crate::error::ModelError;
use crate::weights::WeightMap;

/// Reads fields of one JSON object, turning every problem into [`ModelError::ConfigField`].
struct Fields<'a> {
    file: &'a Path,
    obj: &'a serde_json::Map<String, Value>,
}

impl Fields<'_> {
    fn err(&self, field: &str, reason: impl Into<String>) -> ModelError {
        ModelError::ConfigField { file: self.file.to_path_buf(), field: field.to_string(), reason: reason.into() }
    }

    /// The field's value; `None` when absent or `null`.
    fn get(&self, field: &str) -> Option<&Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    fn opt_usize(&self, field: &str) -> Result<Option<usize>, ModelError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| self.err(field, format!("expected a non-negative integer, found {v}"))),
        }
    }

    fn usize(&self, field: &str) -> Result<usize, ModelError> {
        self.opt_usize(field)?.ok_or_else(|| self.err(field, "missing; every LLaMA/Mistral config.json has it"))
    }

    fn opt_f64(&self, field: &str) -> Result<Option<f64>, ModelError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.err(field, format!("expected a number, found {v}"))),
        }
    }

    fn opt_bool(&self, field: &str) -> Result<Option<bool>, ModelError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.err(field, format!("expected true/false, found {v}"))),
        }
    }

    /// A token id given as an integer or as a list of integers (the first one is used).
    fn opt_token(&self, field: &str) -> Result<Option<u32>, ModelError> {
        let v = match self.get(field) {
            None => return Ok(None),
            Some(Value::Array(items)) => match items.first() {
                None => return Ok(None),
                Some(first) => first,
            },
            Some(v) => v,
        };
        v.as_u64().and_then(|n| u32::try_from(n).ok()).map(Some).ok_or_else(|| self.err(field, format!("expected a token id, found {v}")))
    }
}

impl ModelConfig {
    /// Parses an HF `config.json` of a LLaMA or Mistral model.
    ///
    /// Defaults follow transformers: `num_key_value_heads` = heads, `head_dim` = hidden / heads,
    /// `rope_theta` 10000 (top-level or inside `rope_parameters`), no sliding window. HF stores
    /// Q/K in the rotate-half layout.
    pub fn from_hf_json(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let file = path.as_ref();
        let text = std::fs::read_to_string(file).map_err(|source| ModelError::Io { file: file.to_path_buf(), source })?;
        Self::from_hf_json_str(&text, file)
    }

    /// Parses the text of an HF `config.json`; `file` is only used in error messages.
    pub fn from_hf_json_str(text: &str, file: &Path) -> Result<Self, ModelError> {
        let value: Value = serde_json::from_str(text).map_err(|source| ModelError::Json { file: file.to_path_buf(), source })?;
        let obj = value.as_object().ok_or_else(|| ModelError::ConfigField {
            file: file.to_path_buf(),
            field: "(root)".into(),
            reason: "expected a JSON object".into(),
        })?;
        let f = Fields { file, obj };
        let architecture = parse_architecture(&f)?;
        check_supported(&f)?;
        let hidden_size = f.usize("hidden_size")?;
        let num_attention_heads = f.usize("num_attention_heads")?;
        if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 && f.get("head_dim").is_none() {
            return Err(f.err("num_attention_heads", "must be positive and divide hidden_size (or set head_dim)"));
        }
        let num_key_value_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(f.err("num_key_value_heads", "must be positive and divide num_attention_heads"));
        }
        let head_dim = f.opt_usize("head_dim")?.unwrap_or(hidden_size / num_attention_heads);
        if head_dim % 2 != 0 {
            return Err(f.err("head_dim", "must be even for rotary embeddings"));
        }
        let cfg = ModelConfig {
            architecture,
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_hidden_layers: f.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.ok_or_else(|| f.err("rms_norm_eps", "missing"))?,
            rope_theta: rope_theta(&f)?,
            rope_layout: RopeLayout::RotateHalf,
            max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            sliding_window: match architecture {
                Architecture::Mistral => f.opt_usize("sliding_window")?,
                Architecture::Llama => None,
            },
            bos_token_id: f.opt_token("bos_token_id")?,
            eos_token_id: f.opt_token("eos_token_id")?,
            add_bos_token: false,
        };
        Ok(cfg)
    }
}

fn parse_architecture(f: &Fields<'_>) -> Result<Architecture, ModelError> {
    match f.get("model_type").and_then(Value::as_str) {
        Some("llama") => Ok(Architecture::Llama),
        Some("mistral") => Ok(Architecture::Mistral),
        Some(other) => Err(f.err("model_type", format!("`{other}` is not supported; use a llama or mistral checkpoint"))),
        None => Err(f.err("model_type", "missing; expected \"llama\" or \"mistral\"")),
    }
}

/// Rejects options that would change the maths this model implements.
fn check_supported(f: &Fields<'_>) -> Result<(), ModelError> {
    if let Some(act) = f.get("hidden_act").and_then(Value::as_str)
        && act != "silu"
    {
        return Err(f.err("hidden_act", format!("`{act}` is not supported; only silu (SwiGLU)")));
    }
    for field in ["attention_bias", "mlp_bias"] {
        if f.opt_bool(field)? == Some(true) {
            return Err(f.err(field, "biases are not supported; set it to false"));
        }
    }
    if f.get("rope_scaling").is_some() {
        return Err(f.err("rope_scaling", "RoPE scaling is not supported; remove it or set it to null"));
    }
    Ok(())
}

fn rope_theta(f: &Fields<'_>) -> Result<f64, ModelError> {
    if let Some(theta) = f.opt_f64("rope_theta")? {
        return Ok(theta);
    }
    let Some(params) = f.get("rope_parameters") else { return Ok(10_000.0) };
    let obj = params.as_object().ok_or_else(|| f.err("rope_parameters", "expected an object"))?;
    let inner = Fields { file: f.file, obj };
    if let Some(kind) = inner.get("rope_type").and_then(Value::as_str)
        && kind != "default"
    {
        return Err(f.err("rope_parameters.rope_type", format!("`{kind}` is not supported; only default RoPE")));
    }
    Ok(inner.opt_f64("rope_theta")?.unwrap_or(10_000.0))
}

/// The safetensors files of a checkpoint: `path` is a `.safetensors` file, a sharded
/// `model.safetensors.index.json`, or a directory holding one of them.
pub fn safetensors_files(path: &Path) -> Result<Vec<PathBuf>, ModelError> {
    if path.is_dir() {
        let index = path.join("model.safetensors.index.json");
        if index.is_file() {
            return shard_files(&index);
        }
        let single = path.join("model.safetensors");
        if single.is_file() {
            return Ok(vec![single]);
        }
        return Err(ModelError::Safetensors {
            file: path.to_path_buf(),
            reason: "neither model.safetensors nor model.safetensors.index.json is in this directory".into(),
        });
    }
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        return shard_files(path);
    }
    Ok(vec![path.to_path_buf()])
}

/// The distinct shard files listed in the `weight_map` of an index file, in sorted order.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|source| ModelError::Io { file: index.to_path_buf(), source })?;
    let value: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json { file: index.to_path_buf(), source })?;
    let map = value.get("weight_map").and_then(Value::as_object).ok_or_else(|| ModelError::ConfigField {
        file: index.to_path_buf(),
        field: "weight_map".into(),
        reason: "missing or not an object mapping tensor names to shard files".into(),
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shards = BTreeSet::new();
    for (tensor, shard) in map {
        let name = shard.as_str().ok_or_else(|| ModelError::ConfigField {
            file: index.to_path_buf(),
            field: format!("weight_map.{tensor}"),
            reason: "expected a shard file name".into(),
        })?;
        shards.insert(dir.join(name));
    }
    Ok(shards.into_iter().collect())
}

/// Loads every tensor of an HF checkpoint (see [`safetensors_files`]) converted to `dtype`.
///
/// `dtype` must be F32, BF16 or F16; on-disk tensors may be F32, F16 or BF16.
pub fn load_safetensors(path: &Path, dtype: DType, device: &Device) -> Result<WeightMap, ModelError> {
    let mut tensors = HashMap::new();
    for file in safetensors_files(path)? {
        load_file(&file, dtype, device, &mut tensors)?;
    }
    Ok(WeightMap::new(tensors, path))
}

fn load_file(file: &Path, dtype: DType, device: &Device, out: &mut HashMap<String, Tensor>) -> Result<(), ModelError> {
    let handle = std::fs::File::open(file).map_err(|source| ModelError::Io { file: file.to_path_buf(), source })?;
    // SAFETY: the mapping is read-only and dropped before this function returns; every tensor is
    // copied out of it. Concurrent truncation of the file by another process is not guarded against
    // (the same contract as every mmap-based checkpoint loader).
    let mmap = unsafe { memmap2::Mmap::map(&handle) }.map_err(|source| ModelError::Io { file: file.to_path_buf(), source })?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| ModelError::Safetensors {
        file: file.to_path_buf(),
        reason: format!("unreadable safetensors header ({e}); is the file truncated?"),
    })?;
    for (name, view) in st.tensors() {
        let src = match view.dtype() {
            StDtype::F32 => DType::F32,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            other => {
                return Err(ModelError::Safetensors {
                    file: file.to_path_buf(),
                    reason: format!("tensor `{name}` has dtype {other:?}; only F32, F16 and BF16 are supported"),
                });
            }
        };
        let tensor = Tensor::from_raw_buffer(view.data(), src, view.shape(), &Device::Cpu)?.to_dtype(dtype)?.to_device(device)?;
        out.insert(name, tensor);
    }
    Ok(())
}
