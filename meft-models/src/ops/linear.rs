//! Frozen projections `x·Wᵀ` of f32 rows: forward kernels that split the output columns across
//! threads, and custom ops whose backward sends `g·W` to the input and nothing to the weight.
//! A weight with a bf16 companion ([`Bf16Weight`]) computes in bf16 instead.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::gemm::{Dst, Mat, matmul_column_split};
#[cfg(test)]
use super::gemm::{Parallelism, matmul};
use super::kernels::{f32_data, last_dim, with_last_dim};
use meft_core::bf16::Bf16Weight;

/// A frozen weight `(out, in)` as the row kernels see it: its f32 values and, when the model
/// computes its frozen products in bf16, the companion that does.
#[derive(Clone, Copy)]
pub(super) struct Weight<'a> {
    /// Row-major `(out, in)` values.
    pub data: &'a [f32],
    /// The bf16 companion made from this weight, if any.
    pub bf16: Option<&'a Bf16Weight>,
}

impl<'a> Weight<'a> {
    /// An f32 weight.
    #[cfg(test)]
    pub fn f32(data: &'a [f32]) -> Self {
        Self { data, bf16: None }
    }

    /// `data` with the companion `bf16` (none: f32).
    pub fn with(data: &'a [f32], bf16: Option<&'a Arc<Bf16Weight>>) -> Self {
        Self { data, bf16: bf16.map(Arc::as_ref) }
    }
}

/// The companion of `w` among `bf16`, if it was made from `w`.
pub(super) fn companion_for<'a>(bf16: Option<&'a Arc<Bf16Weight>>, w: &Tensor) -> Option<&'a Arc<Bf16Weight>> {
    bf16.filter(|b| b.is_for(w))
}

/// `x·Wᵀ` of f32 `x` `(..., in)` and a frozen f32 weight `(out, in)`, computed straight into the
/// output; the backward sends `g·W` to `x` and nothing to the weight.
pub(super) struct FrozenLinear {
    /// The weight's bf16 companion, when the products run in bf16.
    pub bf16: Option<Arc<Bf16Weight>>,
}

impl CustomOp2 for FrozenLinear {
    fn name(&self) -> &'static str {
        "meft-frozen-linear-f32"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (Some((a1, b1)), Some((a2, b2))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            bail!("frozen-linear: inputs must be contiguous")
        };
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2) else { bail!("frozen-linear: f32 inputs only") };
        let (x, w) = (&x[a1..b1], &w[a2..b2]);
        let &[out_dim, in_dim] = l2.dims() else { bail!("frozen-linear: weight must be 2-d, got {:?}", l2.dims()) };
        if last_dim(l1) != in_dim {
            bail!("frozen-linear: input width {} does not match the weight {:?}", last_dim(l1), l2.dims())
        }
        let y = linear_rows(x, Weight::with(w, self.bf16.as_ref()), out_dim)?;
        Ok((CpuStorage::F32(y), with_last_dim(l1, out_dim)))
    }

    fn bwd(&self, _x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(input_grad(g, w, self.bf16.clone())?), None))
    }
}

/// `g·W`, the input gradient of a frozen f32 projection: [`linear_bwd_rows`] for contiguous f32
/// CPU operands, candle's matmul otherwise.
fn input_grad(g: &Tensor, w: &Tensor, bf16: Option<Arc<Bf16Weight>>) -> Result<Tensor> {
    if g.dtype() != candle_core::DType::F32 || !g.device().is_cpu() {
        return g.broadcast_matmul(w);
    }
    g.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &InputGrad { bf16 })
}

/// `g (..., out) · W (out, in)` as one column-split product.
struct InputGrad {
    bf16: Option<Arc<Bf16Weight>>,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "meft-frozen-linear-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, w) = (f32_data(s1, l1, self.name())?, f32_data(s2, l2, self.name())?);
        let &[out_dim, in_dim] = l2.dims() else { bail!("frozen-linear-input-grad: weight must be 2-d, got {:?}", l2.dims()) };
        if last_dim(l1) != out_dim {
            bail!("frozen-linear-input-grad: gradient width {} does not match the weight {:?}", last_dim(l1), l2.dims())
        }
        Ok((CpuStorage::F32(linear_bwd_rows(&g, Weight::with(&w, self.bf16.as_ref()), out_dim)?), with_last_dim(l1, in_dim)))
    }
}

/// `x·Wᵀ` of rows `x` and a weight `w` of `out_dim` rows.
pub(super) fn linear_rows(x: &[f32], w: Weight<'_>, out_dim: usize) -> Result<Vec<f32>> {
    let rows = x.len() / (w.data.len() / out_dim.max(1)).max(1);
    let mut y = vec![0f32; rows * out_dim];
    linear_into(x, w, out_dim, &mut y, Dst::Overwrite)?;
    Ok(y)
}

/// `h + x·Wᵀ`: [`linear_rows`] accumulated onto a copy of the residual rows `h`.
pub(super) fn linear_residual_rows(x: &[f32], w: Weight<'_>, h: &[f32], out_dim: usize) -> Result<Vec<f32>> {
    let mut y = h.to_vec();
    linear_into(x, w, out_dim, &mut y, Dst::Accumulate)?;
    Ok(y)
}

/// `y (=|+=) x·Wᵀ` in the weight's precision.
fn linear_into(x: &[f32], w: Weight<'_>, out_dim: usize, y: &mut [f32], mode: Dst) -> Result<()> {
    match w.bf16 {
        Some(b) => b.forward_into(x, y, mode),
        None => column_split_linear(x, w.data, out_dim, y, mode),
    }
}

