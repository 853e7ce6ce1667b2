//! One decoder layer: pre-norm grouped-query attention and a SwiGLU FFN, each on the residual
//! stream, with the adapter hook called at every projection and beside the FFN.

use candle_core::{Result, Tensor};
use meft_core::{AdapterHook, LinearSite};

use crate::ops::{self, AttentionMask, OpPath, RopeTables};
use crate::config::{ModelConfig, RopeLayout};

/// Everything a layer needs besides its weights for one forward call.
pub struct LayerContext<'a> {
    /// Adapters to call at the hook sites.
    pub hook: &'a dyn AdapterHook,
    /// Fused kernels or reference ops.
    pub path: OpPath,
    /// Rotary tables for the positions of this call.
    pub rope: RopeTables,
    /// Causal (sliding-window) mask for this call.
    pub mask: AttentionMask,
}

/// Attention projections (`self_attn.*` in HF names), weights stored `(out, in)`.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    /// `(heads·head_dim, hidden)`.
    pub q_proj: Tensor,
    /// `(kv_heads·head_dim, hidden)`.
    pub k_proj: Tensor,
    /// `(kv_heads·head_dim, hidden)`.
    pub v_proj: Tensor,
    /// `(hidden, heads·head_dim)`.
    pub o_proj: Tensor,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) rope_layout: RopeLayout,
}

/// SwiGLU FFN (`mlp.*` in HF names).
#[derive(Debug, Clone)]
pub struct Mlp {
    /// `(intermediate, hidden)`.
    pub gate_proj: Tensor,
    /// `(intermediate, hidden)`.
    pub up_proj: Tensor,
    /// `(hidden, intermediate)`.
    pub down_proj: Tensor,
}

/// One decoder layer (`model.layers.N.*`).
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    /// Index of the layer, passed to the adapter hook.
    pub index: usize,
    /// RMSNorm weight before attention.
    pub input_layernorm: Tensor,
    /// Attention block.
    pub self_attn: SelfAttention,
    /// RMSNorm weight before the FFN.
    pub post_attention_layernorm: Tensor,
    /// FFN block.
    pub mlp: Mlp,
    pub(crate) eps: f64,
}

/// Projection of `x` by frozen `w` plus the adapter's additive term at `site`, if any.
fn project(x: &Tensor, w: &Tensor, layer: usize, site: LinearSite, ctx: &LayerContext<'_>) -> Result<Tensor> {
    let y = ops::linear(x, w)?;
    match ctx.hook.linear(layer, site, x)? {
        Some(extra) => y + extra,
        None => Ok(y),
    }
}

/// Keys and values of earlier positions, `(batch, kv_heads, positions, head_dim)` each.
pub type KvPair = (Tensor, Tensor);

impl DecoderLayer {
    /// Full layer: attention residual, then FFN residual.
    ///
    /// # Shapes
    /// `h`: `(batch, seq, hidden)`; result likewise. The cache entry, when given, holds earlier
    /// keys/values and is extended by this call's.
    pub fn forward(&self, h: &Tensor, ctx: &LayerContext<'_>, cache: Option<&mut Option<KvPair>>) -> Result<Tensor> {
        let (h_mid, x_ffn) = self.attention_residual(h, ctx, cache)?;
        self.ffn_residual(&h_mid, &x_ffn, ctx)
    }

    /// `h + attn(norm(h))`, and the FFN input `post_attention_layernorm(h + attn(...))`.
    ///
    /// # Shapes
    /// `h`: `(batch, seq, hidden)`; both results likewise.
    pub fn attention_residual(
        &self,
        h: &Tensor,
        ctx: &LayerContext<'_>,
        cache: Option<&mut Option<KvPair>>,
    ) -> Result<(Tensor, Tensor)> {
        let x = ops::rms_norm(h, &self.input_layernorm, self.eps, ctx.path)?;
        let h_mid = (h + self.self_attn.forward(&x, self.index, ctx, cache)?)?;
        let x_ffn = ops::rms_norm(&h_mid, &self.post_attention_layernorm, self.eps, ctx.path)?;
        Ok((h_mid, x_ffn))
    }

