//! Token sampling (greedy or temperature with a seed) and a streaming generation loop.

use std::ops::ControlFlow;

use candle_core::{DType, Tensor};
use meft_core::AdapterHook;

use crate::error::ModelError;
use crate::kv_cache::KvCache;
use crate::llama::Llama;

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token (ties go to the lowest id).
    Greedy,
    /// A draw from `softmax(logits / temperature)` with a seeded generator.
    Temperature {
        /// Softmax temperature, > 0.
        temperature: f64,
        /// Seed of the generator; the same seed gives the same tokens.
        seed: u64,
    },
}

impl Sampling {
    /// Greedy when `temperature <= 0`, otherwise seeded temperature sampling.
    pub fn from_temperature(temperature: f64, seed: u64) -> Self {
        if temperature > 0.0 { Sampling::Temperature { temperature, seed } } else { Sampling::Greedy }
    }
}

/// SplitMix64: a tiny, fully specified generator, so sampled outputs are stable across versions.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks tokens from logits according to a [`Sampling`] rule.
#[derive(Debug, Clone)]
pub struct Sampler {
    sampling: Sampling,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler; the generator is seeded from the rule (greedy needs none).
    pub fn new(sampling: Sampling) -> Self {
        let seed = match sampling {
            Sampling::Temperature { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Self { sampling, rng: SplitMix64(seed) }
    }

    /// The next token from a vector of logits.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, ModelError> {
        if logits.is_empty() || logits.iter().any(|v| v.is_nan()) {
            return Err(ModelError::InvalidInput { op: "sample", reason: "logits are empty or contain NaN".into() });
        }
        match self.sampling {
            Sampling::Greedy => Ok(argmax(logits)),
            Sampling::Temperature { temperature, .. } => Ok(self.draw(logits, temperature)),
        }
    }

    fn draw(&mut self, logits: &[f32], temperature: f64) -> u32 {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let weights: Vec<f64> = logits.iter().map(|&z| ((z as f64 - max) / temperature).exp()).collect();
        let mut target = self.rng.next_f64() * weights.iter().sum::<f64>();
        for (i, w) in weights.iter().enumerate() {
            if target < *w {
                return i as u32;
            }
            target -= w;
        }
        // Rounding left a sliver: the last token with non-zero weight.
        weights.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
    }
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Settings of one generation call.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateConfig {
    /// Upper bound on generated tokens.
    pub max_new_tokens: usize,
    /// How tokens are picked.
    pub sampling: Sampling,
    /// Tokens that end generation (emitted to the callback, then generation stops).
    pub stop_tokens: Vec<u32>,
}

/// Generates after `prompt`, calling `on_token` with each new token as soon as it is chosen;
/// the callback may stop generation early with `ControlFlow::Break`. Returns the new tokens.
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    config: &GenerateConfig,
    hook: &dyn AdapterHook,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Vec<u32>, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::InvalidInput { op: "generate", reason: "the prompt has no tokens".into() });
    }
    let device = model.embed_tokens.device().clone();
    let mut cache = KvCache::new(model.layers.len());
    let mut sampler = Sampler::new(config.sampling);
    let mut input = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < config.max_new_tokens {
        let ids = Tensor::from_slice(&input, (1, input.len()), &device)?;
        let logits = model.forward_cached_last(&ids, &mut cache, hook)?;
        let last = logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let token = sampler.sample(&last)?;
        out.push(token);
        let flow = on_token(token);
        if flow.is_break() || config.stop_tokens.contains(&token) {
            break;
        }
        input = vec![token];
    }
    Ok(out)
}
