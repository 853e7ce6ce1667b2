//! Fused CPU kernels as candle custom ops, each with a hand-written backward.
//!
//! Every kernel computes in f32 (bf16/f16 inputs are widened, outputs narrowed back) over
//! contiguous row-major data and parallelises over rows with rayon. The reference forms built
//! from basic candle ops live in [`super`] as `*_slow`; tests compare values and gradients.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use half::{bf16, f16};
use rayon::prelude::*;

use super::fastexp::{self, log_sum_exp, sigmoid, vectorized};
use crate::config::RopeLayout;

/// Rows below this many elements in total are processed on the calling thread.
const PAR_MIN_ELEMS: usize = 1 << 14;

/// The contiguous data of a CPU tensor as f32 (borrowed when it already is f32).
pub(super) fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<Cow<'a, [f32]>> {
    let Some((a, b)) = l.contiguous_offsets() else { bail!("{op}: input must be contiguous") };
    Ok(match s {
        CpuStorage::F32(v) => Cow::Borrowed(&v[a..b]),
        CpuStorage::BF16(v) => Cow::Owned(v[a..b].iter().map(|x| x.to_f32()).collect()),
        CpuStorage::F16(v) => Cow::Owned(v[a..b].iter().map(|x| x.to_f32()).collect()),
        other => bail!("{op}: unsupported dtype {:?}", other.dtype()),
    })
}

/// Wraps f32 results as storage of `dtype`.
pub(super) fn storage_of(v: Vec<f32>, dtype: DType) -> Result<CpuStorage> {
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(v),
        DType::BF16 => CpuStorage::BF16(v.into_iter().map(bf16::from_f32).collect()),
        DType::F16 => CpuStorage::F16(v.into_iter().map(f16::from_f32).collect()),
        other => bail!("fused kernel: unsupported dtype {other:?}"),
    })
}

/// Runs `f(row_index, out_row)` over the rows of a fresh `rows × cols` buffer, each row
/// [`vectorized`] (in parallel from [`PAR_MIN_ELEMS`] elements on).
pub(super) fn map_rows(rows: usize, cols: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    if cols == 0 {
        return out;
    }
    if rows * cols < PAR_MIN_ELEMS {
        vectorized(
            #[inline(always)]
            || {
                out.chunks_mut(cols).enumerate().for_each(
                    #[inline(always)]
                    |(r, o)| f(r, o),
                )
            },
        );
    } else {
        out.par_chunks_mut(cols).enumerate().for_each(|(r, o)| {
            vectorized(
                #[inline(always)]
                || f(r, o),
            )
        });
    }
    out
}

pub(super) fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1)
}

/// The shape of `l` with its last dimension replaced by `last`.
pub(super) fn with_last_dim(l: &Layout, last: usize) -> Shape {
    let mut dims = l.dims().to_vec();
    if let Some(d) = dims.last_mut() {
        *d = last;
    }
    Shape::from(dims)
}

// ------------------------------------------------------------------ RMSNorm

