//! Building blocks of the decoder, each in two forms beside each other: a fused kernel
//! (`op`, a custom op with a hand-written backward, [`kernels`]) and a reference built from basic
//! differentiable candle ops (`op_slow`). [`OpPath`] picks one at run time; tests compare both,
//! values and gradients.
//!
//! candle-nn's fused softmax/rms_norm/rope are never used: they have no backward and would silently
//! cut the gradient flowing from the loss to the adapters.

mod attention;
mod block;
mod fastexp;
mod gemm;
mod head_loss;
mod kernels;
mod linear;

use std::sync::Mutex;

use candle_core::{D, DType, Device, Result, Tensor};

pub use attention::HeadDims;
use attention::{Attention, KeepProbs, KvHeads, RopeSpec};
pub use block::{AttentionBlockWeights, MlpBlockWeights, attention_block, mlp_block};
pub use kernels::RopeTables;
use kernels::{CausalMask, CrossEntropy, LogitRows, MaskedSoftmax, RmsNorm, Rope, SiluMul, SwiGlu};
use linear::{FrozenLinear, FrozenLinearGrad, FrozenLinearResidual};
pub use meft_core::bf16::{Bf16Weight, FrozenPrecision, matmul_slow as bf16_matmul_slow};

use crate::config::RopeLayout;

/// Which implementation of the elementwise/normalisation ops a forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpPath {
    /// Fused CPU kernels with hand-written backward (fast; CPU only, falls back to reference elsewhere).
    #[default]
    Fused,
    /// Compositions of basic candle ops, differentiated by candle's autograd (slow, obviously right).
    Reference,
}

