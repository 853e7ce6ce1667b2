//! The device memory plan of a run, computed without running it (`meft plan`).
//!
//! Bytes by category (spec §6): frozen weights, an activation estimate for one micro-batch,
//! adapter parameters and their gradients on the device (dense adapters, MEFT working sets and
//! gates), device optimizer state; plus the largest adapter of the chosen method that fits a
//! budget. Activations are an estimate (stated as such): per layer the attention and FFN
//! intermediates kept for backward, `f32`.

use meft_models::ModelConfig;
use serde::Serialize;

/// What a method puts on the device, per adapted layer, as a function of its size knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeKnob {
    /// MEFT: working-set rows C (the host adapter size M does not use device memory).
    MeftCapacity,
    /// Parallel Adapter neurons.
    PaNeurons,
    /// LoRA rank, over `sites` projections of `fan_in + fan_out` scalars each.
    LoraRank,
    /// AdapterH bottleneck units (`2·r·d + r + d` scalars per layer).
    AdapterHUnits,
    /// Full fine-tuning: `fan_in · fan_out` scalars per projection in `sites` (size ignored).
    FullProjections,
}

/// Device bytes of one run, by category.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryPlan {
    /// Frozen model weights.
    pub frozen_weights: u64,
    /// Activation estimate for one micro-batch (training).
    pub activations_estimate: u64,
    /// Adapter parameters and their gradients on the device (dense adapters; MEFT working sets
    /// with their gradients, and gates).
    pub adapter_working_set: u64,
    /// Device optimizer state (AdamW moments of device parameters).
    pub device_optimizer: u64,
    /// Host bytes of the MEFT adapter (rows, moments, accumulators); 0 for device adapters.
    pub host_adapter: u64,
    /// Trainable parameters.
    pub trainable_params: u64,
    /// Sum of the device categories.
    pub total_device: u64,
}

/// Sizes the plan depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Sequences per micro-batch.
    pub micro: usize,
    /// Tokens per sequence.
    pub max_length: usize,
    /// Adapted layers.
    pub layers: usize,
    /// Bytes per frozen weight.
    pub weight_bytes: u64,
}

/// Frozen parameter count of `c` (tied head counted once).
pub fn frozen_params(c: &ModelConfig) -> u64 {
    let (d, f, v) = (c.hidden_size as u64, c.intermediate_size as u64, c.vocab_size as u64);
    let q = (c.num_attention_heads * c.head_dim) as u64;
    let kv = (c.num_key_value_heads * c.head_dim) as u64;
    let per_layer = d * q * 2 + d * kv * 2 + 3 * d * f + 2 * d;
    let head = if c.tie_word_embeddings { 0 } else { v * d };
    v * d + head + d + c.num_hidden_layers as u64 * per_layer
}

/// Training activation estimate (f32) for one micro-batch through every layer.
pub fn activation_estimate(c: &ModelConfig, s: &Shape) -> u64 {
    let t = (s.micro * s.max_length) as u64;
    let (d, f) = (c.hidden_size as u64, c.intermediate_size as u64);
    let scores = (s.micro * c.num_attention_heads * s.max_length * s.max_length) as u64;
    let per_layer = t * (8 * d + 3 * f) + 2 * scores;
    4 * (c.num_hidden_layers as u64 * per_layer + t * c.vocab_size as u64 * 2)
}

/// Device bytes (params + grads, optimizer moments) and trainable scalars of one size value;
/// `lora_sites` holds the `(fan_in, fan_out)` of the LoRA or fully trained projections.
pub fn adapter_bytes(knob: SizeKnob, size: u64, c: &ModelConfig, layers: u64, lora_sites: &[(usize, usize)], experts: u64) -> (u64, u64, u64) {
    let d = c.hidden_size as u64;
    match knob {
        SizeKnob::MeftCapacity => {
            let rows = 2 * 4 * size * 2 * d * layers;
            let gates = experts * d * layers;
            (rows + 2 * 4 * gates, 2 * 4 * gates, gates)
        }
        SizeKnob::PaNeurons => dense(2 * size * d * layers),
        SizeKnob::LoraRank => {
            let per = lora_sites.iter().map(|&(i, o)| (i + o) as u64).sum::<u64>();
            dense(size * per * layers)
        }
        SizeKnob::AdapterHUnits => dense((2 * size * d + size + d) * layers),
        SizeKnob::FullProjections => dense(lora_sites.iter().map(|&(i, o)| (i * o) as u64).sum::<u64>() * layers),
    }
}

/// A device-resident f32 adapter of `params` scalars: parameters and gradients, AdamW moments.
fn dense(params: u64) -> (u64, u64, u64) {
    (2 * 4 * params, 2 * 4 * params, params)
}

impl MemoryPlan {
    /// The plan for `size` of `knob`; `host_adapter` is the MEFT host bytes (0 otherwise).
    pub fn new(c: &ModelConfig, s: &Shape, knob: Option<(SizeKnob, u64)>, lora_sites: &[(usize, usize)], experts: u64, host_adapter: u64) -> Self {
        let frozen_weights = frozen_params(c) * s.weight_bytes;
        let activations_estimate = activation_estimate(c, s);
        let (adapter_working_set, device_optimizer, trainable) = match knob {
            Some((k, size)) => adapter_bytes(k, size, c, s.layers as u64, lora_sites, experts),
            None => (0, 0, 0),
        };
        let trainable_params = match knob {
            Some((SizeKnob::MeftCapacity, _)) => trainable + host_adapter / 16,
            _ => trainable,
        };
        Self {
            frozen_weights,
            activations_estimate,
            adapter_working_set,
            device_optimizer,
            host_adapter,
            trainable_params,
            total_device: frozen_weights + activations_estimate + adapter_working_set + device_optimizer,
        }
    }
}

/// The largest size of `knob` whose plan fits `budget` (`None` when not even size 1 fits).
pub fn largest_fitting(
    budget: u64,
    fixed: u64,
    knob: SizeKnob,
    c: &ModelConfig,
    layers: u64,
    lora_sites: &[(usize, usize)],
    experts: u64,
) -> Option<u64> {
    let cost = |size: u64| {
        let (a, o, _) = adapter_bytes(knob, size, c, layers, lora_sites, experts);
        fixed + a + o
    };
    if cost(1) > budget {
        return None;
    }
    let (mut lo, mut hi) = (1u64, 2u64);
    while cost(hi) <= budget && hi < 1 << 40 {
        lo = hi;
        hi *= 2;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if cost(mid) <= budget { lo = mid } else { hi = mid }
    }
    Some(lo)
}

/// Parses `2GiB`, `512MiB`, `1.5GB`, `1000` (bytes).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|ch: char| ch.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.trim().parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        _ => return None,
    };
    (n >= 0.0 && n.is_finite()).then_some((n * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse() {
        assert_eq!(parse_bytes("2GiB"), Some(2 << 30));
        assert_eq!(parse_bytes("512 MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("1.5GB"), Some(1_500_000_000));
        assert_eq!(parse_bytes("12"), Some(12));
        assert_eq!(parse_bytes("2 parsecs"), None);
    }
}
