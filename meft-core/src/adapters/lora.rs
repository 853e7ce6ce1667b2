//! LoRA: a low-rank update `scale·B·A·dropout(x)` added to chosen projections (spec §7).
//!
//! Defaults follow the paper's baseline: query and value projections, alpha 16, dropout 0.05.
//! `A` is initialised N(0, 1/in) and `B` = 0, so the adapted model starts equal to the base model.

use std::sync::{Mutex, RwLock};

use candle_core::{DType, Device, Result, Tensor, Var};

use super::{Phase, Trainable};
use crate::{AdapterHook, LinearSite};

/// LoRA hyper-parameters.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    /// Rank `r` of the update.
    pub rank: usize,
    /// Scaling numerator: the update is multiplied by `alpha / rank`.
    pub alpha: f64,
    /// Dropout probability on the LoRA input during training.
    pub dropout: f64,
    /// Projections to adapt.
    pub sites: Vec<LinearSite>,
    /// Layers to adapt.
    pub layers: Vec<usize>,
}

impl LoraConfig {
    /// The paper's baseline (q and v, alpha 16, dropout 0.05) at rank `rank` on `layers`.
    pub fn paper(rank: usize, layers: Vec<usize>) -> Self {
        Self { rank, alpha: 16.0, dropout: 0.05, sites: vec![LinearSite::Query, LinearSite::Value], layers }
    }
}

/// The two factors of one adapted projection: `A` (`r×in`) and `B` (`out×r`).
#[derive(Debug, Clone)]
struct LoraPair {
    a: Var,
    b: Var,
}

/// LoRA adapters on a set of `(layer, projection)` sites.
#[derive(Debug)]
pub struct LoraAdapter {
    cfg: LoraConfig,
    /// `(layer, site, factors)`, in config order.
    pairs: Vec<(usize, LinearSite, LoraPair)>,
    phase: RwLock<Phase>,
    stream: Mutex<DropoutStream>,
}

/// Where the dropout masks come from: mask `call` after a reseed is drawn from `(seed, call)`.
#[derive(Debug, Clone, Copy, Default)]
struct DropoutStream {
    seed: u64,
    calls: u64,
}

