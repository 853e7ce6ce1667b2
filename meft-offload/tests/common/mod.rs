//! Shared pieces of the offload tests: a deterministic RNG, a toy residual model that calls the
//! adapter hook, and constructors for adapters with known parameters.
#![allow(dead_code)]

use std::sync::Arc;

use candle_core::{Device, Tensor};
use meft_core::AdapterHook;
use meft_core::optim::AdamWConfig;
use meft_core::sparse::Evaluation;
use meft_offload::{DeviceKind, HostOptimizer, LayerArena, MeftAdapter, MeftConfig, OffloadDevice, OffloadPlan, PrefetchMode};
use meft_router::Scoring;

/// xorshift64: deterministic data without an RNG crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of three uniforms), mean 0, scale `s`.
    pub fn vec(&mut self, n: usize, s: f32) -> Vec<f32> {
        (0..n).map(|_| (self.uniform() + self.uniform() + self.uniform() - 1.5) * 2.0 * s).collect()
    }
}

/// A toy residual network: `h ← h + tanh(h·W_ℓ) + hook.ffn(ℓ, h)` for each layer.
pub struct Toy {
    pub weights: Vec<Tensor>,
    pub d: usize,
}

impl Toy {
    pub fn new(layers: usize, d: usize, scale: f32, rng: &mut Rng) -> Self {
        let weights = (0..layers).map(|_| Tensor::from_vec(rng.vec(d * d, scale), (d, d), &Device::Cpu).unwrap()).collect();
        Self { weights, d }
    }

    pub fn forward(&self, x: &Tensor, hook: &dyn AdapterHook) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (l, w) in self.weights.iter().enumerate() {
            let mut f = h.broadcast_matmul(w)?.tanh()?;
            if let Some(a) = hook.ffn(l, &h)? {
                f = (f + a)?;
            }
            h = (h + f)?;
        }
        Ok(h)
    }

    /// Sum of squared errors against `target`.
    pub fn loss(&self, x: &Tensor, target: &Tensor, hook: &dyn AdapterHook) -> candle_core::Result<Tensor> {
        (self.forward(x, hook)? - target)?.sqr()?.sum_all()
    }

    pub fn weight_bytes(&self) -> u64 {
        (self.weights.len() * self.d * self.d * 4) as u64
    }
}

pub fn tensor(rng: &mut Rng, shape: (usize, usize, usize), s: f32) -> Tensor {
    Tensor::from_vec(rng.vec(shape.0 * shape.1 * shape.2, s), shape, &Device::Cpu).unwrap()
}

pub fn config(d: usize, m: usize, n: usize, k: usize, p: usize) -> MeftConfig {
    MeftConfig {
        hidden: d,
        neurons: m,
        experts: n,
        top_k: k,
        top_p: p,
        scoring: Scoring::Gated,
        evaluation: Evaluation::PerToken,
        host_optimizer: HostOptimizer::Dense,
        adamw: AdamWConfig { lr: 1e-2, weight_decay: 0.01, ..AdamWConfig::default() },
    }
}

/// Keys and values (`M×d` each) per layer.
pub type Params = Vec<(usize, Vec<f32>, Vec<f32>)>;

pub fn random_params(layers: &[usize], m: usize, d: usize, rng: &mut Rng) -> Params {
    layers.iter().map(|&l| (l, rng.vec(m * d, 0.5), rng.vec(m * d, 0.3))).collect()
}

pub fn adapter(cfg: MeftConfig, plan: OffloadPlan, params: &Params, device: Arc<OffloadDevice>) -> MeftAdapter {
    let arenas = params.iter().map(|(l, k, v)| (*l, LayerArena::new(cfg.hidden, k, v).unwrap())).collect();
    MeftAdapter::from_arenas(cfg, plan, device, arenas).unwrap()
}

pub fn cpu() -> Arc<OffloadDevice> {
    Arc::new(OffloadDevice::new(DeviceKind::Cpu).unwrap())
}

pub fn plan(layers: &[usize], capacity: usize, pre_look: usize, prefetch: PrefetchMode) -> OffloadPlan {
    OffloadPlan { prefetch, ..OffloadPlan::uniform(layers, capacity, pre_look) }
}

/// Keys (`M×d`) and values of `layer` as stored on the host.
pub fn host_params(a: &MeftAdapter, layer: usize) -> (Vec<f32>, Vec<f32>) {
    let arena = a.store().layer(layer).unwrap().read().unwrap();
    let two_d = arena.row_len();
    let d = two_d / 2;
    let (mut k, mut v) = (Vec::new(), Vec::new());
    for row in arena.params().chunks_exact(two_d) {
        k.extend_from_slice(&row[..d]);
        v.extend_from_slice(&row[d..]);
    }
    (k, v)
}

/// One micro-batch: forward, backward, finish_backward; returns the loss.
pub fn micro_batch(toy: &Toy, a: &MeftAdapter, x: &Tensor, target: &Tensor) -> f32 {
    let loss = toy.loss(x, target, a).unwrap();
    a.finish_backward(&loss.backward().unwrap()).unwrap();
    loss.to_scalar::<f32>().unwrap()
}

pub fn assert_close(a: &[f32], b: &[f32], rel: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= rel * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
    }
}

/// `|a − b| ≤ rel · max(1, max|b|)` elementwise: for gradients, which sum many terms of mixed
/// sign, so that summation order moves small entries by a fraction of the largest one.
pub fn assert_scaled_close(a: &[f32], b: &[f32], rel: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1f32, |m, y| m.max(y.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= rel * scale, "{what}[{i}]: {x} vs {y} (scale {scale})");
    }
}
