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
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::fastexp;
use super::gemm::{Mat, Parallelism, matmul};
use super::kernels::{CausalMask, RopeTables, f32_data, rotate_head, storage_of};
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

    /// Rotated, scaled queries of head `i` of batch `bi` at the positions `rows`,
    /// `rows.len() × head_dim`.
    fn queries(&self, qkv: &[f32], rope: &RopeSpec, (bi, i): (usize, usize), rows: std::ops::Range<usize>) -> Vec<f32> {
        let (hd, w) = (self.dims.head_dim, self.dims.qkv_width());
        let scale = 1.0 / (hd as f32).sqrt();
        let mut q = vec![0f32; rows.len() * hd];
        for (t, row) in rows.zip(q.chunks_mut(hd)) {
            rotate_head(&rope.tables, rope.layout, t, 1.0, &qkv[(bi * self.seq + t) * w + i * hd..][..hd], row);
            row.iter_mut().for_each(|v| *v *= scale);
        }
        q
    }

    /// `(batch, head)` of unit index `u = batch·heads + head`.
    fn head_of(&self, u: usize) -> (usize, usize) {
        (u / self.dims.heads, u % self.dims.heads)
    }
}

/// Query rows processed together, and the key positions any of them can see.
#[derive(Debug, Clone)]
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

/// One task of the parallel kernels: a block of query rows of one (batch, head). Splitting heads
/// into row blocks keeps both threads busy (9 heads over 2 threads left one idle for a ninth of
/// each kernel) and bounds the per-task buffers by the block.
#[derive(Debug, Clone)]
struct Unit {
    /// `batch·heads + head`.
    u: usize,
    block: RowBlock,
}

/// Every unit of a call, head-major, blocks in row order (the order of the probability buffer).
fn units(g: &Geometry, mask: &CausalMask) -> Vec<Unit> {
    (0..g.batch * g.dims.heads).flat_map(|u| row_blocks(mask, g.seq, g.keys).map(move |block| Unit { u, block })).collect()
}

impl Attention {
    /// Output rows (`rows × head_dim`) of one unit; its probabilities (`rows × keys`) go to `p`.
    fn block(&self, g: &Geometry, (qkv, kv): (&[f32], &[f32]), unit: &Unit, p: &mut [f32]) -> Result<Vec<f32>> {
        let (n, hd) = (g.keys, g.dims.head_dim);
        let (bi, i) = g.head_of(unit.u);
        let j = i / g.dims.group();
        let RowBlock { rows, keys } = &unit.block;
        let (nr, nc, k0) = (rows.len(), keys.len(), keys.start);
        let q = g.queries(qkv, &self.rope, (bi, i), rows.clone());
        let (k, v) = (&kv[g.kv_at(0, bi, j) + k0 * hd..], &kv[g.kv_at(1, bi, j) + k0 * hd..]);
        let (scores, none) = (Mat::strided(nr, nc, n), Parallelism::None);
        matmul(&mut p[k0..], scores, (&q, Mat::dense(nr, hd)), (k, Mat::dense(nc, hd).t()), 1.0, none)?;
        for (t, row) in rows.clone().zip(p.chunks_mut(n)) {
            fastexp::softmax_visible(row, self.mask.visible(t, n));
        }
        let mut o = vec![0f32; nr * hd];
        matmul(&mut o, Mat::dense(nr, hd), (&p[k0..], scores), (v, Mat::dense(nc, hd)), 1.0, none)?;
        Ok(o)
    }

