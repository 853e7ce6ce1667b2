//! Whole-block training ops: the attention half and the FFN half of a decoder layer, each one
//! autograd node with a hand-written backward over the same fused kernels as the per-op path.
//!
//! candle's autograd gives the gradient of every graph node a zero-filled buffer and an add (with
//! a thread-pool barrier per add). Over the nine nodes of a layer that was about a quarter of a
//! frozen-base forward + backward of SmolLM2 at 1 × 256 (perf: page faults, memset, adds and
//! barrier spins). A block op keeps its intermediates (projections, rotated keys/values, attention
//! probabilities) in the op and runs the backward on slices, so a layer costs autograd two nodes.
//!
//! The model takes these ops for training forwards without a KV cache when the adapter hook
//! adapts no projection of the layer ([`meft_core::AdapterHook::adapts_projections`]); the FFN
//! hook still sees its input as a graph tensor. Tests compare values and gradients with the
//! per-op path (`ops::tests`).

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Storage, Tensor, bail};

use super::attention::{Attention, HeadDims, KeepProbs, KvHeads, RopeSpec};
use super::kernels::{CausalMask, RopeTables, f32_data, rms_norm_bwd_rows, rms_norm_rows, swiglu_bwd_rows, swiglu_rows};
use super::linear::{Weight, companion_for, linear_bwd_rows, linear_residual_rows, linear_rows};
use crate::config::RopeLayout;
use meft_core::bf16::Bf16Weight;

/// Frozen f32 weights of the attention half of a layer.
#[derive(Debug, Clone)]
pub struct AttentionBlockWeights {
    /// RMSNorm weight before attention, `(hidden)`.
    pub norm: Tensor,
    /// Packed `[q; k; v]` projection, `((heads + 2·kv_heads)·head_dim, hidden)`.
    pub qkv: Tensor,
    /// Output projection, `(hidden, heads·head_dim)`.
    pub o: Tensor,
    /// bf16 companions of `qkv` and `o` (used only if made from them).
    pub bf16: [Option<Arc<Bf16Weight>>; 2],
}

/// Frozen f32 weights of the FFN half of a layer.
#[derive(Debug, Clone)]
pub struct MlpBlockWeights {
    /// RMSNorm weight before the FFN, `(hidden)`.
    pub norm: Tensor,
    /// Packed `[gate; up]` projection, `(2·intermediate, hidden)`.
    pub gate_up: Tensor,
    /// Down projection, `(hidden, intermediate)`.
    pub down: Tensor,
    /// bf16 companions of `gate_up` and `down` (used only if made from them).
    pub bf16: [Option<Arc<Bf16Weight>>; 2],
}

/// The companions among `bf16` that belong to `weights` (index for index).
fn companions(bf16: &[Option<Arc<Bf16Weight>>; 2], weights: [&Tensor; 2]) -> [Option<Arc<Bf16Weight>>; 2] {
    [companion_for(bf16[0].as_ref(), weights[0]).cloned(), companion_for(bf16[1].as_ref(), weights[1]).cloned()]
}

/// Runs `f` over the contiguous f32 data of CPU `tensors`.
fn with_f32<R, const N: usize>(tensors: [&Tensor; N], op: &str, f: impl FnOnce([&[f32]; N]) -> Result<R>) -> Result<R> {
    let guards = tensors.map(|t| t.storage_and_layout());
    let mut slices: [&[f32]; N] = [&[]; N];
    for (slot, (storage, layout)) in slices.iter_mut().zip(&guards) {
        let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) = (&**storage, layout.contiguous_offsets()) else {
            bail!("{op}: weights must be contiguous f32 CPU tensors")
        };
        *slot = &v[a..b];
    }
    f(slices)
}

/// `(rows, hidden)` of a `(batch, seq, hidden)` block input, checked against the norm weight.
fn block_rows(l: &Layout, norm: &Tensor, op: &str) -> Result<(usize, usize, usize)> {
    let &[b, s, d] = l.dims() else { bail!("{op}: input must be (batch, seq, hidden), got {:?}", l.dims()) };
    if norm.dims() != [d] {
        bail!("{op}: norm weight {:?} does not match hidden size {d}", norm.dims())
    }
    Ok((b, s, d))
}

/// The block input and the gradient of its output, checked to have the same shape.
fn input_and_grad<'a>(op: &str, (s1, l1): (&'a CpuStorage, &Layout), (s2, l2): (&'a CpuStorage, &Layout)) -> Result<[Cow<'a, [f32]>; 2]> {
    let (h, g) = (f32_data(s1, l1, op)?, f32_data(s2, l2, op)?);
    if g.len() != h.len() {
        bail!("{op}: gradient {:?} does not match the input {:?}", l2.dims(), l1.dims())
    }
    Ok([h, g])
}

