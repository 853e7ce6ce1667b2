//! Full fine-tuning of chosen layers, as an adapter: every projection `W` of an adapted layer
//! gets a trainable full-size update `ΔW` (zero at the start), and the model computes
//! `x·Wᵀ + x·ΔWᵀ = x·(W + ΔW)ᵀ`.
//!
//! The gradient of `ΔW` is exactly the gradient a trainable `W` would get, and AdamW moves `ΔW`
//! exactly as it would move `W` (with weight decay 0, the trainer's default), so training
//! `ΔW` is full fine-tuning of those projections, while the frozen weights keep their fast
//! frozen-product kernels. RMSNorm weights stay frozen (a difference from full fine-tuning,
//! stated wherever this method is reported). `meft-models/tests/model.rs` checks the gradient
//! equivalence against a model whose weight itself is a variable.

use candle_core::{DType, Device, Result, Tensor, Var};

use super::Trainable;
use crate::{AdapterHook, LinearSite};

/// Full-size updates of the projections `sites` of `layers`.
#[derive(Debug)]
pub struct FullDelta {
    /// `(layer, site, ΔW (out×in))`, in layer-major, site order.
    deltas: Vec<(usize, LinearSite, Var)>,
}

impl FullDelta {
    /// Zero updates; `dims(site)` gives the projection's `(in, out)` features.
    pub fn new(layers: &[usize], sites: &[LinearSite], dims: &dyn Fn(LinearSite) -> (usize, usize), dtype: DType, device: &Device) -> Result<Self> {
        if sites.is_empty() {
            candle_core::bail!("full fine-tuning: no projection to train; list at least one site");
        }
        let mut deltas = Vec::new();
        for &layer in layers {
            for &site in sites {
                let (fan_in, fan_out) = dims(site);
                deltas.push((layer, site, Var::zeros((fan_out, fan_in), dtype, device)?));
            }
        }
        Ok(Self { deltas })
    }

    fn delta(&self, layer: usize, site: LinearSite) -> Option<&Var> {
        self.deltas.iter().find(|(l, s, _)| *l == layer && *s == site).map(|(_, _, v)| v)
    }
}

impl AdapterHook for FullDelta {
    fn ffn(&self, _layer: usize, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    fn linear(&self, layer: usize, site: LinearSite, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(dw) = self.delta(layer, site) else { return Ok(None) };
        let fan_in = x.dim(candle_core::D::Minus1)?;
        let mut shape = x.dims().to_vec();
        let y = x.reshape(((), fan_in))?.to_dtype(dw.dtype())?.matmul(&dw.as_tensor().t()?)?;
        if let Some(last) = shape.last_mut() {
            *last = y.dim(1)?;
        }
        Ok(Some(y.to_dtype(x.dtype())?.reshape(shape)?))
    }

    fn adapts_projections(&self, layer: usize) -> bool {
        self.deltas.iter().any(|(l, _, _)| *l == layer)
    }
}

impl Trainable for FullDelta {
    fn vars(&self) -> Vec<(String, Var)> {
        self.deltas.iter().map(|(l, s, v)| (format!("layers.{l}.{}.delta", format!("{s:?}").to_lowercase()), v.clone())).collect()
    }
}
