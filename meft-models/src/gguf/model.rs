//! From a GGUF file to what the model needs: a [`ModelConfig`] from `<arch>.*` metadata and a
//! [`WeightMap`] with HF tensor names.
//!
//! Name mapping (`N` = layer index):
//!
//! | GGUF | HF |
//! | --- | --- |
//! | `token_embd.weight` | `model.embed_tokens.weight` |
//! | `blk.N.attn_norm.weight` | `model.layers.N.input_layernorm.weight` |
//! | `blk.N.attn_q/k/v.weight` | `model.layers.N.self_attn.q_proj/k_proj/v_proj.weight` |
//! | `blk.N.attn_output.weight` | `model.layers.N.self_attn.o_proj.weight` |
//! | `blk.N.ffn_norm.weight` | `model.layers.N.post_attention_layernorm.weight` |
//! | `blk.N.ffn_gate/up/down.weight` | `model.layers.N.mlp.gate_proj/up_proj/down_proj.weight` |
//! | `output_norm.weight` | `model.norm.weight` |
//! | `output.weight` | `lm_head.weight` (absent = tied to the embedding) |
//!
//! Tensors with other names (e.g. `rope_freqs.weight`) are not needed and are skipped.

use std::collections::HashMap;

use candle_core::DType;

use super::GgufFile;
use crate::config::{Architecture, ModelConfig, RopeLayout};
use crate::error::ModelError;
use crate::weights::WeightMap;

/// Architectures whose GGUF metadata and tensors follow the LLaMA layout.
const LLAMA_FAMILY: [&str; 2] = ["llama", "mistral"];

/// HF name of a GGUF tensor, or `None` when the model does not use it.
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, leaf) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf_leaf = match leaf {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_leaf}"))
}

impl GgufFile {
    /// The `general.architecture` string, checked to be a LLaMA-family model.
    pub fn architecture(&self) -> Result<&str, ModelError> {
        let arch = self.get_str("general.architecture")?;
        if LLAMA_FAMILY.contains(&arch) {
            Ok(arch)
        } else {
            Err(ModelError::Metadata {
                file: self.path().to_path_buf(),
                key: "general.architecture".into(),
                problem: format!("is `{arch}`; meft loads only {LLAMA_FAMILY:?}"),
            })
        }
    }

    /// Builds the model configuration from the metadata.
    ///
    /// The vocabulary size is `<arch>.vocab_size` when present, else the rows of `token_embd`.
    /// `add_bos_token` defaults to true only for SentencePiece (`tokenizer.ggml.model = llama`)
    /// vocabularies, as llama.cpp does.
    pub fn config(&self) -> Result<ModelConfig, ModelError> {
        let arch = self.architecture()?;
        let key = |k: &str| format!("{arch}.{k}");
        let heads = self.get_usize(&key("attention.head_count"))?;
        let hidden = self.get_usize(&key("embedding_length"))?;
        let kv_heads = match self.get(&key("attention.head_count_kv")) {
            Some(_) => self.get_usize(&key("attention.head_count_kv"))?,
            None => heads,
        };
        let head_dim = match self.get(&key("attention.key_length")) {
            Some(_) => self.get_usize(&key("attention.key_length"))?,
            None => hidden / heads.max(1),
        };
        let rope_theta = match self.get(&key("rope.freq_base")) {
            Some(_) => self.get_f64(&key("rope.freq_base"))?,
            None => 10_000.0,
        };
        let sliding_window = match self.get(&key("attention.sliding_window")) {
            Some(_) => Some(self.get_usize(&key("attention.sliding_window"))?),
            None => None,
        };
        let default_bos = matches!(self.get_str("tokenizer.ggml.model"), Ok("llama"));
        Ok(ModelConfig {
            architecture: if arch == "mistral" { Architecture::Mistral } else { Architecture::Llama },
            vocab_size: self.vocab_size(arch)?,
            hidden_size: hidden,
            intermediate_size: self.get_usize(&key("feed_forward_length"))?,
            num_hidden_layers: self.get_usize(&key("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: self.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta,
            rope_layout: RopeLayout::Interleaved,
            max_position_embeddings: self.get_usize(&key("context_length"))?,
            tie_word_embeddings: self.tensor_info("output.weight").is_none(),
            sliding_window,
            bos_token_id: self.optional_id("tokenizer.ggml.bos_token_id")?,
            eos_token_id: self.optional_id("tokenizer.ggml.eos_token_id")?,
            add_bos_token: self.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(default_bos),
        })
    }

    fn vocab_size(&self, arch: &str) -> Result<usize, ModelError> {
        let key = format!("{arch}.vocab_size");
        if self.get(&key).is_some() {
            return self.get_usize(&key);
        }
        match self.tensor_info("token_embd.weight") {
            Some(info) => Ok(info.shape()[0]),
            None => Err(ModelError::MissingTensor { file: self.path().to_path_buf(), tensor: "token_embd.weight".into() }),
        }
    }

    fn optional_id(&self, key: &str) -> Result<Option<u32>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => Ok(Some(self.get_usize(key)? as u32)),
        }
    }

    /// Dequantises every tensor the model uses into `dtype` (F32, BF16 or F16), keyed by HF name.
    pub fn weights(&self, dtype: DType) -> Result<WeightMap, ModelError> {
        let mut tensors = HashMap::new();
        for info in &self.header().tensors {
            if let Some(name) = hf_name(&info.name) {
                tensors.insert(name, self.dequantize(info, dtype)?);
            }
        }
        Ok(WeightMap::new(tensors, self.path()))
    }

    /// Parameter count per GGML type name, for `meft info`.
    pub fn parameter_counts(&self) -> Vec<(String, u64)> {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for info in &self.header().tensors {
            let name = super::GgmlType::describe_id(info.ggml_type);
            *counts.entry(name).or_default() += info.n_elements();
        }
        let mut out: Vec<_> = counts.into_iter().collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::hf_name;

    #[test]
    fn names_map_to_hf() {
        assert_eq!(hf_name("blk.12.ffn_down.weight").as_deref(), Some("model.layers.12.mlp.down_proj.weight"));
        assert_eq!(hf_name("blk.0.attn_output.weight").as_deref(), Some("model.layers.0.self_attn.o_proj.weight"));
        assert_eq!(hf_name("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
    }
}