/// `y = x / sqrt(mean(x²) + eps) * w` over the last dimension.
pub(super) struct RmsNorm {
    pub eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "meft-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_data(s1, l1, self.name())?, f32_data(s2, l2, self.name())?);
        let d = last_dim(l1);
        if w.len() != d {
            bail!("rms-norm: weight has {} elements, rows have {d}", w.len())
        }
        Ok((storage_of(rms_norm_rows(&x, &w, self.eps), s1.dtype())?, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let gx = x.apply_op3_no_bwd(w, &g, &RmsNormBwd { eps: self.eps })?;
        let gw = if w.track_op() {
            let rstd = (x.sqr()?.mean_keepdim(candle_core::D::Minus1)? + self.eps as f64)?.sqrt()?.recip()?;
            let n = x.elem_count() / w.elem_count();
            Some(g.mul(&x.broadcast_mul(&rstd)?)?.reshape((n, w.elem_count()))?.sum(0)?)
        } else {
            None
        };
        Ok((Some(gx), gw))
    }
}

fn rstd(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

/// RMSNorm of the rows of `x` (row width `w.len()`).
pub(super) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    map_rows(
        x.len() / d.max(1),
        d,
        #[inline(always)]
        |r, o| {
            let row = &x[r * d..(r + 1) * d];
            let rstd = rstd(row, eps);
            for ((o, &xi), &wi) in o.iter_mut().zip(row).zip(w) {
                *o = xi * rstd * wi;
            }
        },
    )
}

/// Gradient of [`rms_norm_rows`] w.r.t. `x` for the output gradient `g`.
pub(super) fn rms_norm_bwd_rows(x: &[f32], w: &[f32], g: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    map_rows(
        x.len() / d.max(1),
        d,
        #[inline(always)]
        |r, o| {
            let (xr, gr) = (&x[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
            let rs = rstd(xr, eps);
            let dot: f32 = xr.iter().zip(gr).zip(w).map(|((a, b), c)| a * b * c).sum::<f32>() / d as f32;
            let k = dot * rs * rs * rs;
            for i in 0..d {
                o[i] = rs * w[i] * gr[i] - xr[i] * k;
            }
        },
    )
}

/// Gradient of [`RmsNorm`] w.r.t. `x`: `r·(w∘g) − x·r³·mean(x∘w∘g)`.
struct RmsNormBwd {
    eps: f32,
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "meft-rms-norm-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, self.name())?;
        let w = f32_data(s2, l2, self.name())?;
        let g = f32_data(s3, l3, self.name())?;
        if w.len() != last_dim(l1) || g.len() != x.len() {
            bail!("rms-norm-bwd: input {:?}, weight {:?} and gradient {:?} disagree", l1.dims(), l2.dims(), l3.dims())
        }
        Ok((storage_of(rms_norm_bwd_rows(&x, &w, &g, self.eps), s1.dtype())?, l1.shape().clone()))
    }
}

// ------------------------------------------------------------------ masked softmax

/// Which keys a query row may attend to.
#[derive(Debug, Clone, Copy)]
pub(super) struct CausalMask {
    /// Number of query positions per head block (rows repeat with this period).
    pub seq: usize,
    /// Absolute position of the first query (the KV-cache length before this call).
    pub offset: usize,
    /// Mistral sliding window; `None` is full causal attention.
    pub window: Option<usize>,
}

impl CausalMask {
    /// The half-open range of visible key positions for row `r`.
    pub fn visible(&self, r: usize, keys: usize) -> (usize, usize) {
        let pos = self.offset + r % self.seq.max(1);
        let end = (pos + 1).min(keys);
        let start = self.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        (start.min(end), end)
    }
}

/// Softmax over the last dimension restricted to the keys visible under a causal mask; masked
/// entries are exactly zero.
pub(super) struct MaskedSoftmax {
    pub mask: CausalMask,
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "meft-masked-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        let t = last_dim(l);
        let out = map_rows(
            x.len() / t.max(1),
            t,
            #[inline(always)]
            |r, o| {
                let (a, b) = self.mask.visible(r, t);
                o[a..b].copy_from_slice(&x[r * t + a..r * t + b]);
                fastexp::softmax_visible(o, (a, b));
            },
        );
        Ok((storage_of(out, s.dtype())?, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxBwd)?))
    }
}

/// `gx = y ∘ (g − Σ g∘y)` row-wise.
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "meft-softmax-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (f32_data(s1, l1, self.name())?, f32_data(s2, l2, self.name())?);
        let t = last_dim(l1);
        let out = map_rows(
            y.len() / t.max(1),
            t,
            #[inline(always)]
            |r, o| {
                let (yr, gr) = (&y[r * t..(r + 1) * t], &g[r * t..(r + 1) * t]);
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for i in 0..t {
                    o[i] = yr[i] * (gr[i] - dot);
                }
            },
        );
        Ok((storage_of(out, s1.dtype())?, l1.shape().clone()))
    }
}

