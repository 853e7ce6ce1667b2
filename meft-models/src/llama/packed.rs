//! Frozen projection weights concatenated along their output rows (Q/K/V, gate/up), so that one
//! matmul (and one autograd node) serves several projections of the same input.
//!
//! The per-projection public fields (`q_proj`, `gate_proj`, ...) are zero-copy row views of the
//! packed tensor. If a caller replaces one of them, the packed tensor no longer matches and the
//! layer concatenates the current fields at call time instead (slower, still correct).

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::{Result, Tensor, TensorId};
use meft_core::LinearSite;

use super::layer::LayerContext;
use crate::ops;

/// `N` weights `(out_i, in)` stored as one `(Σ out_i, in)` tensor.
#[derive(Debug, Clone)]
pub(crate) struct Packed<const N: usize> {
    weight: Tensor,
    parts: [TensorId; N],
    /// The bf16 companion of `weight`, when the model computes frozen products in bf16.
    pub bf16: Option<Arc<ops::Bf16Weight>>,
}

impl<const N: usize> Packed<N> {
    /// Packs `parts` and returns the packed tensor with the row views that replace them.
    pub fn new(parts: [Tensor; N]) -> Result<(Self, [Tensor; N])> {
        let rows = parts.iter().map(|p| p.dim(0)).collect::<Result<Vec<_>>>()?;
        let weight = Tensor::cat(&parts, 0)?;
        let mut views = Vec::with_capacity(N);
        let mut start = 0;
        for r in rows {
            views.push(weight.narrow(0, start, r)?);
            start += r;
        }
        let views: [Tensor; N] = views.try_into().map_err(|_| candle_core::Error::Msg("packed: part count changed".into()))?;
        let ids = std::array::from_fn(|i| views[i].id());
        Ok((Self { weight, parts: ids, bf16: None }, views))
    }

    /// The packed weight of `current` parts: the stored tensor while they are its views, a fresh
    /// concatenation otherwise.
    pub fn weight_of<'a>(&'a self, current: [&Tensor; N]) -> Result<Cow<'a, Tensor>> {
        if current.iter().zip(&self.parts).all(|(t, id)| t.id() == *id) {
            Ok(Cow::Borrowed(&self.weight))
        } else {
            Ok(Cow::Owned(Tensor::cat(&current, 0)?))
        }
    }

    /// Builds (`Bf16`) or drops (`F32`) the bf16 companion of the packed weight.
    pub fn set_precision(&mut self, precision: ops::FrozenPrecision) -> Result<()> {
        self.bf16 = match precision {
            ops::FrozenPrecision::F32 => None,
            ops::FrozenPrecision::Bf16 => Some(Arc::new(ops::Bf16Weight::new(&self.weight)?)),
        };
        Ok(())
    }

    /// `x·Wᵀ` for all parts at once, plus each site's adapter term in its own columns.
    ///
    /// # Shapes
    /// `x`: `(batch, seq, in)`; result `(batch, seq, Σ out_i)`.
    pub fn project(&self, x: &Tensor, current: [(&Tensor, LinearSite); N], layer: usize, ctx: &LayerContext<'_>) -> Result<Tensor> {
        let y = ops::linear_with(x, self.weight_of(current.map(|(w, _)| w))?.as_ref(), self.bf16.as_ref())?;
        let mut extras = Vec::with_capacity(N);
        for (w, site) in current {
            extras.push((ctx.hook.linear(layer, site, x)?, w.dim(0)?));
        }
        if extras.iter().all(|(e, _)| e.is_none()) {
            return Ok(y);
        }
        let (b, s, _) = x.dims3()?;
        let cols = extras
            .into_iter()
            .map(|(e, rows)| match e {
                Some(e) => Ok(e),
                None => Tensor::zeros((b, s, rows), y.dtype(), y.device()),
            })
            .collect::<Result<Vec<_>>>()?;
        y + Tensor::cat(&cols, 2)?
    }
}