/// SplitMix64: a full-period mixing of a 64-bit counter (Steele, Lea, Flood, OOPSLA 2014).
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` inverted-dropout multipliers (0 or 1/keep) drawn from `(seed, call)`.
fn dropout_mask(seed: u64, call: u64, n: usize, keep: f64) -> Vec<f32> {
    let base = splitmix64(seed ^ splitmix64(call));
    let scale = (1.0 / keep) as f32;
    (0..n as u64)
        .map(|i| {
            let unit = (splitmix64(base.wrapping_add(i)) >> 11) as f64 / (1u64 << 53) as f64;
            if unit < keep { scale } else { 0.0 }
        })
        .collect()
}

impl LoraAdapter {
    /// Fresh adapters; `dims(site)` gives the projection's `(in, out)` features.
    pub fn new(cfg: LoraConfig, dims: &dyn Fn(LinearSite) -> (usize, usize), dtype: DType, device: &Device) -> Result<Self> {
        if cfg.rank == 0 || !(0.0..1.0).contains(&cfg.dropout) {
            candle_core::bail!("LoRA config: rank must be ≥ 1 (got {}) and dropout in [0, 1) (got {})", cfg.rank, cfg.dropout);
        }
        let mut pairs = Vec::new();
        for &layer in &cfg.layers {
            for &site in &cfg.sites {
                let (fan_in, fan_out) = dims(site);
                let std = (1.0 / fan_in as f64).sqrt() as f32;
                let a = Tensor::randn(0f32, std, (cfg.rank, fan_in), device)?.to_dtype(dtype)?;
                let pair = LoraPair { a: Var::from_tensor(&a)?, b: Var::zeros((fan_out, cfg.rank), dtype, device)? };
                pairs.push((layer, site, pair));
            }
        }
        Ok(Self { cfg, pairs, phase: RwLock::new(Phase::Train), stream: Mutex::new(DropoutStream::default()) })
    }

    /// Switches dropout on ([`Phase::Train`]) or off ([`Phase::Eval`]).
    pub fn set_phase(&self, phase: Phase) {
        *self.phase.write().unwrap_or_else(|e| e.into_inner()) = phase;
    }

    fn dropout(&self, x: &Tensor) -> Result<Tensor> {
        let phase = *self.phase.read().unwrap_or_else(|e| e.into_inner());
        match phase {
            Phase::Eval => Ok(x.clone()),
            Phase::Train if self.cfg.dropout == 0.0 => Ok(x.clone()),
            Phase::Train => {
                let (seed, call) = {
                    let mut s = self.stream.lock().unwrap_or_else(|e| e.into_inner());
                    s.calls += 1;
                    (s.seed, s.calls - 1)
                };
                let mask = dropout_mask(seed, call, x.elem_count(), 1.0 - self.cfg.dropout);
                x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?
            }
        }
    }
}

impl AdapterHook for LoraAdapter {
    fn ffn(&self, _layer: usize, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    fn linear(&self, layer: usize, site: LinearSite, x: &Tensor) -> Result<Option<Tensor>> {
        let Some((_, _, p)) = self.pairs.iter().find(|(l, s, _)| *l == layer && *s == site) else { return Ok(None) };
        let fan_in = x.dim(candle_core::D::Minus1)?;
        let mut out_shape = x.dims().to_vec();
        let flat = self.dropout(&x.reshape(((), fan_in))?)?;
        let h = flat.matmul(&p.a.as_tensor().t()?)?.matmul(&p.b.as_tensor().t()?)?;
        *out_shape.last_mut().unwrap_or(&mut 0) = h.dim(1)?;
        let scale = self.cfg.alpha / self.cfg.rank as f64;
        Ok(Some(h.affine(scale, 0.0)?.reshape(out_shape)?))
    }

    fn adapts_projections(&self, layer: usize) -> bool {
        self.pairs.iter().any(|(l, _, _)| *l == layer)
    }
}

impl Trainable for LoraAdapter {
    fn vars(&self) -> Vec<(String, Var)> {
        self.pairs
            .iter()
            .flat_map(|(l, s, p)| {
                let site = format!("{s:?}").to_lowercase();
                [(format!("layers.{l}.{site}.lora_a"), p.a.clone()), (format!("layers.{l}.{site}.lora_b"), p.b.clone())]
            })
            .collect()
    }

    fn reseed_dropout(&self, seed: u64) {
        *self.stream.lock().unwrap_or_else(|e| e.into_inner()) = DropoutStream { seed, calls: 0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_masks_keep_the_right_fraction_and_scale() {
        let keep = 0.95;
        let m = dropout_mask(7, 3, 200_000, keep);
        let kept = m.iter().filter(|&&v| v > 0.0).count() as f64 / m.len() as f64;
        assert!((kept - keep).abs() < 0.005, "kept {kept}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - (1.0 / keep) as f32).abs() < 1e-6));
    }

    #[test]
    fn reseeding_replays_the_same_masks() {
        let cfg = LoraConfig { dropout: 0.5, ..LoraConfig::paper(2, vec![0]) };
        let a = LoraAdapter::new(cfg, &|_| (8, 8), DType::F32, &Device::Cpu).expect("lora");
        let x = Tensor::ones((4, 8), DType::F32, &Device::Cpu).expect("x");
        let draw = || a.dropout(&x).and_then(|t| t.to_vec2::<f32>()).expect("dropout");
        a.reseed_dropout(11);
        let (first, second) = (draw(), draw());
        assert_ne!(first, second, "consecutive calls draw fresh masks");
        a.reseed_dropout(11);
        assert_eq!((draw(), draw()), (first.clone(), second), "a reseed replays the stream");
        a.reseed_dropout(12);
        assert_ne!(draw(), first);
        a.set_phase(Phase::Eval);
        assert_eq!(draw(), vec![vec![1.0; 8]; 4]);
    }
}