// ------------------------------------------------------------------ RoPE

/// cos/sin tables for positions `offset..offset+seq`, each `seq × head_dim/2`.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub(super) cos: Arc<Vec<f32>>,
    pub(super) sin: Arc<Vec<f32>>,
    pub(super) seq: usize,
    pub(super) half: usize,
}

/// Rotary embedding of `(batch, seq, heads, head_dim)` data; `sign = -1` applies the inverse
/// rotation (the backward).
pub(super) struct Rope {
    pub tables: RopeTables,
    pub layout: RopeLayout,
    pub heads: usize,
    pub sign: f32,
}

impl Rope {
    fn rotate(&self, r: usize, x: &[f32], o: &mut [f32]) {
        let pos = (r / self.heads) % self.tables.seq;
        rotate_head(&self.tables, self.layout, pos, self.sign, x, o);
    }
}

/// Rotates one head vector `x` (length `head_dim`) at table position `pos` (an index into the
/// tables, not the absolute position) into `o`; `sign = -1` is the inverse rotation.
pub(super) fn rotate_head(t: &RopeTables, layout: RopeLayout, pos: usize, sign: f32, x: &[f32], o: &mut [f32]) {
    let half = t.half;
    let (cos, sin) = (&t.cos[pos * half..(pos + 1) * half], &t.sin[pos * half..(pos + 1) * half]);
    for i in 0..half {
        let (a, b) = match layout {
            RopeLayout::RotateHalf => (i, i + half),
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
        };
        let (c, s) = (cos[i], sign * sin[i]);
        o[a] = x[a] * c - x[b] * s;
        o[b] = x[a] * s + x[b] * c;
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "meft-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        let d = last_dim(l);
        if d != 2 * self.tables.half {
            bail!("rope: head_dim {d} does not match the tables ({})", 2 * self.tables.half)
        }
        let out = map_rows(
            x.len() / d,
            d,
            #[inline(always)]
            |r, o| self.rotate(r, &x[r * d..(r + 1) * d], o),
        );
        Ok((storage_of(out, s.dtype())?, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let inverse = Rope { tables: self.tables.clone(), layout: self.layout, heads: self.heads, sign: -self.sign };
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(&inverse)?))
    }
}

// ------------------------------------------------------------------ SwiGLU

/// `silu(gate) ∘ up`.
pub(super) struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "meft-silu-mul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (f32_data(s1, l1, self.name())?, f32_data(s2, l2, self.name())?);
        if g.len() != u.len() {
            bail!("silu-mul: gate and up differ in size")
        }
        let d = last_dim(l1);
        let out = map_rows(
            g.len() / d.max(1),
            d,
            #[inline(always)]
            |r, o| {
                for (i, o) in o.iter_mut().enumerate() {
                    let gv = g[r * d + i];
                    *o = gv * sigmoid(gv) * u[r * d + i];
                }
            },
        );
        Ok((storage_of(out, s1.dtype())?, l1.shape().clone()))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let d_gate = gate.apply_op3_no_bwd(up, &grad, &SiluMulBwd { wrt: SiluMulArg::Gate })?;
        let d_up = gate.apply_op3_no_bwd(up, &grad, &SiluMulBwd { wrt: SiluMulArg::Up })?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// Which argument of [`SiluMul`] a backward kernel differentiates.
#[derive(Clone, Copy)]
enum SiluMulArg {
    Gate,
    Up,
}

struct SiluMulBwd {
    wrt: SiluMulArg,
}

