//! Construction: the frozen model (a pinned/GGUF/HF model, or `tiny-random`), the simulated
//! device, and the adapter of a [`TrainPlan`] as a `Box<dyn TrainableAdapter>` — the only place
//! that branches on the method.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use meft_core::adapters::{FullDelta, HoulsbyAdapter, LoraAdapter, ParallelAdapter, Phase, Trainable};
use meft_models::chat::ChatTemplate;
use meft_models::{Architecture, Llama, ModelConfig, RopeLayout, Tokenizer, WeightMap};
use meft_offload::{Category, DeviceKind, MeftAdapter, OffloadDevice};
use rand::SeedableRng;
use rand_distr::Distribution;

use super::adapter::{DeviceTrainable, MeftTrainable, TrainableAdapter};
use super::memory::frozen_params;
use super::plan::{MethodPlan, TrainPlan, site_dims};

/// The name of the built-in small random LLaMA.
pub const TINY_RANDOM: &str = "tiny-random";

/// A frozen model with what is needed to tokenise real data.
pub struct Frozen {
    /// The network.
    pub model: Llama,
    /// Tokenizer and chat template (absent for `tiny-random`).
    pub text: Option<(Tokenizer, ChatTemplate)>,
}

/// The configuration of `tiny-random`: 4 layers, d = 32, vocabulary 64.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_layout: RopeLayout::RotateHalf,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        sliding_window: None,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        add_bos_token: false,
    }
}

/// Name, shape and standard deviation of every weight of `c` (std 0: a norm, all ones): N(0, 0.2)
/// matrices and an N(0, 1) embedding, so the tiny model has a usable signal.
pub fn weight_specs(c: &ModelConfig) -> Vec<(String, Vec<usize>, f32)> {
    let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
    let mut specs = vec![("model.embed_tokens.weight".to_string(), vec![v, d], 1.0), ("model.norm.weight".to_string(), vec![d], 0.0)];
    if !c.tie_word_embeddings {
        specs.push(("lm_head.weight".to_string(), vec![v, d], 0.2));
    }
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (n, shape) in [("q_proj", [q, d]), ("k_proj", [kv, d]), ("v_proj", [kv, d]), ("o_proj", [d, q])] {
            specs.push((format!("{p}.self_attn.{n}.weight"), shape.to_vec(), 0.2));
        }
        for (n, shape) in [("gate_proj", [f, d]), ("up_proj", [f, d]), ("down_proj", [d, f])] {
            specs.push((format!("{p}.mlp.{n}.weight"), shape.to_vec(), 0.2));
        }
        specs.push((format!("{p}.input_layernorm.weight"), vec![d], 0.0));
        specs.push((format!("{p}.post_attention_layernorm.weight"), vec![d], 0.0));
    }
    specs
}

/// Random weights for `c` from `seed` ([`weight_specs`]), as f32 CPU tensors.
pub fn random_weights(c: &ModelConfig, seed: u64) -> Result<WeightMap> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut t = HashMap::new();
    for (name, shape, std) in weight_specs(c) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match std {
            0.0 => vec![1.0; n],
            s => {
                let normal = rand_distr::Normal::new(0f32, s)?;
                (0..n).map(|_| normal.sample(&mut rng)).collect()
            }
        };
        t.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
    }
    Ok(WeightMap::new(t, TINY_RANDOM))
}

/// Loads the frozen model named `name` (f32, CPU).
pub fn model(name: &str, seed: u64) -> Result<Frozen> {
    if name == TINY_RANDOM {
        let cfg = tiny_config();
        let model = Llama::load(&cfg, random_weights(&cfg, seed)?, DType::F32, &Device::Cpu)?;
        return Ok(Frozen { model, text: None });
    }
    let source = meft_models::resolve::resolve(name)?;
    let mut bundle = meft_models::resolve::load(&source, DType::F32).with_context(|| format!("loading {}", source.path().display()))?;
    let weights = std::mem::replace(&mut bundle.weights, WeightMap::new(Default::default(), source.path()));
    let model = Llama::load(&bundle.config, weights, DType::F32, &Device::Cpu)?;
    let chat = bundle.chat.context("the model declares no chat template; meft trains on chat-formatted data")?;
    Ok(Frozen { model, text: Some((bundle.tokenizer, chat)) })
}

