//! Fused grouped-query attention on the CPU: RoPE, scaled scores, masked softmax and the value
//! product of every query head in one custom op, with a hand-written backward.
//!
//! Inputs are the packed projection `qkv` (`(batch, seq, (heads + 2·kv_heads)·head_dim)`, query
//! heads first, then keys, then values) and the rotated keys/values of every visible position
//! `kv` (`(2, batch, kv_heads, keys, head_dim)`, produced by [`KvHeads`] and, at inference, the KV
//! cache). One graph node replaces the ~17 reshapes, copies, matmuls and softmaxes of the
//! reference form, each of which would cost candle's autograd a zero-filled gradient and an add.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fastexp;
use super::gemm::{matmul, matmul_into, Dst, Mat, Parallelism};
use super::kernels::{f32_data, rotate_head, storage_of, CausalMask, RopeTables};
use crate::config::RopeLayout;

/// Head counts of grouped-query attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadDims {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
}

impl HeadDims {
    /// Width of a packed `qkv` row.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    fn group(&self) -> usize {
        self.heads / self.kv_heads.max(1)
    }
}

/// Rotary embedding shared by the attention kernels.
#[derive(Debug, Clone)]
pub(super) struct RopeSpec {
    pub tables: RopeTables,
    pub layout: RopeLayout,
}

/// `(batch, seq)` of a packed `qkv` layout, checked against the head dims.
fn qkv_dims(l: &Layout, dims: HeadDims, rope: &RopeSpec) -> Result<(usize, usize)> {
    let &[b, s, w] = l.dims() else { bail!("attention: qkv must be (batch, seq, width), got {:?}", l.dims()) };
    if w != dims.qkv_width() || dims.kv_heads == 0 || !dims.heads.is_multiple_of(dims.kv_heads) {
        bail!("attention: qkv width {w} does not match {dims:?}")
    }
    if s != rope.tables.seq || dims.head_dim != 2 * rope.tables.half {
        bail!("attention: rope tables cover {} positions of head_dim {}", rope.tables.seq, 2 * rope.tables.half)
    }
    Ok((b, s))
}

// ------------------------------------------------------------------ keys and values

/// `qkv → (2, batch, kv_heads, seq, head_dim)`: rotated keys, then values.
pub(super) struct KvHeads {
    pub dims: HeadDims,
    pub rope: RopeSpec,
}

impl KvHeads {
    /// Rotated keys, then values, of packed `qkv` rows of `batch` sequences of `seq` positions.
    pub(super) fn rows(&self, x: &[f32], b: usize, seq: usize) -> Vec<f32> {
        let HeadDims { heads: h, kv_heads: kvh, head_dim: hd } = self.dims;
        let w = self.dims.qkv_width();
        let mut out = vec![0f32; 2 * b * kvh * seq * hd];
        let (keys, values) = out.split_at_mut(b * kvh * seq * hd);
        for (row, (k, v)) in keys.chunks_mut(hd).zip(values.chunks_mut(hd)).enumerate() {
            let (t, j, bi) = (row % seq, (row / seq) % kvh, row / (seq * kvh));
            let src = (bi * seq + t) * w;
            rotate_head(&self.rope.tables, self.rope.layout, t, 1.0, &x[src + (h + j) * hd..][..hd], k);
            v.copy_from_slice(&x[src + (h + kvh + j) * hd..][..hd]);
        }
        out
    }

    /// Gradient of [`KvHeads::rows`]: writes the key and value columns of the `qkv`-shaped
    /// gradient `out` from the keys/values gradient `g`, leaving the query columns untouched.
    pub(super) fn backward_into(&self, g: &[f32], b: usize, out: &mut [f32]) {
        let HeadDims { heads: h, kv_heads: kvh, head_dim: hd } = self.dims;
        let (seq, w) = (self.rope.tables.seq, self.dims.qkv_width());
        let (gk, gv) = g.split_at(b * kvh * seq * hd);
        for (row, (k, v)) in gk.chunks(hd).zip(gv.chunks(hd)).enumerate() {
            let (t, j, bi) = (row % seq, (row / seq) % kvh, row / (seq * kvh));
            let dst = (bi * seq + t) * w;
            rotate_head(&self.rope.tables, self.rope.layout, t, -1.0, k, &mut out[dst + (h + j) * hd..][..hd]);
            out[dst + (h + kvh + j) * hd..][..hd].copy_from_slice(v);
        }
    }
}