impl CustomOp3 for SiluMulBwd {
    fn name(&self) -> &'static str {
        "meft-silu-mul-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_data(s1, l1, self.name())?;
        let u = f32_data(s2, l2, self.name())?;
        let dy = f32_data(s3, l3, self.name())?;
        let d = last_dim(l1);
        let out = map_rows(
            g.len() / d.max(1),
            d,
            #[inline(always)]
            |r, o| {
                for (i, o) in o.iter_mut().enumerate() {
                    let k = r * d + i;
                    let sg = sigmoid(g[k]);
                    *o = match self.wrt {
                        SiluMulArg::Gate => dy[k] * u[k] * sg * (1.0 + g[k] * (1.0 - sg)),
                        SiluMulArg::Up => dy[k] * g[k] * sg,
                    };
                }
            },
        );
        Ok((storage_of(out, s1.dtype())?, l1.shape().clone()))
    }
}

/// `silu(gate) ∘ up` of a packed `(..., 2f)` input whose first `f` columns are the gate and the
/// last `f` the up projection; output `(..., f)`.
pub(super) struct SwiGlu;

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "meft-swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        let w = last_dim(l);
        if !w.is_multiple_of(2) {
            bail!("swiglu: packed width {w} is odd")
        }
        let out = swiglu_rows(&x, w);
        Ok((storage_of(out, s.dtype())?, with_last_dim(l, w / 2)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&g.contiguous()?, &SwiGluBwd)?))
    }
}

/// Gradient of [`SwiGlu`]: gate and up columns packed like the input.
struct SwiGluBwd;

impl CustomOp2 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "meft-swiglu-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (f32_data(s1, l1, self.name())?, f32_data(s2, l2, self.name())?);
        let w = last_dim(l1);
        if dy.len() * 2 != x.len() {
            bail!("swiglu-bwd: gradient has {} elements for an input of {}", dy.len(), x.len())
        }
        Ok((storage_of(swiglu_bwd_rows(&x, &dy, w), s1.dtype())?, l1.shape().clone()))
    }
}

/// `silu(gate) ∘ up` of packed rows of width `w` (gate columns, then up columns).
pub(super) fn swiglu_rows(x: &[f32], w: usize) -> Vec<f32> {
    let f = w / 2;
    map_rows(
        x.len() / w.max(1),
        f,
        #[inline(always)]
        |r, o| {
            let (g, u) = x[r * w..(r + 1) * w].split_at(f);
            for ((o, &gv), &uv) in o.iter_mut().zip(g).zip(u) {
                *o = gv * sigmoid(gv) * uv;
            }
        },
    )
}

/// Gradient of [`swiglu_rows`] for the output gradient `dy`, packed like the input.
pub(super) fn swiglu_bwd_rows(x: &[f32], dy: &[f32], w: usize) -> Vec<f32> {
    let f = w / 2;
    map_rows(
        x.len() / w.max(1),
        w,
        #[inline(always)]
        |r, o| {
            let (g, u) = x[r * w..(r + 1) * w].split_at(f);
            let dy = &dy[r * f..(r + 1) * f];
            let (og, ou) = o.split_at_mut(f);
            for ((((og, ou), &gv), &uv), &d) in og.iter_mut().zip(ou).zip(g).zip(u).zip(dy) {
                let sg = sigmoid(gv);
                *og = d * uv * sg * (1.0 + gv * (1.0 - sg));
                *ou = d * gv * sg;
            }
        },
    )
}

// ------------------------------------------------------------------ cross-entropy

/// Per-row negative log-likelihood `logsumexp(z) − z[target]` of `(..., vocab)` logits, over
/// the rows that [`LogitRows`] selects (one target per selected row, in order).
pub(super) struct CrossEntropy {
    pub rows: LogitRows,
}

/// Which rows of the logits a cross-entropy scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LogitRows {
    /// Every row.
    All,
    /// Every row but the last of each block of `seq` rows (next-token prediction: the last
    /// position of a sequence has no target).
    AllButLastOf(usize),
}

impl LogitRows {
    /// Number of scored rows among `rows`.
    pub(super) fn count(self, rows: usize) -> usize {
        match self {
            LogitRows::All => rows,
            LogitRows::AllButLastOf(seq) => rows / seq.max(1) * seq.saturating_sub(1),
        }
    }

