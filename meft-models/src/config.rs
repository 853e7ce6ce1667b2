//! Model configuration shared by LLaMA and Mistral, read from HF `config.json` or GGUF metadata.

use serde::{Deserialize, Serialize};

/// The architecture family: Mistral is LLaMA plus sliding-window attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// LLaMA (and SmolLM2): full causal attention.
    Llama,
    /// Mistral: causal attention restricted to the last `sliding_window` positions.
    Mistral,
}

/// How the two halves of each rotary pair are laid out in the Q/K projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeLayout {
    /// HF layout: dimension i pairs with i + head_dim/2 (`rotate_half`).
    RotateHalf,
    /// GGUF layout: adjacent dimensions (2i, 2i+1) form a pair.
    Interleaved,
}

/// Hyper-parameters of a LLaMA/Mistral decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Architecture family.
    pub architecture: Architecture,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Hidden size d.
    pub hidden_size: usize,
    /// FFN inner size (SwiGLU).
    pub intermediate_size: usize,
    /// Number of decoder layers L.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Per-head dimension (usually hidden_size / num_attention_heads).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// Layout of rotary pairs in the stored Q/K weights.
    pub rope_layout: RopeLayout,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Output head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Mistral sliding-window size (`None` = full attention).
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence token id, if the model has one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id, if the model has one.
    pub eos_token_id: Option<u32>,
    /// Whether a BOS token is prepended when encoding text (GGUF `tokenizer.ggml.add_bos_token`).
    pub add_bos_token: bool,
}

impl ModelConfig {
    /// The shapes of SmolLM2-135M-Instruct (30 layers, d = 576, FFN 1536, 9/3 heads, vocab 49,152,
    /// tied head, θ = 100000) in the HF rotate-half layout.
    ///
    /// For benches and tests that need the real model's sizes without its weights (timing and memory
    /// do not depend on weight values). Loading the GGUF gives the same numbers from its metadata.
    pub fn smollm2_135m_shapes() -> Self {
        Self {
            architecture: Architecture::Llama,
            vocab_size: 49_152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            rope_layout: RopeLayout::RotateHalf,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            sliding_window: None,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            add_bos_token: false,
        }
    }
}