impl OpPath {
    /// The path to take for tensors on `device`: fused kernels exist for the CPU only.
    pub(crate) fn on(self, device: &Device) -> Self {
        if device.is_cpu() { self } else { OpPath::Reference }
    }
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * w`.
///
/// # Shapes
/// `x`: `(..., d)`, `w`: `(d)`; result like `x`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, path: OpPath) -> Result<Tensor> {
    match path.on(x.device()) {
        OpPath::Fused => x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 }),
        OpPath::Reference => rms_norm_slow(x, w, eps),
    }
}

/// Reference form of [`rms_norm`].
pub fn rms_norm_slow(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)
}

/// cos/sin tables of rotary embeddings for positions `offset..offset + seq`.
pub fn rope_tables(head_dim: usize, theta: f64, offset: usize, seq: usize) -> RopeTables {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(seq * half);
    let mut sin = Vec::with_capacity(seq * half);
    for pos in offset..offset + seq {
        for i in 0..half {
            // f32 inverse frequency as in the reference implementation, angle in f64.
            let inv_freq = (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32;
            let angle = pos as f64 * inv_freq as f64;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    RopeTables { cos: cos.into(), sin: sin.into(), seq, half }
}

/// Rotary position embedding applied to the heads of `x`.
///
/// # Shapes
/// `x`: `(batch, seq, heads, head_dim)` with `seq` equal to the tables' length; result like `x`.
pub fn rope(x: &Tensor, tables: &RopeTables, layout: RopeLayout, path: OpPath) -> Result<Tensor> {
    match path.on(x.device()) {
        OpPath::Fused => {
            let heads = x.dim(2)?;
            x.contiguous()?.apply_op1(Rope { tables: tables.clone(), layout, heads, sign: 1.0 })
        }
        OpPath::Reference => rope_slow(x, tables, layout),
    }
}

/// Reference form of [`rope`].
pub fn rope_slow(x: &Tensor, tables: &RopeTables, layout: RopeLayout) -> Result<Tensor> {
    let (b, s, h, d) = x.dims4()?;
    let half = tables.half;
    let table = |v: &[f32]| Tensor::from_slice(v, (s, 1, half), x.device())?.to_dtype(x.dtype());
    let (cos, sin) = (table(&tables.cos)?, table(&tables.sin)?);
    match layout {
        RopeLayout::RotateHalf => {
            let (x1, x2) = (x.narrow(3, 0, half)?, x.narrow(3, half, half)?);
            let a = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
            let c = (x1.broadcast_mul(&sin)? + x2.broadcast_mul(&cos)?)?;
            Tensor::cat(&[a, c], 3)
        }
        RopeLayout::Interleaved => {
            let xr = x.reshape((b, s, h, half, 2))?;
            let (x1, x2) = (xr.narrow(4, 0, 1)?, xr.narrow(4, 1, 1)?);
            let (cos, sin) = (cos.unsqueeze(3)?, sin.unsqueeze(3)?);
            let a = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
            let c = (x1.broadcast_mul(&sin)? + x2.broadcast_mul(&cos)?)?;
            Tensor::cat(&[a, c], 4)?.reshape((b, s, h, d))
        }
    }
}

/// Attention mask of a decoder: causal, optionally restricted to a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionMask {
    /// Query positions in this call.
    pub seq: usize,
    /// Absolute position of the first query (tokens already in the KV cache).
    pub offset: usize,
    /// Sliding window (query at `i` sees keys `j` with `i − window < j ≤ i`); `None` = full.
    pub window: Option<usize>,
}

impl AttentionMask {
    fn causal(self) -> CausalMask {
        CausalMask { seq: self.seq, offset: self.offset, window: self.window }
    }
}

/// Softmax over the last dimension of attention scores under `mask`.
///
/// # Shapes
/// `scores`: `(..., k·seq, keys)` where row `r` is query `r mod seq` (several heads of a GQA
/// group may be stacked along the row dimension); result like `scores`.
pub fn masked_softmax(scores: &Tensor, mask: AttentionMask, path: OpPath) -> Result<Tensor> {
    match path.on(scores.device()) {
        OpPath::Fused => scores.contiguous()?.apply_op1(MaskedSoftmax { mask: mask.causal() }),
        OpPath::Reference => masked_softmax_slow(scores, mask),
    }
}

/// Reference form of [`masked_softmax`]: an additive −∞ mask and softmax from basic ops.
pub fn masked_softmax_slow(scores: &Tensor, mask: AttentionMask) -> Result<Tensor> {
    let dims = scores.dims().to_vec();
    let keys = *dims.last().unwrap_or(&1);
    let causal = mask.causal();
    let mut bias = vec![f32::NEG_INFINITY; mask.seq * keys];
    for r in 0..mask.seq {
        let (a, b) = causal.visible(r, keys);
        bias[r * keys + a..r * keys + b].iter_mut().for_each(|v| *v = 0.0);
    }
    let bias = Tensor::from_vec(bias, (mask.seq, keys), scores.device())?.to_dtype(scores.dtype())?;
    let blocks = scores.elem_count() / (mask.seq * keys);
    let x = scores.reshape((blocks, mask.seq, keys))?.broadcast_add(&bias)?;
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.reshape(dims)
}

/// SwiGLU activation `silu(gate) ∘ up`.
///
/// # Shapes
/// `gate`, `up`: same shape; result likewise.
pub fn silu_mul(gate: &Tensor, up: &Tensor, path: OpPath) -> Result<Tensor> {
    match path.on(gate.device()) {
        OpPath::Fused => gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul),
        OpPath::Reference => silu_mul_slow(gate, up),
    }
}

/// Reference form of [`silu_mul`].
pub fn silu_mul_slow(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// SwiGLU of a packed projection: `silu(x[..., :f]) ∘ x[..., f:]`.
///
/// # Shapes
/// `x`: `(..., 2f)` (gate columns, then up columns); result `(..., f)`.
pub fn swiglu(x: &Tensor, path: OpPath) -> Result<Tensor> {
    match path.on(x.device()) {
        OpPath::Fused => x.contiguous()?.apply_op1(SwiGlu),
        OpPath::Reference => swiglu_slow(x),
    }
}

/// Reference form of [`swiglu`].
pub fn swiglu_slow(x: &Tensor) -> Result<Tensor> {
    let f = x.dim(D::Minus1)? / 2;
    silu_mul_slow(&x.narrow(D::Minus1, 0, f)?, &x.narrow(D::Minus1, f, f)?)
}

/// Rotated keys and the values of a packed `qkv` projection, ready for [`attention`] (and for
/// the KV cache).
///
/// # Shapes
/// `qkv`: `(batch, seq, (heads + 2·kv_heads)·head_dim)` (queries, keys, values), `seq` equal to
/// the tables' length; result `(2, batch, kv_heads, seq, head_dim)`.
pub fn kv_heads(qkv: &Tensor, tables: &RopeTables, layout: RopeLayout, dims: HeadDims, path: OpPath) -> Result<Tensor> {
    match path.on(qkv.device()) {
        OpPath::Fused => {
            let rope = RopeSpec { tables: tables.clone(), layout };
            qkv.contiguous()?.apply_op1(KvHeads { dims, rope })
        }
        OpPath::Reference => kv_heads_slow(qkv, tables, layout, dims),
    }
}

/// Reference form of [`kv_heads`].
pub fn kv_heads_slow(qkv: &Tensor, tables: &RopeTables, layout: RopeLayout, dims: HeadDims) -> Result<Tensor> {
    let (b, s, _) = qkv.dims3()?;
    let HeadDims { heads: h, kv_heads: kvh, head_dim: hd } = dims;
    let k = qkv.narrow(2, h * hd, kvh * hd)?.reshape((b, s, kvh, hd))?;
    let v = qkv.narrow(2, (h + kvh) * hd, kvh * hd)?.reshape((b, s, kvh, hd))?;
    let k = rope_slow(&k, tables, layout)?.transpose(1, 2)?;
    Tensor::stack(&[k, v.transpose(1, 2)?], 0)?.contiguous()
}

/// Causal grouped-query attention of the queries in `qkv` over the keys/values `kv`.
///
/// Queries are rotated with `tables` (positions `mask.offset..`) and scaled by `1/√head_dim`;
/// query head `i` reads KV head `i / (heads / kv_heads)`.
///
/// # Shapes
/// `qkv`: `(batch, seq, (heads + 2·kv_heads)·head_dim)`; `kv`: `(2, batch, kv_heads,
/// mask.offset + seq, head_dim)` (see [`kv_heads`]); result `(batch, seq, heads·head_dim)`.
pub fn attention(
    qkv: &Tensor,
    kv: &Tensor,
    tables: &RopeTables,
    layout: RopeLayout,
    dims: HeadDims,
    mask: AttentionMask,
    path: OpPath,
) -> Result<Tensor> {
    match path.on(qkv.device()) {
        OpPath::Fused => {
            let keep = if qkv.track_op() || kv.track_op() { KeepProbs::ForBackward } else { KeepProbs::No };
            let rope = RopeSpec { tables: tables.clone(), layout };
            let op = Attention { dims, rope, mask: mask.causal(), keep, probs: Mutex::new(None) };
            qkv.contiguous()?.apply_op2(&kv.contiguous()?, op)
        }
        OpPath::Reference => attention_slow(qkv, kv, tables, layout, dims, mask),
    }
}

/// Reference form of [`attention`]: query heads of one KV group stacked along the rows, one
/// batched matmul per KV head, the additive-mask softmax from basic ops.
pub fn attention_slow(qkv: &Tensor, kv: &Tensor, tables: &RopeTables, layout: RopeLayout, dims: HeadDims, mask: AttentionMask) -> Result<Tensor> {
    let (b, s, _) = qkv.dims3()?;
    let HeadDims { heads: h, kv_heads: kvh, head_dim: hd } = dims;
    let q = rope_slow(&qkv.narrow(2, 0, h * hd)?.reshape((b, s, h, hd))?, tables, layout)?;
    // (b, kvh, group·s, hd): heads h = kv·group + g are adjacent, so this is a plain reshape.
    let q = (q.transpose(1, 2)?.contiguous()? * (1.0 / (hd as f64).sqrt()))?.reshape((b, kvh, (h / kvh) * s, hd))?;
    let (k, v) = (kv.get(0)?, kv.get(1)?);
    let probs = masked_softmax_slow(&q.matmul(&k.t()?)?, mask)?;
    probs.matmul(&v)?.reshape((b, h, s, hd))?.transpose(1, 2)?.reshape((b, s, h * hd))
}

/// `x·Wᵀ` for a frozen weight `W` stored `(out, in)` as in HF checkpoints.
///
/// When `x` is part of an autograd graph and `W` is not, the backward sends `g·W` to `x` and
/// skips the (large, unused) weight gradient that candle's matmul backward would compute. A weight
/// that is itself trainable (a `Var`, or derived from one) takes the plain matmul.
///
/// # Shapes
/// `x`: `(..., in)`, `w`: `(out, in)`; result `(..., out)`.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    linear_with(x, w, None)
}

/// [`linear`] computed in bf16 by `bf16`, the companion of `w`, when it was made from `w` and
/// `x` is f32 on the CPU (with or without a graph); [`linear`] otherwise.
///
/// # Shapes
/// As [`linear`].
pub fn linear_with(x: &Tensor, w: &Tensor, bf16: Option<&std::sync::Arc<Bf16Weight>>) -> Result<Tensor> {
    let x = x.contiguous()?;
    let bf16 = linear::companion_for(bf16, w).filter(|_| x.dtype() == DType::F32 && x.device().is_cpu() && !w.track_op());
    if let Some(b) = bf16 {
        return x.apply_op2(&w.contiguous()?, FrozenLinear { bf16: Some(b.clone()) });
    }
    if !x.track_op() || w.track_op() || !x.device().is_cpu() {
        return linear_slow(&x, w);
    }
    if x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        return x.apply_op2(&w.contiguous()?, FrozenLinear { bf16: None });
    }
    let y = x.detach().broadcast_matmul(&w.t()?)?;
    x.apply_op2(&y, FrozenLinearGrad { weight: w.clone() })
}