/// Input gradient of a pre-norm residual block `h + f(rms_norm(h))`: the residual's `g` plus the
/// norm's backward of `dx`, the gradient reaching the norm's output.
fn residual_input_grad(h: &[f32], norm: &[f32], dx: &[f32], g: &[f32], eps: f32) -> Vec<f32> {
    let mut dh = rms_norm_bwd_rows(h, norm, dx, eps);
    dh.iter_mut().zip(g).for_each(|(d, &gi)| *d += gi);
    dh
}

// ------------------------------------------------------------------ attention half

/// `h + o(attention(qkv(rms_norm(h))))` as one node.
///
/// # Shapes
/// `h`: `(batch, seq, hidden)` f32 on the CPU, `seq` equal to the tables' length; result likewise.
#[allow(clippy::too_many_arguments)]
pub fn attention_block(
    h: &Tensor,
    weights: &AttentionBlockWeights,
    eps: f64,
    dims: HeadDims,
    tables: &RopeTables,
    layout: RopeLayout,
    window: Option<usize>,
) -> Result<Tensor> {
    let (_, seq, d) = h.dims3()?;
    let valid_heads = dims.kv_heads > 0 && dims.heads.is_multiple_of(dims.kv_heads) && dims.head_dim == 2 * tables.half;
    if seq != tables.seq || !valid_heads {
        bail!("attention-block: {seq} positions and {dims:?} do not fit rope tables of {} positions, head_dim {}", tables.seq, 2 * tables.half)
    }
    if weights.qkv.dims() != [dims.qkv_width(), d] || weights.o.dims() != [d, dims.heads * dims.head_dim] {
        bail!("attention-block: weights qkv {:?} / o {:?} do not fit hidden {d} and {dims:?}", weights.qkv.dims(), weights.o.dims())
    }
    let rope = RopeSpec { tables: tables.clone(), layout };
    let keep = if h.track_op() { KeepProbs::ForBackward } else { KeepProbs::No };
    let mask = CausalMask { seq: tables.seq, offset: 0, window };
    let attention = Attention { dims, rope: rope.clone(), mask, keep, probs: Mutex::new(None) };
    let mut weights = weights.clone();
    weights.bf16 = companions(&weights.bf16, [&weights.qkv, &weights.o]);
    let op = AttentionBlock { weights, eps: eps as f32, kv: KvHeads { dims, rope }, attention, saved: Mutex::new(None) };
    h.contiguous()?.apply_op1(op)
}

/// Intermediates the attention half keeps for its backward.
struct AttentionSaved {
    qkv: Vec<f32>,
    kv: Vec<f32>,
}

struct AttentionBlock {
    weights: AttentionBlockWeights,
    eps: f32,
    kv: KvHeads,
    attention: Attention,
    saved: Mutex<Option<Arc<AttentionSaved>>>,
}

impl AttentionBlock {
    fn saved(&self) -> Result<Arc<AttentionSaved>> {
        let saved = self.saved.lock().map_err(|_| candle_core::Error::Msg("attention-block: poisoned lock".into()))?.clone();
        saved.ok_or_else(|| candle_core::Error::Msg("attention-block: backward of a forward that kept nothing".into()))
    }
}

impl CustomOp1 for AttentionBlock {
    fn name(&self) -> &'static str {
        "meft-attention-block"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = f32_data(s, l, self.name())?;
        let (b, seq, _) = block_rows(l, &self.weights.norm, self.name())?;
        let w = &self.weights;
        let y = with_f32([&w.norm, &w.qkv, &w.o], self.name(), |[norm, wqkv, wo]| {
            let x = rms_norm_rows(&h, norm, self.eps);
            let qkv = linear_rows(&x, Weight::with(wqkv, w.bf16[0].as_ref()), self.kv.dims.qkv_width())?;
            let kv = self.kv.rows(&qkv, b, seq);
            let out = self.attention.uncached_rows(b, seq, &qkv, &kv)?;
            let y = linear_residual_rows(&out, Weight::with(wo, w.bf16[1].as_ref()), &h, w.o.dim(0)?)?;
            if self.attention.keep == KeepProbs::ForBackward {
                let saved = Arc::new(AttentionSaved { qkv, kv });
                *self.saved.lock().map_err(|_| candle_core::Error::Msg("attention-block: poisoned lock".into()))? = Some(saved);
            }
            Ok(y)
        })?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, h: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(h.apply_op2_no_bwd(&g.contiguous()?, &AttentionBlockBwd { fwd: self })?))
    }
}

/// Gradient of [`AttentionBlock`] w.r.t. its input.
struct AttentionBlockBwd<'a> {
    fwd: &'a AttentionBlock,
}