/// `y (=|+=) x·Wᵀ` with the output columns split across the rayon threads
/// ([`matmul_column_split`]): a frozen weight stored `(out, in)` is the strided operand of this
/// product, and each thread packs its own block of `W`'s rows. Reference: [`linear_rows_slow`].
pub(super) fn column_split_linear(x: &[f32], w: &[f32], out_dim: usize, y: &mut [f32], mode: Dst) -> Result<()> {
    let in_dim = w.len() / out_dim.max(1);
    let rows = x.len() / in_dim.max(1);
    if x.len() != rows * in_dim || w.len() != out_dim * in_dim || y.len() != rows * out_dim {
        bail!("linear: input {} / weight {} / output {} elements disagree for {out_dim} outputs", x.len(), w.len(), y.len())
    }
    matmul_column_split(y, Mat::dense(rows, out_dim), mode, (x, Mat::dense(rows, in_dim)), (w, Mat::dense(out_dim, in_dim).t()), 1.0)
}

/// Reference form of [`linear_rows`]: one product over all columns.
#[cfg(test)]
pub(super) fn linear_rows_slow(x: &[f32], w: &[f32], out_dim: usize) -> Result<Vec<f32>> {
    let in_dim = w.len() / out_dim.max(1);
    let rows = x.len() / in_dim.max(1);
    let mut y = vec![0f32; rows * out_dim];
    matmul(&mut y, Mat::dense(rows, out_dim), (x, Mat::dense(rows, in_dim)), (w, Mat::dense(out_dim, in_dim).t()), 1.0, Parallelism::None)?;
    Ok(y)
}

/// Gradient of [`linear_rows`] w.r.t. `x`: `g·W` for a weight of `out_dim` rows, in the
/// weight's precision.
pub(super) fn linear_bwd_rows(g: &[f32], w: Weight<'_>, out_dim: usize) -> Result<Vec<f32>> {
    if let Some(b) = w.bf16 {
        return b.backward(g);
    }
    let in_dim = w.data.len() / out_dim.max(1);
    let mut dx = vec![0f32; g.len() / out_dim.max(1) * in_dim];
    column_split_bwd(g, w.data, out_dim, &mut dx)?;
    Ok(dx)
}

/// `dx = g·W` for f32 `w` of `out_dim` rows, the columns of `dx` split across the threads.
pub(super) fn column_split_bwd(g: &[f32], w: &[f32], out_dim: usize, dx: &mut [f32]) -> Result<()> {
    let in_dim = w.len() / out_dim.max(1);
    let rows = g.len() / out_dim.max(1);
    if g.len() != rows * out_dim || w.len() != out_dim * in_dim || dx.len() != rows * in_dim {
        bail!("linear-bwd: gradient {} / weight {} elements disagree for {out_dim} outputs", g.len(), w.len())
    }
    matmul_column_split(dx, Mat::dense(rows, in_dim), Dst::Overwrite, (g, Mat::dense(rows, out_dim)), (w, Mat::dense(out_dim, in_dim)), 1.0)
}

/// `h + x·Wᵀ` of f32 `x` `(..., in)`, frozen `W` `(out, in)` and a residual `h` `(..., out)`,
/// the product accumulated straight onto a copy of `h`; the backward sends `g·W` to `x`, `g` to
/// `h` and nothing to the weight.
pub(super) struct FrozenLinearResidual {
    /// The weight's bf16 companion, when the products run in bf16.
    pub bf16: Option<Arc<Bf16Weight>>,
}

impl CustomOp3 for FrozenLinearResidual {
    fn name(&self) -> &'static str {
        "meft-frozen-linear-residual"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (Some((a1, b1)), Some((a2, b2)), Some((a3, b3))) = (l1.contiguous_offsets(), l2.contiguous_offsets(), l3.contiguous_offsets()) else {
            bail!("frozen-linear-residual: inputs must be contiguous")
        };
        let (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(h)) = (s1, s2, s3) else { bail!("frozen-linear-residual: f32 inputs only") };
        let (x, w, h) = (&x[a1..b1], &w[a2..b2], &h[a3..b3]);
        let &[out_dim, in_dim] = l2.dims() else { bail!("frozen-linear-residual: weight must be 2-d") };
        let rows = x.len() / in_dim.max(1);
        if last_dim(l1) != in_dim || h.len() != rows * out_dim {
            bail!("frozen-linear-residual: x {:?}, weight {:?} and residual {:?} disagree", l1.dims(), l2.dims(), l3.dims())
        }
        Ok((CpuStorage::F32(linear_residual_rows(x, Weight::with(w, self.bf16.as_ref()), h, out_dim)?), l3.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, w: &Tensor, _h: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((Some(input_grad(g, w, self.bf16.clone())?), None, Some(g.clone())))
    }
}

/// Identity on its second argument (the precomputed `x·Wᵀ`) whose backward sends `g·W` to the
/// first argument (`x`) and nothing to the weight: the weight gradient of a frozen layer is never
/// computed.
pub(super) struct FrozenLinearGrad {
    pub weight: Tensor,
}

impl CustomOp2 for FrozenLinearGrad {
    fn name(&self) -> &'static str {
        "meft-frozen-linear"
    }

    fn cpu_fwd(&self, _s1: &CpuStorage, _l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l2.contiguous_offsets() else { bail!("frozen-linear: output must be contiguous") };
        let out = match s2 {
            CpuStorage::F32(v) => CpuStorage::F32(v[a..b].to_vec()),
            CpuStorage::BF16(v) => CpuStorage::BF16(v[a..b].to_vec()),
            CpuStorage::F16(v) => CpuStorage::F16(v[a..b].to_vec()),
            other => bail!("frozen-linear: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, l2.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(input_grad(g, &self.weight, None)?), None))
    }
}