/// `h + x·Wᵀ` for a frozen weight `W` (a projection back onto the residual stream): one graph
/// node instead of a linear and an add. Same gradients as [`linear`] plus the identity to `h`.
///
/// # Shapes
/// `x`: `(..., in)`, `w`: `(out, in)`, `h`: `(..., out)`; result like `h`.
pub fn linear_residual(x: &Tensor, w: &Tensor, h: &Tensor) -> Result<Tensor> {
    linear_residual_with(x, w, h, None)
}

/// [`linear_residual`] with the product computed in bf16 by `bf16` when it is `w`'s companion.
///
/// # Shapes
/// As [`linear_residual`].
pub fn linear_residual_with(x: &Tensor, w: &Tensor, h: &Tensor, bf16: Option<&std::sync::Arc<Bf16Weight>>) -> Result<Tensor> {
    let f32_cpu = x.device().is_cpu() && [x.dtype(), w.dtype(), h.dtype()].iter().all(|&d| d == DType::F32);
    if !f32_cpu || w.track_op() {
        return linear_residual_slow(x, w, h);
    }
    let bf16 = linear::companion_for(bf16, w).cloned();
    x.contiguous()?.apply_op3(&w.contiguous()?, &h.contiguous()?, FrozenLinearResidual { bf16 })
}