    /// The logits row of scored row `r`.
    pub(super) fn source(self, r: usize) -> usize {
        match self {
            LogitRows::All => r,
            LogitRows::AllButLastOf(seq) => r / (seq - 1) * seq + r % (seq - 1),
        }
    }

    /// The scored row of logits row `r`, if it is scored.
    pub(super) fn scored(self, r: usize) -> Option<usize> {
        match self {
            LogitRows::All => Some(r),
            LogitRows::AllButLastOf(seq) => (r % seq != seq - 1).then(|| r / seq * (seq - 1) + r % seq),
        }
    }
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "meft-cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = f32_data(s1, l1, self.name())?;
        let targets = targets(s2, l2)?;
        let v = last_dim(l1);
        let lse = scored_log_sum_exps(self.name(), &z, v, self.rows, &targets)?;
        let rows = lse.len();
        let out: Vec<f32> = (0..rows).map(|r| lse[r] - z[self.rows.source(r) * v + targets[r] as usize]).collect();
        Ok((storage_of(out, s1.dtype())?, Shape::from(rows)))
    }

    fn bwd(&self, z: &Tensor, t: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(z.apply_op3_no_bwd(t, &g.contiguous()?, &CrossEntropyBwd { rows: self.rows })?), None))
    }
}

/// Targets of a cross-entropy as u32 (i64 accepted, negatives clamped to 0).
pub(super) fn targets<'a>(s: &'a CpuStorage, l: &Layout) -> Result<Cow<'a, [u32]>> {
    let Some((a, b)) = l.contiguous_offsets() else { bail!("cross-entropy: targets must be contiguous") };
    Ok(match s {
        CpuStorage::U32(v) => Cow::Borrowed(&v[a..b]),
        CpuStorage::I64(v) => Cow::Owned(v[a..b].iter().map(|&x| x.max(0) as u32).collect()),
        other => bail!("cross-entropy: targets must be u32 or i64, got {:?}", other.dtype()),
    })
}

/// Log-sum-exp of every scored row of the `(rows, vocab)` logits `z`, after checking that there
/// is one target per scored row and that each lies inside the vocabulary.
pub(super) fn scored_log_sum_exps(op: &str, z: &[f32], vocab: usize, rows: LogitRows, targets: &[u32]) -> Result<Vec<f32>> {
    let scored = rows.count(z.len() / vocab.max(1));
    if targets.len() != scored {
        bail!("{op}: {} targets for {scored} rows", targets.len())
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        bail!("{op}: target {t} is outside the vocabulary of {vocab}")
    }
    // One value per row of `vocab` logits: parallel over rows whatever the output size.
    Ok((0..scored).into_par_iter().map(|r| log_sum_exp(&z[rows.source(r) * vocab..][..vocab])).collect())
}

/// A row of logits (log-sum-exp `lse`) becomes its NLL gradient `g·(softmax − onehot(target))`.
pub(super) fn nll_grad_in_place(row: &mut [f32], lse: f32, g: f32, target: usize) {
    vectorized(
        #[inline(always)]
        || row.iter_mut().for_each(|z| *z = fastexp::exp(*z - lse) * g),
    );
    row[target] -= g;
}

/// `g_row · (softmax(z) − onehot(target))` on scored rows, zero on the others.
struct CrossEntropyBwd {
    rows: LogitRows,
}

impl CustomOp3 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "meft-cross-entropy-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = f32_data(s1, l1, self.name())?;
        let t = targets(s2, l2)?;
        let g = f32_data(s3, l3, self.name())?;
        let v = last_dim(l1);
        let out = map_rows(
            z.len() / v.max(1),
            v,
            #[inline(always)]
            |r, o| {
                let Some(k) = self.rows.scored(r) else { return };
                let row = &z[r * v..(r + 1) * v];
                o.copy_from_slice(row);
                nll_grad_in_place(o, log_sum_exp(row), g[k], t[k] as usize);
            },
        );
        Ok((storage_of(out, s1.dtype())?, l1.shape().clone()))
    }
}