impl CustomOp2 for AttentionBlockBwd<'_> {
    fn name(&self) -> &'static str {
        "meft-attention-block-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let [h, g] = input_and_grad(self.name(), (s1, l1), (s2, l2))?;
        let (b, seq, _) = block_rows(l1, &self.fwd.weights.norm, self.name())?;
        let (f, saved) = (self.fwd, self.fwd.saved()?);
        let w = &f.weights;
        let dh = with_f32([&w.norm, &w.qkv, &w.o], self.name(), |[norm, wqkv, wo]| {
            let d_out = linear_bwd_rows(&g, Weight::with(wo, w.bf16[1].as_ref()), w.o.dim(0)?)?;
            let mut packed = f.attention.uncached_backward(b, seq, (&saved.qkv, &saved.kv, &d_out))?;
            let (d_qkv, d_kv) = packed.split_at_mut(saved.qkv.len());
            f.kv.backward_into(d_kv, b, d_qkv);
            let dx = linear_bwd_rows(d_qkv, Weight::with(wqkv, w.bf16[0].as_ref()), f.kv.dims.qkv_width())?;
            Ok(residual_input_grad(&h, norm, &dx, &g, f.eps))
        })?;
        Ok((CpuStorage::F32(dh), l1.shape().clone()))
    }
}

// ------------------------------------------------------------------ FFN half

/// `h + down(swiglu(gate_up(rms_norm(h))))` as one node.
///
/// # Shapes
/// `h`: `(batch, seq, hidden)` f32 on the CPU; result likewise.
pub fn mlp_block(h: &Tensor, weights: &MlpBlockWeights, eps: f64) -> Result<Tensor> {
    let d = h.dim(candle_core::D::Minus1)?;
    let f = weights.down.dim(1)?;
    if weights.gate_up.dims() != [2 * f, d] || weights.down.dims() != [d, f] {
        bail!("mlp-block: weights gate_up {:?} / down {:?} do not fit hidden {d}", weights.gate_up.dims(), weights.down.dims())
    }
    let keep = h.track_op();
    let mut weights = weights.clone();
    weights.bf16 = companions(&weights.bf16, [&weights.gate_up, &weights.down]);
    h.contiguous()?.apply_op1(MlpBlock { weights, eps: eps as f32, keep, saved: Mutex::new(None) })
}

struct MlpBlock {
    weights: MlpBlockWeights,
    eps: f32,
    keep: bool,
    /// The packed gate/up projection of the forward.
    saved: Mutex<Option<Arc<Vec<f32>>>>,
}

impl CustomOp1 for MlpBlock {
    fn name(&self) -> &'static str {
        "meft-mlp-block"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = f32_data(s, l, self.name())?;
        block_rows(l, &self.weights.norm, self.name())?;
        let w = &self.weights;
        let y = with_f32([&w.norm, &w.gate_up, &w.down], self.name(), |[norm, wgu, wd]| {
            let x = rms_norm_rows(&h, norm, self.eps);
            let gate_up = linear_rows(&x, Weight::with(wgu, w.bf16[0].as_ref()), w.gate_up.dim(0)?)?;
            let act = swiglu_rows(&gate_up, w.gate_up.dim(0)?);
            let y = linear_residual_rows(&act, Weight::with(wd, w.bf16[1].as_ref()), &h, w.down.dim(0)?)?;
            if self.keep {
                *self.saved.lock().map_err(|_| candle_core::Error::Msg("mlp-block: poisoned lock".into()))? = Some(Arc::new(gate_up));
            }
            Ok(y)
        })?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, h: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(h.apply_op2_no_bwd(&g.contiguous()?, &MlpBlockBwd { fwd: self })?))
    }
}

/// Gradient of [`MlpBlock`] w.r.t. its input.
struct MlpBlockBwd<'a> {
    fwd: &'a MlpBlock,
}

impl CustomOp2 for MlpBlockBwd<'_> {
    fn name(&self) -> &'static str {
        "meft-mlp-block-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let [h, g] = input_and_grad(self.name(), (s1, l1), (s2, l2))?;
        let f = self.fwd;
        let gate_up = f.saved.lock().map_err(|_| candle_core::Error::Msg("mlp-block: poisoned lock".into()))?.clone();
        let Some(gate_up) = gate_up else { bail!("mlp-block: backward of a forward that kept nothing") };
        let w = &f.weights;
        let dh = with_f32([&w.norm, &w.gate_up, &w.down], self.name(), |[norm, wgu, wd]| {
            let packed = w.gate_up.dim(0)?;
            let d_act = linear_bwd_rows(&g, Weight::with(wd, w.bf16[1].as_ref()), w.down.dim(0)?)?;
            let d_gate_up = swiglu_bwd_rows(&gate_up, &d_act, packed);
            let dx = linear_bwd_rows(&d_gate_up, Weight::with(wgu, w.bf16[0].as_ref()), packed)?;
            Ok(residual_input_grad(&h, norm, &dx, &g, f.eps))
        })?;
        Ok((CpuStorage::F32(dh), l1.shape().clone()))
    }
}
