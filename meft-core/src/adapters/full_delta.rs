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
//!
//! With [`FrozenPrecision::Bf16`] the update's products run in bf16 too ([`DeltaProduct`]:
//! `x·ΔWᵀ`, `g·ΔW` and `gᵀ·x` on the bf16 kernels, f32 sums), the usual mixed-precision
//! recipe; the f32 path (candle's matmul) is its reference.
//!
//! In [`Phase::Eval`] the updates cannot change, so [`FullDelta::set_phase`] packs their bf16
//! companions once and the products run detached from the autograd graph: no repacking per
//! decoded token, and no per-token copy of `ΔW` kept alive through the KV cache's graph.

use std::sync::{Arc, RwLock};

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, Var};

use super::{Phase, Trainable};
use crate::bf16::{Bf16Weight, Dst, FrozenPrecision, matmul_tn};
use crate::{AdapterHook, LinearSite};

/// Full-size updates of the projections `sites` of `layers`.
#[derive(Debug)]
pub struct FullDelta {
    /// `(layer, site, ΔW (out×in))`, in layer-major, site order.
    deltas: Vec<(usize, LinearSite, Var)>,
    precision: FrozenPrecision,
    /// `Some` in [`Phase::Eval`]: the bf16 companions of the deltas (index-aligned; empty on the
    /// f32 path), packed when evaluation began.
    eval: RwLock<Option<Vec<Arc<Bf16Weight>>>>,
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
        Ok(Self { deltas, precision: FrozenPrecision::F32, eval: RwLock::new(None) })
    }

    /// The same updates with their products in `precision` (f32 by default).
    #[must_use]
    pub fn with_precision(self, precision: FrozenPrecision) -> Self {
        Self { precision, ..self }
    }

    /// Evaluation freezes the updates (packed once, products without gradients) until the next
    /// [`Phase::Train`]. A delta that fails to pack is packed again (and its error reported) by
    /// the forward that needs it.
    pub fn set_phase(&self, phase: Phase) {
        let snapshot = match phase {
            Phase::Train => None,
            Phase::Eval if self.uses_bf16() => Some(
                self.deltas.iter().map(|(_, _, v)| Bf16Weight::new(&v.as_tensor().detach()).map(Arc::new)).collect::<Result<_>>().unwrap_or_default(),
            ),
            Phase::Eval => Some(Vec::new()),
        };
        *self.eval.write().unwrap_or_else(std::sync::PoisonError::into_inner) = snapshot;
    }

    fn uses_bf16(&self) -> bool {
        self.precision == FrozenPrecision::Bf16 && self.deltas.first().is_some_and(|(_, _, v)| v.dtype() == DType::F32 && v.device().is_cpu())
    }

    fn delta(&self, layer: usize, site: LinearSite) -> Option<(usize, &Var)> {
        self.deltas.iter().position(|(l, s, _)| *l == layer && *s == site).map(|i| (i, &self.deltas[i].2))
    }
}

impl AdapterHook for FullDelta {
    fn ffn(&self, _layer: usize, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    fn linear(&self, layer: usize, site: LinearSite, x: &Tensor) -> Result<Option<Tensor>> {
        let Some((index, dw)) = self.delta(layer, site) else { return Ok(None) };
        let fan_in = x.dim(candle_core::D::Minus1)?;
        let mut shape = x.dims().to_vec();
        let rows = x.reshape(((), fan_in))?;
        let eval = self.eval.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Evaluation multiplies the frozen values: the product joins no autograd graph.
        let dw = if eval.is_some() { dw.as_tensor().detach() } else { dw.as_tensor().clone() };
        let y = if self.uses_bf16() {
            let weight = match eval.as_ref().and_then(|packed| packed.get(index)) {
                Some(packed) => packed.clone(),
                None => Arc::new(Bf16Weight::new(&dw.detach())?),
            };
            rows.to_dtype(DType::F32)?.contiguous()?.apply_op2(&dw, DeltaProduct { weight })?
        } else {
            rows.to_dtype(dw.dtype())?.matmul(&dw.t()?)?
        };
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

/// `x·ΔWᵀ` for rows `x` on the bf16 kernels, with both gradients: `g·ΔW` to `x` and `gᵀ·x`
/// to `ΔW`. `weight` is the bf16 companion packed from `ΔW`'s current values.
struct DeltaProduct {
    weight: Arc<Bf16Weight>,
}

impl CustomOp2 for DeltaProduct {
    fn name(&self) -> &'static str {
        "meft-delta-product"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, _s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), Some((a, b))) = (s1, l1.contiguous_offsets()) else {
            candle_core::bail!("delta product: the input must be contiguous f32 rows")
        };
        let (out_dim, in_dim) = self.weight.dims();
        if l2.dims() != [out_dim, in_dim] || l1.dims().len() != 2 || l1.dims()[1] != in_dim {
            candle_core::bail!("delta product: input {:?} and update {:?} do not fit a ({out_dim}, {in_dim}) product", l1.dims(), l2.dims())
        }
        let mut y = vec![0f32; l1.dims()[0] * out_dim];
        self.weight.forward_into(&x[a..b], &mut y, Dst::Overwrite)?;
        Ok((CpuStorage::F32(y), Shape::from((l1.dims()[0], out_dim))))
    }

    fn bwd(&self, x: &Tensor, _dw: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (out_dim, in_dim) = self.weight.dims();
        let rows = x.dim(0)?;
        let g = g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let dx = Tensor::from_vec(self.weight.backward(&g)?, (rows, in_dim), x.device())?;
        let ddw = Tensor::from_vec(matmul_tn(&g, &xs, rows, out_dim, in_dim)?, (out_dim, in_dim), x.device())?;
        Ok((Some(dx), Some(ddw)))
    }
}