impl CustomOp1 for KvHeads {
    fn name(&self) -> &'static str {
        "meft-kv-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, self.name())?;
        let (b, seq) = qkv_dims(l, self.dims, &self.rope)?;
        let HeadDims { kv_heads: kvh, head_dim: hd, .. } = self.dims;
        Ok((storage_of(self.rows(&x, b, seq), s.dtype())?, Shape::from((2, b, kvh, seq, hd))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let back = KvHeadsBwd { fwd: self, batch: x.dim(0)? };
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// Gradient of [`KvHeads`]: a `qkv`-shaped tensor, zero on the query columns.
struct KvHeadsBwd<'a> {
    fwd: &'a KvHeads,
    batch: usize,
}

impl CustomOp1 for KvHeadsBwd<'_> {
    fn name(&self) -> &'static str {
        "meft-kv-heads-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_data(s, l, self.name())?;
        let dims = self.fwd.dims;
        let (b, seq, w) = (self.batch, self.fwd.rope.tables.seq, dims.qkv_width());
        if g.len() != 2 * b * dims.kv_heads * seq * dims.head_dim {
            bail!("kv-heads-bwd: gradient has {} elements", g.len())
        }
        let mut out = vec![0f32; b * seq * w];
        self.fwd.backward_into(&g, b, &mut out);
        Ok((storage_of(out, s.dtype())?, Shape::from((b, seq, w))))
    }
}

// ------------------------------------------------------------------ attention

/// Whether the forward keeps the attention probabilities for a backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeepProbs {
    /// The output takes part in autograd: keep them.
    ForBackward,
    /// Inference: drop them.
    No,
}

/// `softmax(rope(q)·kᵀ/√d + mask)·v` for every query head.
pub(super) struct Attention {
    pub dims: HeadDims,
    pub rope: RopeSpec,
    pub mask: CausalMask,
    pub keep: KeepProbs,
    /// Probabilities of every (batch, head), `seq × keys` each, kept by the forward.
    pub probs: Mutex<Option<Arc<Vec<f32>>>>,
}

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    seq: usize,
    keys: usize,
    dims: HeadDims,
}

impl Geometry {
    fn of(qkv: &Layout, kv: &Layout, dims: HeadDims, rope: &RopeSpec, mask: &CausalMask) -> Result<Self> {
        let (batch, seq) = qkv_dims(qkv, dims, rope)?;
        let &[two, kb, kh, keys, khd] = kv.dims() else { bail!("attention: kv must be 5-d, got {:?}", kv.dims()) };
        if (two, kb, kh, khd) != (2, batch, dims.kv_heads, dims.head_dim) || keys != mask.offset + seq {
            bail!("attention: kv {:?} does not fit qkv {:?} after {} cached positions", kv.dims(), qkv.dims(), mask.offset)
        }
        Ok(Self { batch, seq, keys, dims })
    }

    /// Shapes of a call without cached positions before `seq` (training).
    fn uncached(batch: usize, seq: usize, dims: HeadDims) -> Self {
        Self { batch, seq, keys: seq, dims }
    }

    /// Offset of the keys (`part` 0) or values (1) of KV head `j` of batch `bi`.
    fn kv_at(&self, part: usize, bi: usize, j: usize) -> usize {
        (((part * self.batch + bi) * self.dims.kv_heads) + j) * self.keys * self.dims.head_dim
    }