/// Reference form of [`linear_residual`].
pub fn linear_residual_slow(x: &Tensor, w: &Tensor, h: &Tensor) -> Result<Tensor> {
    h + linear_slow(x, w)?
}

/// Reference form of [`linear`]: the plain matmul (computes the weight gradient too).
pub fn linear_slow(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.broadcast_matmul(&w.t()?)
}

/// Per-row negative log-likelihood of `targets` under `logits`.
///
/// # Shapes
/// `logits`: `(rows, vocab)`, `targets`: `(rows)` u32; result `(rows)` in the logits' dtype.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, path: OpPath) -> Result<Tensor> {
    match path.on(logits.device()) {
        OpPath::Fused => logits.contiguous()?.apply_op2(&targets.contiguous()?, CrossEntropy { rows: LogitRows::All }),
        OpPath::Reference => cross_entropy_slow(logits, targets),
    }
}

/// Reference form of [`cross_entropy`]: `logsumexp(z) − z[target]`.
pub fn cross_entropy_slow(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let picked = logits.gather(&targets.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?.squeeze(1)?;
    logits.log_sum_exp(D::Minus1)? - picked
}

/// Per-position negative log-likelihood of the next token: position `t` of each sequence is
/// scored against `tokens[t + 1]`; the last position has no target.
///
/// The fused form reads the logits in place, so the backward writes one `(batch, seq, vocab)`
/// gradient instead of going through a narrow and a reshape (each a vocabulary-sized copy).
///
/// # Shapes
/// `logits`: `(batch, seq, vocab)` with `seq ≥ 2`, `tokens`: `(batch, seq)`; result
/// `(batch·(seq − 1))`, sequence-major.
pub fn next_token_nll(logits: &Tensor, tokens: &Tensor, path: OpPath) -> Result<Tensor> {
    let (_, s, _) = logits.dims3()?;
    let targets = tokens.narrow(1, 1, s - 1)?.flatten_all()?.to_dtype(DType::U32)?;
    match path.on(logits.device()) {
        OpPath::Fused => logits.contiguous()?.apply_op2(&targets, CrossEntropy { rows: LogitRows::AllButLastOf(s) }),
        OpPath::Reference => next_token_nll_slow(logits, tokens),
    }
}

/// [`next_token_nll`] of the logits `x·Wᵀ` of the final-normed hidden states `x` and a head `w`
/// `(vocab, hidden)`: on the fused path with a frozen f32 head, one node that never hands
/// autograd the vocabulary-sized logits ([`head_loss`]); otherwise [`linear`] then
/// [`next_token_nll`].
///
/// # Shapes
/// `x`: `(batch, seq, hidden)` with `seq ≥ 2`, `tokens`: `(batch, seq)`; result
/// `(batch·(seq − 1))`, sequence-major.
pub fn head_next_token_nll(x: &Tensor, w: &Tensor, tokens: &Tensor, path: OpPath) -> Result<Tensor> {
    head_next_token_nll_with(x, w, None, tokens, path)
}

/// [`head_next_token_nll`] with the head's products in bf16 by `bf16` when it is `w`'s companion.
///
/// # Shapes
/// As [`head_next_token_nll`].
pub fn head_next_token_nll_with(x: &Tensor, w: &Tensor, bf16: Option<&std::sync::Arc<Bf16Weight>>, tokens: &Tensor, path: OpPath) -> Result<Tensor> {
    let fused = path.on(x.device()) == OpPath::Fused && x.dtype() == DType::F32 && w.dtype() == DType::F32 && !w.track_op();
    if !fused {
        return next_token_nll(&linear_with(x, w, bf16)?, tokens, path);
    }
    let (_, s, _) = x.dims3()?;
    let targets = tokens.narrow(1, 1, s - 1)?.flatten_all()?.to_dtype(DType::U32)?;
    let op = head_loss::HeadNll::new(LogitRows::AllButLastOf(s), x.track_op(), linear::companion_for(bf16, w).cloned());
    x.contiguous()?.apply_op3(&w.contiguous()?, &targets, op)
}

/// Reference form of [`next_token_nll`]: drop the last position, flatten, [`cross_entropy_slow`].
pub fn next_token_nll_slow(logits: &Tensor, tokens: &Tensor) -> Result<Tensor> {
    let (b, s, v) = logits.dims3()?;
    let z = logits.narrow(1, 0, s - 1)?.reshape((b * (s - 1), v))?;
    let t = tokens.narrow(1, 1, s - 1)?.flatten_all()?.to_dtype(DType::U32)?;
    cross_entropy_slow(&z, &t)
}

#[cfg(test)]
mod tests;