    /// `h_mid + mlp(x_ffn) + hook.ffn(x_ffn)`.
    ///
    /// # Shapes
    /// `h_mid`, `x_ffn`: `(batch, seq, hidden)`; result likewise.
    pub fn ffn_residual(&self, h_mid: &Tensor, x_ffn: &Tensor, ctx: &LayerContext<'_>) -> Result<Tensor> {
        let mut out = self.mlp.forward(x_ffn, self.index, ctx)?;
        if let Some(extra) = ctx.hook.ffn(self.index, x_ffn)? {
            out = (out + extra)?;
        }
        h_mid + out
    }
}

impl Mlp {
    /// `down(silu(gate(x)) ∘ up(x))`.
    ///
    /// # Shapes
    /// `x`: `(batch, seq, hidden)`; result likewise.
    pub fn forward(&self, x: &Tensor, layer: usize, ctx: &LayerContext<'_>) -> Result<Tensor> {
        let gate = project(x, &self.gate_proj, layer, LinearSite::Gate, ctx)?;
        let up = project(x, &self.up_proj, layer, LinearSite::Up, ctx)?;
        let act = ops::silu_mul(&gate, &up, ctx.path)?;
        project(&act, &self.down_proj, layer, LinearSite::Down, ctx)
    }
}

impl SelfAttention {
    /// Grouped-query causal self-attention with RoPE.
    ///
    /// Query heads of one KV group are stacked along the row dimension, so each KV head is used by
    /// one batched matmul without materialising repeated keys/values.
    ///
    /// # Shapes
    /// `x`: `(batch, seq, hidden)`; result likewise.
    pub fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        ctx: &LayerContext<'_>,
        cache: Option<&mut Option<KvPair>>,
    ) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let (h, kvh, hd) = (self.heads, self.kv_heads, self.head_dim);
        let q = project(x, &self.q_proj, layer, LinearSite::Query, ctx)?.reshape((b, s, h, hd))?;
        let k = project(x, &self.k_proj, layer, LinearSite::Key, ctx)?.reshape((b, s, kvh, hd))?;
        let v = project(x, &self.v_proj, layer, LinearSite::Value, ctx)?.reshape((b, s, kvh, hd))?;
        let q = ops::rope(&q, &ctx.rope, self.rope_layout, ctx.path)?;
        let k = ops::rope(&k, &ctx.rope, self.rope_layout, ctx.path)?;
        // (b, kvh, group·s, hd): heads h = kv·group + g are adjacent, so this is a plain reshape.
        let q = (q.transpose(1, 2)?.contiguous()? * (1.0 / (hd as f64).sqrt()))?.reshape((b, kvh, (h / kvh) * s, hd))?;
        let mut k = k.transpose(1, 2)?.contiguous()?;
        let mut v = v.transpose(1, 2)?.contiguous()?;
        if let Some(entry) = cache {
            if let Some((k_old, v_old)) = entry.as_ref() {
                k = Tensor::cat(&[k_old, &k], 2)?;
                v = Tensor::cat(&[v_old, &v], 2)?;
            }
            *entry = Some((k.clone(), v.clone()));
        }
        let scores = q.matmul(&k.t()?)?;
        let probs = ops::masked_softmax(&scores, ctx.mask, ctx.path)?;
        let out = probs.matmul(&v)?.reshape((b, h, s, hd))?.transpose(1, 2)?.reshape((b, s, h * hd))?;
        project(&out, &self.o_proj, layer, LinearSite::Output, ctx)
    }
}

impl SelfAttention {
    pub(crate) fn shapes(cfg: &ModelConfig) -> [(&'static str, Vec<usize>); 4] {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        [
            ("q_proj", vec![cfg.num_attention_heads * hd, d]),
            ("k_proj", vec![cfg.num_key_value_heads * hd, d]),
            ("v_proj", vec![cfg.num_key_value_heads * hd, d]),
            ("o_proj", vec![d, cfg.num_attention_heads * hd]),
        ]
    }
}