    /// Rotated, scaled queries of head `i` of batch `bi`, `seq × head_dim`.
    fn queries(&self, qkv: &[f32], rope: &RopeSpec, bi: usize, i: usize) -> Vec<f32> {
        let (hd, w) = (self.dims.head_dim, self.dims.qkv_width());
        let scale = 1.0 / (hd as f32).sqrt();
        let mut q = vec![0f32; self.seq * hd];
        for (t, row) in q.chunks_mut(hd).enumerate() {
            rotate_head(&rope.tables, rope.layout, t, 1.0, &qkv[(bi * self.seq + t) * w + i * hd..][..hd], row);
            row.iter_mut().for_each(|v| *v *= scale);
        }
        q
    }
}

/// Query rows processed together, and the key positions any of them can see.
struct RowBlock {
    rows: std::ops::Range<usize>,
    keys: std::ops::Range<usize>,
}

/// Query rows per block: scores above the causal diagonal of a block are never computed.
const ROW_BLOCK: usize = 64;

/// The query rows of one head in blocks of [`ROW_BLOCK`], each with the union of its rows'
/// visible keys (the mask's ranges only move forward with the row).
fn row_blocks(mask: &CausalMask, seq: usize, keys: usize) -> impl Iterator<Item = RowBlock> + '_ {
    (0..seq).step_by(ROW_BLOCK).map(move |r0| {
        let r1 = (r0 + ROW_BLOCK).min(seq);
        let (lo, _) = mask.visible(r0, keys);
        let (_, hi) = mask.visible(r1 - 1, keys);
        RowBlock { rows: r0..r1, keys: lo..hi.max(lo) }
    })
}

impl Attention {
    /// Output rows (`seq × head_dim`) and probabilities (`seq × keys`) of head `i` of batch `bi`.
    fn head(&self, g: &Geometry, qkv: &[f32], kv: &[f32], bi: usize, i: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let (s, n, hd) = (g.seq, g.keys, g.dims.head_dim);
        let j = i / g.dims.group();
        let q = g.queries(qkv, &self.rope, bi, i);
        let (k, v) = (&kv[g.kv_at(0, bi, j)..][..n * hd], &kv[g.kv_at(1, bi, j)..][..n * hd]);
        let (mut p, mut o) = (vec![0f32; s * n], vec![0f32; s * hd]);
        let none = Parallelism::None;
        for b in row_blocks(&self.mask, s, n) {
            let (rows, cols) = (b.rows.len(), b.keys.len());
            let (q_b, k_b, v_b) = (&q[b.rows.start * hd..], &k[b.keys.start * hd..], &v[b.keys.start * hd..]);
            let p_b = &mut p[b.rows.start * n + b.keys.start..];
            matmul(p_b, Mat::strided(rows, cols, n), (q_b, Mat::dense(rows, hd)), (k_b, Mat::dense(cols, hd).t()), 1.0, none)?;
            for t in b.rows.clone() {
                fastexp::softmax_visible(&mut p[t * n..(t + 1) * n], self.mask.visible(t, n));
            }
            let p_b = &p[b.rows.start * n + b.keys.start..];
            matmul(&mut o[b.rows.start * hd..], Mat::dense(rows, hd), (p_b, Mat::strided(rows, cols, n)), (v_b, Mat::dense(cols, hd)), 1.0, none)?;
        }
        Ok((o, p))
    }
}

impl Attention {
    /// Output rows `(batch·seq, heads·head_dim)` of every head; keeps the probabilities when
    /// [`KeepProbs::ForBackward`].
    fn rows(&self, g: &Geometry, qkv: &[f32], kv: &[f32]) -> Result<Vec<f32>> {
        let (h, hd) = (g.dims.heads, g.dims.head_dim);
        let heads: Vec<(Vec<f32>, Vec<f32>)> =
            (0..g.batch * h).into_par_iter().map(|u| self.head(g, qkv, kv, u / h, u % h)).collect::<Result<_>>()?;
        let mut out = vec![0f32; g.batch * g.seq * h * hd];
        for (u, (o, _)) in heads.iter().enumerate() {
            let (bi, i) = (u / h, u % h);
            for (t, row) in o.chunks(hd).enumerate() {
                out[((bi * g.seq + t) * h + i) * hd..][..hd].copy_from_slice(row);
            }
        }
        if self.keep == KeepProbs::ForBackward {
            let mut probs = Vec::with_capacity(heads.iter().map(|(_, p)| p.len()).sum());
            heads.iter().for_each(|(_, p)| probs.extend_from_slice(p));
            *self.probs.lock().map_err(|_| candle_core::Error::Msg("attention: poisoned lock".into()))? = Some(Arc::new(probs));
        }
        Ok(out)
    }

