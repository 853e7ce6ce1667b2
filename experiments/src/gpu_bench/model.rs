//! The frozen model of a benchmark: a named shape with seeded random weights built on the device,
//! or a real checkpoint.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use meft_models::{Architecture, Llama, ModelConfig, RopeLayout, WeightMap};
use meft_offload::OffloadDevice;

use super::{BenchConfig, HostAdapterSize};
use crate::train::build::{random_weights, tiny_config, weight_specs};

/// The model shapes `bench-gpu` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchShape {
    /// LLaMA-7B: d 4096, 32 layers, FFN 11008, 32 heads, vocabulary 32000 (the paper's model).
    Llama7b,
    /// SmolLM2-135M: d 576, 30 layers, FFN 1536, 9 heads / 3 KV heads, vocabulary 49152.
    Smollm2,
    /// The trainer's `tiny-random` (d 32, 4 layers): a plumbing check in seconds.
    Tiny,
}

/// Per-shape defaults of the arguments left out on the command line.
#[derive(Debug, Clone, Copy)]
pub struct ShapeDefaults {
    /// Device budget in GiB.
    pub budget_gib: f64,
    /// Host adapter size.
    pub host_adapter: HostAdapterSize,
    /// K.
    pub top_k: usize,
    /// P.
    pub top_p: usize,
}

impl BenchShape {
    /// The architecture of the shape.
    pub fn config(self) -> ModelConfig {
        match self {
            Self::Llama7b => llama(4096, 11008, 32, (32, 32), 32000, false),
            Self::Smollm2 => ModelConfig { rope_theta: 100_000.0, ..llama(576, 1536, 30, (9, 3), 49152, true) },
            Self::Tiny => tiny_config(),
        }
    }

    /// The paper's settings for the real shapes (24 GiB, 10 %, K = 64, P = 8); the tiny shape has
    /// a host adapter much larger than its 39 k-parameter model and K = 4, P = 2, so that its
    /// union stays below M and the MEFT/full-offload comparison means something.
    pub fn defaults(self) -> ShapeDefaults {
        match self {
            Self::Llama7b | Self::Smollm2 => ShapeDefaults { budget_gib: 24.0, host_adapter: HostAdapterSize::Fraction(0.1), top_k: 64, top_p: 8 },
            Self::Tiny => ShapeDefaults { budget_gib: 0.05, host_adapter: HostAdapterSize::Neurons(4096), top_k: 4, top_p: 2 },
        }
    }
}

fn llama(d: usize, f: usize, layers: usize, (heads, kv_heads): (usize, usize), vocab: usize, tied: bool) -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: vocab,
        hidden_size: d,
        intermediate_size: f,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim: d / heads,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_layout: RopeLayout::RotateHalf,
        max_position_embeddings: 4096,
        tie_word_embeddings: tied,
        sliding_window: None,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        add_bos_token: false,
    }
}

/// The frozen model on `dev` and a description of where its weights came from.
pub fn load(cfg: &BenchConfig, dev: &OffloadDevice) -> Result<(Llama, String)> {
    if let Some(name) = &cfg.model {
        let source = meft_models::resolve::resolve(name)?;
        let mut bundle = meft_models::resolve::load(&source, cfg.dtype).with_context(|| format!("loading {}", source.path().display()))?;
        let weights = std::mem::replace(&mut bundle.weights, WeightMap::new(Default::default(), source.path()));
        let model = Llama::load(&bundle.config, weights, cfg.dtype, dev.candle())?;
        return Ok((model, format!("checkpoint {}", source.path().display())));
    }
    let c = cfg.shape.config();
    let weights = match dev.candle() {
        Device::Cpu => random_weights(&c, cfg.seed)?,
        device => device_random_weights(&c, cfg.seed, cfg.dtype, device)?,
    };
    let model = Llama::load(&c, weights, cfg.dtype, dev.candle())?;
    Ok((model, format!("random weights (seed {})", cfg.seed)))
}

/// [`weight_specs`] drawn on the device itself by its seeded generator (the CPU generator would
/// spend minutes on 7 B values and copy them all down), each cast to `dtype` as it is drawn so
/// the device never holds the whole model in f32.
fn device_random_weights(c: &ModelConfig, seed: u64, dtype: DType, device: &Device) -> Result<WeightMap> {
    device.set_seed(seed)?;
    let mut tensors = std::collections::HashMap::new();
    for (name, shape, std) in weight_specs(c) {
        let t = match std {
            0.0 => Tensor::ones(shape, DType::F32, device)?,
            s => Tensor::randn(0f32, s, shape, device)?,
        };
        tensors.insert(name, t.to_dtype(dtype)?);
    }
    Ok(WeightMap::new(tensors, "random weights"))
}

/// The shape's sequence limit, checked against `--seq`.
pub fn check_seq(c: &ModelConfig, seq: usize) -> Result<(), super::BenchArgError> {
    if seq > c.max_position_embeddings {
        return Err(super::bad("--seq", format!("is {seq}, above the model's {} positions", c.max_position_embeddings), "shorten the sequence"));
    }
    Ok(())
}