/// The configuration of the model named `name` (`tiny-random`, a pinned name, a file or a
/// directory), without loading its weights.
pub fn model_config(name: &str) -> Result<ModelConfig> {
    if name == TINY_RANDOM {
        return Ok(tiny_config());
    }
    let source = meft_models::resolve::resolve(name)?;
    meft_models::resolve::config(&source).with_context(|| format!("reading the configuration of {}", source.path().display()))
}

/// The simulated device with the frozen weights accounted.
pub fn device(plan: &TrainPlan, cfg: &ModelConfig) -> Result<Arc<OffloadDevice>> {
    let kind = match plan.budget {
        Some(budget_bytes) => DeviceKind::Simulated { budget_bytes },
        None => DeviceKind::Simulated { budget_bytes: u64::MAX },
    };
    let dev = Arc::new(OffloadDevice::new(kind)?);
    dev.set_usage("frozen_weights", Category::FrozenWeights, 4 * frozen_params(cfg))?;
    Ok(dev)
}

/// Draws the initial values of device adapter variables from `seed` (candle's CPU RNG cannot be
/// seeded): PA keys N(0, 0.02), LoRA A and AdapterH's down projection N(0, 1/√fan_in); values,
/// LoRA B, AdapterH's up projection and biases, and full fine-tuning's updates stay zero.
fn reseed(vars: &[(String, candle_core::Var)], seed: u64) -> Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (name, var) in vars {
        let std = if name.ends_with(".keys") {
            0.02
        } else if name.ends_with(".lora_a") || name.ends_with(".adapter_h.down") {
            (1.0 / var.dims()[1] as f64).sqrt() as f32
        } else {
            continue;
        };
        let normal = rand_distr::Normal::new(0f32, std)?;
        let data: Vec<f32> = (0..var.elem_count()).map(|_| normal.sample(&mut rng)).collect();
        var.set(&Tensor::from_vec(data, var.dims(), &Device::Cpu)?)?;
    }
    Ok(())
}

/// The adapter of `plan` for `cfg`, initialised from the plan's seed.
pub fn adapter(plan: &TrainPlan, cfg: &ModelConfig, dev: &Arc<OffloadDevice>) -> Result<Box<dyn TrainableAdapter>> {
    let seed = plan.raw.seed;
    let d = cfg.hidden_size;
    Ok(match &plan.method {
        MethodPlan::Meft { config, offload } => {
            let a = MeftAdapter::init(config.clone(), offload.clone(), dev.clone(), seed)?;
            Box::new(MeftTrainable::new(a, dev.clone()))
        }
        MethodPlan::Pa { size, activation } => {
            let a = ParallelAdapter::new(&plan.layers, *size, d, *activation, DType::F32, &Device::Cpu)?;
            reseed(&a.vars(), seed)?;
            account(dev, &a)?;
            Box::new(DeviceTrainable::new(a, plan.adamw, |_, _| {})?)
        }
        MethodPlan::Lora(lc) => {
            let a = LoraAdapter::new(lc.clone(), &|site| site_dims(cfg, site), DType::F32, &Device::Cpu)?;
            reseed(&a.vars(), seed)?;
            account(dev, &a)?;
            Box::new(DeviceTrainable::new(a, plan.adamw, |a: &LoraAdapter, p: Phase| a.set_phase(p))?)
        }
        MethodPlan::AdapterH { size } => {
            let a = HoulsbyAdapter::new(&plan.layers, *size, d, DType::F32, &Device::Cpu)?;
            reseed(&a.vars(), seed)?;
            account(dev, &a)?;
            Box::new(DeviceTrainable::new(a, plan.adamw, |_, _| {})?)
        }
        MethodPlan::FullFt { sites } => {
            let a =
                FullDelta::new(&plan.layers, sites, &|site| site_dims(cfg, site), DType::F32, &Device::Cpu)?.with_precision(plan.raw.model.precision);
            account(dev, &a)?;
            Box::new(DeviceTrainable::new(a, plan.adamw, |a: &FullDelta, p: Phase| a.set_phase(p))?)
        }
        MethodPlan::None => bail!("method = none has nothing to train; use `meft eval` for the base model"),
    })
}

/// Charges a device adapter's parameters + gradients and AdamW moments (f32) to `dev`.
pub(crate) fn account(dev: &OffloadDevice, a: &dyn Trainable) -> Result<()> {
    let bytes = 4 * a.param_count() as u64;
    dev.set_usage("adapter.params_and_grads", Category::WorkingSets, 2 * bytes)?;
    dev.set_usage("adapter.optimizer", Category::DeviceOptimizer, 2 * bytes)?;
    Ok(())
}