    /// The probabilities the forward kept.
    fn kept_probs(&self) -> Result<Arc<Vec<f32>>> {
        let probs = self.probs.lock().map_err(|_| candle_core::Error::Msg("attention: poisoned lock".into()))?.clone();
        probs.ok_or_else(|| candle_core::Error::Msg("attention: backward of a forward that did not keep its probabilities".into()))
    }

    /// Training forward over `batch` sequences of `seq` positions without a cache.
    pub(super) fn uncached_rows(&self, batch: usize, seq: usize, qkv: &[f32], kv: &[f32]) -> Result<Vec<f32>> {
        self.rows(&Geometry::uncached(batch, seq, self.dims), qkv, kv)
    }

    /// Gradients of [`Attention::uncached_rows`] for the output gradient `go`: `qkv`-shaped
    /// (query columns only), then keys/values-shaped, in one buffer.
    pub(super) fn uncached_backward(&self, batch: usize, seq: usize, (qkv, kv, go): (&[f32], &[f32], &[f32])) -> Result<Vec<f32>> {
        let back = AttentionBwd { fwd: self, probs: self.kept_probs()? };
        back.rows(&Geometry::uncached(batch, seq, self.dims), qkv, kv, go)
    }
}

impl CustomOp2 for Attention {
    fn name(&self) -> &'static str {
        "meft-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (qkv, kv) = (f32_data(s1, l1, self.name())?, f32_data(s2, l2, self.name())?);
        let g = Geometry::of(l1, l2, self.dims, &self.rope, &self.mask)?;
        let out = self.rows(&g, &qkv, &kv)?;
        Ok((storage_of(out, s1.dtype())?, Shape::from((g.batch, g.seq, g.dims.heads * g.dims.head_dim))))
    }

    fn bwd(&self, qkv: &Tensor, kv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let back = AttentionBwd { fwd: self, probs: self.kept_probs()? };
        let packed = qkv.apply_op3_no_bwd(kv, &grad.contiguous()?, &back)?;
        let n = qkv.elem_count();
        let gqkv = packed.narrow(0, 0, n)?.reshape(qkv.shape())?;
        let gkv = packed.narrow(0, n, kv.elem_count())?.reshape(kv.shape())?;
        Ok((Some(gqkv), Some(gkv)))
    }
}

/// Gradient of [`Attention`] w.r.t. `qkv` (query columns only) and `kv`, packed into one flat
/// tensor: `qkv`'s elements, then `kv`'s.
struct AttentionBwd<'a> {
    fwd: &'a Attention,
    probs: Arc<Vec<f32>>,
}