    /// Output rows `(batch·seq, heads·head_dim)` of every head; keeps the probabilities when
    /// [`KeepProbs::ForBackward`].
    fn rows(&self, g: &Geometry, qkv: &[f32], kv: &[f32]) -> Result<Vec<f32>> {
        let (h, hd, n) = (g.dims.heads, g.dims.head_dim, g.keys);
        let units = units(g, &self.mask);
        let mut probs = vec![0f32; g.batch * h * g.seq * n];
        let slots: Vec<&mut [f32]> = probs.chunks_mut((g.seq * n).max(1)).flat_map(|ph| ph.chunks_mut((ROW_BLOCK * n).max(1))).collect();
        let outs: Vec<Vec<f32>> = units.par_iter().zip(slots).map(|(unit, p)| self.block(g, (qkv, kv), unit, p)).collect::<Result<_>>()?;
        let mut out = vec![0f32; g.batch * g.seq * h * hd];
        for (unit, o) in units.iter().zip(&outs) {
            let (bi, i) = g.head_of(unit.u);
            for (t, row) in unit.block.rows.clone().zip(o.chunks(hd)) {
                out[((bi * g.seq + t) * h + i) * hd..][..hd].copy_from_slice(row);
            }
        }
        if self.keep == KeepProbs::ForBackward {
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
    /// `[dq, dk, dv]` of one unit: its query rows (`rows × head_dim`, rotated back), and its
    /// contributions to the keys and values it sees (`keys × head_dim` each).
    fn block(&self, g: &Geometry, (qkv, kv, go): (&[f32], &[f32], &[f32]), unit: &Unit) -> Result<[Vec<f32>; 3]> {
        let (s, n, hd, h) = (g.seq, g.keys, g.dims.head_dim, g.dims.heads);
        let (bi, i) = g.head_of(unit.u);
        let j = i / g.dims.group();
        let RowBlock { rows, keys } = &unit.block;
        let (nr, nc, r0, k0) = (rows.len(), keys.len(), rows.start, keys.start);
        let rope = &self.fwd.rope;
        let q = g.queries(qkv, rope, (bi, i), rows.clone());
        let p = &self.probs[(unit.u * s + r0) * n..];
        let (k, v) = (&kv[g.kv_at(0, bi, j) + k0 * hd..], &kv[g.kv_at(1, bi, j) + k0 * hd..]);
        let go_b = (&go[(bi * s + r0) * h * hd + i * hd..], Mat::strided(nr, hd, h * hd));
        let (block, p_b, none) = (Mat::dense(nr, nc), (&p[k0..], Mat::strided(nr, nc, n)), Parallelism::None);
        let mut ds = vec![0f32; nr * nc];
        matmul(&mut ds, block, go_b, (v, Mat::dense(nc, hd).t()), 1.0, none)?;
        fastexp::vectorized(
            #[inline(always)]
            || {
                for (r, dr) in ds.chunks_mut(nc.max(1)).enumerate() {
                    let pr = &p[r * n + k0..][..nc];
                    let dot = fastexp::dot(dr, pr);
                    dr.iter_mut().zip(pr).for_each(|(d, &pv)| *d = pv * (*d - dot));
                }
            },
        );
        let (mut dq, mut dk, mut dv) = (vec![0f32; nr * hd], vec![0f32; nc * hd], vec![0f32; nc * hd]);
        matmul(&mut dq, Mat::dense(nr, hd), (&ds, block), (k, Mat::dense(nc, hd)), 1.0 / (hd as f32).sqrt(), none)?;
        matmul(&mut dk, Mat::dense(nc, hd), (&ds, block.t()), (&q, Mat::dense(nr, hd)), 1.0, none)?;
        matmul(&mut dv, Mat::dense(nc, hd), (p_b.0, p_b.1.t()), go_b, 1.0, none)?;
        let mut dq_rows = vec![0f32; nr * hd];
        for (t, (src, dst)) in rows.clone().zip(dq.chunks(hd).zip(dq_rows.chunks_mut(hd))) {
            rotate_head(&rope.tables, rope.layout, t, -1.0, src, dst);
        }
        Ok([dq_rows, dk, dv])
    }
}

impl CustomOp3 for AttentionBwd<'_> {
    fn name(&self) -> &'static str {
        "meft-attention-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
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
        let (h, hd, w, kvh) = (g.dims.heads, g.dims.head_dim, g.dims.qkv_width(), g.dims.kv_heads);
        if go.len() != g.batch * g.seq * h * hd || self.probs.len() != g.batch * h * g.seq * g.keys {
            bail!("attention-bwd: gradient or saved probabilities have the wrong size")
        }
        let units = units(g, &self.fwd.mask);
        let parts: Vec<[Vec<f32>; 3]> = units.par_iter().map(|unit| self.block(g, (qkv, kv, go), unit)).collect::<Result<_>>()?;
        let mut out = vec![0f32; qkv.len() + kv.len()];
        let (gqkv, gkv) = out.split_at_mut(qkv.len());
        for (unit, [dq, _, _]) in units.iter().zip(&parts) {
            let (bi, i) = g.head_of(unit.u);
            for (t, row) in unit.block.rows.clone().zip(dq.chunks(hd)) {
                gqkv[(bi * g.seq + t) * w + i * hd..][..hd].copy_from_slice(row);
            }
        }
        // One destination per (keys or values, batch, KV head), each summing its units' parts.
        // The explicit fill touches the fresh pages by writing: a first read would map the
        // shared zero page, and the write after it would cost a copy-on-write fault with a TLB
        // shootdown across cores (perf: a third of this kernel's time).
        gkv.par_chunks_mut((g.keys * hd).max(1)).enumerate().for_each(|(slot, dst)| {
            dst.fill(0.0);
            let (part, bi, j) = (slot / (g.batch * kvh), (slot / kvh) % g.batch, slot % kvh);
            for (unit, d) in units.iter().zip(&parts) {
                let (ub, ui) = g.head_of(unit.u);
                if ub == bi && ui / g.dims.group() == j {
                    let src = &d[1 + part];
                    dst[unit.block.keys.start * hd..][..src.len()].iter_mut().zip(src).for_each(|(a, b)| *a += b);
                }
            }
        });
        Ok(out)
    }
}
