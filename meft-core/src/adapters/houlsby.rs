//! AdapterH: the serial bottleneck adapter of Houlsby et al. ("Parameter-Efficient Transfer
//! Learning for NLP", ICML 2019) after the FFN, the paper's AdapterH baseline (spec §7):
//! `y ← y + tanh(y·Dᵀ + b_D)·Uᵀ + b_U` on the FFN output `y`, with a bottleneck of `r` units.
//!
//! `D` (`r×d`) is drawn N(0, 1/d) by the caller's seeding (the trainer re-seeds it), `U`
//! (`d×r`) and both biases start at zero, so the adapted model starts equal to the base model.
//! [`houlsby_forward_slow`] is the loop reference the tests compare with.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Result, Tensor, Var};

use super::Trainable;
use crate::{AdapterHook, LinearSite};

/// The parameters of one adapted layer.
#[derive(Debug, Clone)]
pub struct HoulsbyLayer {
    /// Down projection `D`, `r×d`.
    pub down: Var,
    /// Its bias, `r`.
    pub down_bias: Var,
    /// Up projection `U`, `d×r`.
    pub up: Var,
    /// Its bias, `d`.
    pub up_bias: Var,
}

impl HoulsbyLayer {
    /// A bottleneck of `r` units on width `d`: `D` ~ N(0, 1/d), the rest zero.
    pub fn init(r: usize, d: usize, dtype: DType, device: &Device) -> Result<Self> {
        let std = (1.0 / d as f64).sqrt() as f32;
        Ok(Self {
            down: Var::from_tensor(&Tensor::randn(0f32, std, (r, d), device)?.to_dtype(dtype)?)?,
            down_bias: Var::zeros(r, dtype, device)?,
            up: Var::zeros((d, r), dtype, device)?,
            up_bias: Var::zeros(d, dtype, device)?,
        })
    }

    /// `tanh(y·Dᵀ + b_D)·Uᵀ + b_U` for `y` of shape `(.., d)`.
    pub fn forward(&self, y: &Tensor) -> Result<Tensor> {
        let d = y.dim(candle_core::D::Minus1)?;
        let flat = y.reshape(((), d))?.to_dtype(self.down.dtype())?;
        let h = flat.matmul(&self.down.as_tensor().t()?)?.broadcast_add(self.down_bias.as_tensor())?.tanh()?;
        let out = h.matmul(&self.up.as_tensor().t()?)?.broadcast_add(self.up_bias.as_tensor())?;
        out.to_dtype(y.dtype())?.reshape(y.shape())
    }
}

/// Serial adapters after the FFN of a set of layers.
#[derive(Debug, Clone)]
pub struct HoulsbyAdapter {
    layers: BTreeMap<usize, HoulsbyLayer>,
}

impl HoulsbyAdapter {
    /// Fresh adapters with a bottleneck of `r` units on each layer of `layers`.
    pub fn new(layers: &[usize], r: usize, d: usize, dtype: DType, device: &Device) -> Result<Self> {
        if r == 0 {
            candle_core::bail!("AdapterH: the bottleneck must have at least 1 unit");
        }
        let layers = layers.iter().map(|&l| Ok((l, HoulsbyLayer::init(r, d, dtype, device)?))).collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Adapters from given parameters.
    pub fn from_layers(layers: BTreeMap<usize, HoulsbyLayer>) -> Self {
        Self { layers }
    }

    /// Trainable scalars of one layer with bottleneck `r` on width `d`.
    pub fn params_per_layer(r: usize, d: usize) -> usize {
        2 * r * d + r + d
    }
}

impl AdapterHook for HoulsbyAdapter {
    fn ffn(&self, _layer: usize, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    fn linear(&self, _layer: usize, _site: LinearSite, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    fn adapts_projections(&self, _layer: usize) -> bool {
        false
    }

    fn ffn_output(&self, layer: usize, y: &Tensor) -> Result<Option<Tensor>> {
        self.layers.get(&layer).map(|l| l.forward(y)).transpose()
    }

    fn adapts_ffn_output(&self, layer: usize) -> bool {
        self.layers.contains_key(&layer)
    }
}

impl Trainable for HoulsbyAdapter {
    fn vars(&self) -> Vec<(String, Var)> {
        self.layers
            .iter()
            .flat_map(|(l, p)| {
                [
                    (format!("layers.{l}.adapter_h.down"), p.down.clone()),
                    (format!("layers.{l}.adapter_h.down_bias"), p.down_bias.clone()),
                    (format!("layers.{l}.adapter_h.up"), p.up.clone()),
                    (format!("layers.{l}.adapter_h.up_bias"), p.up_bias.clone()),
                ]
            })
            .collect()
    }
}

/// Loop reference of [`HoulsbyLayer::forward`] on row-major f64 slices: `y` `T×d`, `down` `r×d`,
/// `up` `d×r`; returns the `T×d` adapter term.
pub fn houlsby_forward_slow(y: &[f64], down: &[f64], down_bias: &[f64], up: &[f64], up_bias: &[f64], d: usize) -> Vec<f64> {
    let r = down_bias.len();
    let mut out = Vec::with_capacity(y.len());
    for row in y.chunks(d) {
        let h: Vec<f64> = (0..r).map(|j| (down[j * d..(j + 1) * d].iter().zip(row).map(|(a, b)| a * b).sum::<f64>() + down_bias[j]).tanh()).collect();
        out.extend((0..d).map(|i| up[i * r..(i + 1) * r].iter().zip(&h).map(|(a, b)| a * b).sum::<f64>() + up_bias[i]));
    }
    out
}