impl AttentionBwd<'_> {
    /// `(dq, dk, dv)` of head `i` of batch `bi`: `seq × head_dim` (before the inverse rotation),
    /// `keys × head_dim` twice.
    #[allow(clippy::type_complexity)]
    fn head(&self, g: &Geometry, (qkv, kv, go): (&[f32], &[f32], &[f32]), bi: usize, i: usize) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (s, n, hd, h) = (g.seq, g.keys, g.dims.head_dim, g.dims.heads);
        let j = i / g.dims.group();
        let q = g.queries(qkv, &self.fwd.rope, bi, i);
        let p = &self.probs[(bi * h + i) * s * n..][..s * n];
        let (k, v) = (&kv[g.kv_at(0, bi, j)..][..n * hd], &kv[g.kv_at(1, bi, j)..][..n * hd]);
        let go = &go[bi * s * h * hd + i * hd..];
        let none = Parallelism::None;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut ds = vec![0f32; s * n];
        let (mut dq, mut dk, mut dv) = (vec![0f32; s * hd], vec![0f32; n * hd], vec![0f32; n * hd]);
        for b in row_blocks(&self.fwd.mask, s, n) {
            let (rows, cols, r0, k0) = (b.rows.len(), b.keys.len(), b.rows.start, b.keys.start);
            let block = Mat::strided(rows, cols, n);
            let go_b = (&go[r0 * h * hd..], Mat::strided(rows, hd, h * hd));
            matmul(&mut ds[r0 * n + k0..], block, go_b, (&v[k0 * hd..], Mat::dense(cols, hd).t()), 1.0, none)?;
            for t in b.rows.clone() {
                let (dr, pr) = (&mut ds[t * n..(t + 1) * n], &p[t * n..(t + 1) * n]);
                let dot: f32 = dr.iter().zip(pr).map(|(a, b)| a * b).sum();
                dr.iter_mut().zip(pr).for_each(|(d, &pv)| *d = pv * (*d - dot));
            }
            let (ds_b, p_b) = ((&ds[r0 * n + k0..], block), (&p[r0 * n + k0..], block));
            matmul(&mut dq[r0 * hd..], Mat::dense(rows, hd), ds_b, (&k[k0 * hd..], Mat::dense(cols, hd)), scale, none)?;
            let keys_out = Mat::dense(cols, hd);
            matmul_into(&mut dk[k0 * hd..], keys_out, Dst::Accumulate, (ds_b.0, block.t()), (&q[r0 * hd..], Mat::dense(rows, hd)), 1.0, none)?;
            matmul_into(&mut dv[k0 * hd..], keys_out, Dst::Accumulate, (p_b.0, block.t()), go_b, 1.0, none)?;
        }
        Ok((dq, dk, dv))
    }
}

impl CustomOp3 for AttentionBwd<'_> {
    fn name(&self) -> &'static str {
        "meft-attention-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let f = self.fwd;
        let (qkv, kv, go) = (f32_data(s1, l1, self.name())?, f32_data(s2, l2, self.name())?, f32_data(s3, l3, self.name())?);
        let g = Geometry::of(l1, l2, f.dims, &f.rope, &f.mask)?;
        let out = self.rows(&g, &qkv, &kv, &go)?;
        Ok((storage_of(out, s1.dtype())?, Shape::from(qkv.len() + kv.len())))
    }
}

impl AttentionBwd<'_> {
    /// Gradients w.r.t. `qkv` (query columns) and `kv`, packed into one buffer.
    fn rows(&self, g: &Geometry, qkv: &[f32], kv: &[f32], go: &[f32]) -> Result<Vec<f32>> {
        let f = self.fwd;
        let (h, hd, w) = (g.dims.heads, g.dims.head_dim, g.dims.qkv_width());
        if go.len() != g.batch * g.seq * h * hd || self.probs.len() != g.batch * h * g.seq * g.keys {
            bail!("attention-bwd: gradient or saved probabilities have the wrong size")
        }
        let heads: Vec<_> = (0..g.batch * h)
            .into_par_iter()
            .map(|u| self.head(g, (qkv, kv, go), u / h, u % h))
            .collect::<Result<_>>()?;
        let mut out = vec![0f32; qkv.len() + kv.len()];
        let (gqkv, gkv) = out.split_at_mut(qkv.len());
        for (u, (dq, dk, dv)) in heads.iter().enumerate() {
            let (bi, i) = (u / h, u % h);
            for (t, row) in dq.chunks(hd).enumerate() {
                rotate_head(&f.rope.tables, f.rope.layout, t, -1.0, row, &mut gqkv[(bi * g.seq + t) * w + i * hd..][..hd]);
            }
            let j = i / g.dims.group();
            for (part, d) in [(0, dk), (1, dv)] {
                let dst = &mut gkv[g.kv_at(part, bi, j)..][..g.keys * hd];
                dst.iter_mut().zip(d).for_each(|(a, b)| *a += b);
            }
        }
        Ok(out)
    }
}
