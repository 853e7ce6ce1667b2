//! One decoder layer: pre-norm grouped-query attention and a SwiGLU FFN, each on the residual
//! stream, with the adapter hook called at every projection and beside the FFN.

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};
use meft_core::{AdapterHook, LinearSite};

use super::packed::Packed;
use crate::config::{ModelConfig, RopeLayout};
use crate::ops::{self, AttentionMask, Bf16Weight, FrozenPrecision, HeadDims, OpPath, RopeTables};

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
    pub(crate) dims: HeadDims,
    pub(crate) rope_layout: RopeLayout,
    /// `[q_proj; k_proj; v_proj]`, of which the three fields are views.
    qkv: Packed<3>,
    /// bf16 companion of `o_proj` (bf16 frozen precision).
    o_bf16: Option<Arc<Bf16Weight>>,
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
    /// `[gate_proj; up_proj]`, of which the two fields are views.
    gate_up: Packed<2>,
    /// bf16 companion of `down_proj` (bf16 frozen precision).
    down_bf16: Option<Arc<Bf16Weight>>,
}

/// The bf16 companion of `w` for `precision` (none for f32).
pub(crate) fn companion(w: &Tensor, precision: FrozenPrecision) -> Result<Option<Arc<Bf16Weight>>> {
    Ok(match precision {
        FrozenPrecision::F32 => None,
        FrozenPrecision::Bf16 => Some(Arc::new(Bf16Weight::new(w)?)),
    })
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

/// Projection of `x` by frozen `w` (in bf16 through its companion `bf16`, when given) plus the
/// adapter's additive term at `site`, if any, added onto the residual stream `residual` in the
/// same op when given.
fn project_onto(
    x: &Tensor,
    (w, bf16): (&Tensor, Option<&Arc<Bf16Weight>>),
    residual: Option<&Tensor>,
    layer: usize,
    site: LinearSite,
    ctx: &LayerContext<'_>,
) -> Result<Tensor> {
    let y = match residual {
        Some(h) => ops::linear_residual_with(x, w, h, bf16)?,
        None => ops::linear_with(x, w, bf16)?,
    };
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
    ///
    /// Without a cache, on the fused CPU path in f32, and when the hook adapts no projection of
    /// this layer, each half runs as one whole-block op ([`ops::attention_block`],
    /// [`ops::mlp_block`]); the result and gradients are those of the per-op path.
    pub fn forward(&self, h: &Tensor, ctx: &LayerContext<'_>, cache: Option<&mut Option<KvPair>>) -> Result<Tensor> {
        if cache.is_none() && self.takes_blocks(h, ctx) {
            return self.forward_blocks(h, ctx);
        }
        let (h_mid, x_ffn) = self.attention_residual(h, ctx, cache)?;
        self.ffn_residual(&h_mid, &x_ffn, ctx)
    }

    /// Whether [`DecoderLayer::forward`] without a cache may run the whole-block ops.
    fn takes_blocks(&self, h: &Tensor, ctx: &LayerContext<'_>) -> bool {
        let (a, m) = (&self.self_attn, &self.mlp);
        let weights = [
            &self.input_layernorm,
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &self.post_attention_layernorm,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ];
        // The block ops treat every weight as frozen f32: a trainable weight takes the per-op path.
        let frozen_f32 = weights.iter().all(|w| w.dtype() == DType::F32 && !w.track_op());
        ctx.path.on(h.device()) == OpPath::Fused
            && h.dtype() == DType::F32
            && frozen_f32
            && ctx.mask.offset == 0
            && !ctx.hook.adapts_projections(self.index)
    }

    /// The layer as two whole-block ops, with the FFN hook beside the second.
    fn forward_blocks(&self, h: &Tensor, ctx: &LayerContext<'_>) -> Result<Tensor> {
        let a = &self.self_attn;
        let attn = ops::AttentionBlockWeights {
            norm: self.input_layernorm.clone(),
            qkv: a.qkv.weight_of([&a.q_proj, &a.k_proj, &a.v_proj])?.into_owned(),
            o: a.o_proj.clone(),
            bf16: [a.qkv.bf16.clone(), a.o_bf16.clone()],
        };
        let h_mid = ops::attention_block(h, &attn, self.eps, a.dims, &ctx.rope, a.rope_layout, ctx.mask.window)?;
        if ctx.hook.adapts_ffn_output(self.index) {
            let x_ffn = ops::rms_norm(&h_mid, &self.post_attention_layernorm, self.eps, ctx.path)?;
            return self.ffn_residual(&h_mid, &x_ffn, ctx);
        }
        let m = &self.mlp;
        let mlp = ops::MlpBlockWeights {
            norm: self.post_attention_layernorm.clone(),
            gate_up: m.gate_up.weight_of([&m.gate_proj, &m.up_proj])?.into_owned(),
            down: m.down_proj.clone(),
            bf16: [m.gate_up.bf16.clone(), m.down_bf16.clone()],
        };
        let out = ops::mlp_block(&h_mid, &mlp, self.eps)?;
        let x_ffn = ops::rms_norm(&h_mid, &self.post_attention_layernorm, self.eps, ctx.path)?;
        match ctx.hook.ffn(self.index, &x_ffn)? {
            Some(extra) => out + extra,
            None => Ok(out),
        }
    }

    /// `h + attn(norm(h))`, and the FFN input `post_attention_layernorm(h + attn(...))`.
    ///
    /// # Shapes
    /// `h`: `(batch, seq, hidden)`; both results likewise.
    pub fn attention_residual(&self, h: &Tensor, ctx: &LayerContext<'_>, cache: Option<&mut Option<KvPair>>) -> Result<(Tensor, Tensor)> {
        let x = ops::rms_norm(h, &self.input_layernorm, self.eps, ctx.path)?;
        let h_mid = self.self_attn.forward_onto(&x, Some(h), self.index, ctx, cache)?;
        let x_ffn = ops::rms_norm(&h_mid, &self.post_attention_layernorm, self.eps, ctx.path)?;
        Ok((h_mid, x_ffn))
    }

    /// One decoding step of `n` independent sequences (see [`SelfAttention`]'s row form): row `i`
    /// of `h` is the newest position of sequence `i`, at `ctxs[i]`'s offset, over cache entry
    /// `entries[i]`. Equals [`DecoderLayer::forward`] of each row alone with its cache, up to
    /// float rounding, when the hook treats rows independently.
    ///
    /// # Shapes
    /// `h`: `(n, 1, hidden)`; result likewise; `ctxs` and `entries` have `n` items.
    pub fn forward_rows(&self, h: &Tensor, ctxs: &[LayerContext<'_>], entries: &mut [&mut Option<KvPair>]) -> Result<Tensor> {
        let ctx = &ctxs[0];
        let x = ops::rms_norm(h, &self.input_layernorm, self.eps, ctx.path)?;
        let h_mid = self.self_attn.forward_rows_onto(&x, h, self.index, ctxs, entries)?;
        let x_ffn = ops::rms_norm(&h_mid, &self.post_attention_layernorm, self.eps, ctx.path)?;
        self.ffn_residual(&h_mid, &x_ffn, ctx)
    }

    /// Builds (`Bf16`) or drops (`F32`) the bf16 companions of the layer's frozen projections.
    pub fn set_precision(&mut self, precision: FrozenPrecision) -> Result<()> {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        a.qkv.set_precision(precision)?;
        a.o_bf16 = companion(&a.o_proj, precision)?;
        m.gate_up.set_precision(precision)?;
        m.down_bf16 = companion(&m.down_proj, precision)?;
        Ok(())
    }

    /// `h_mid + y + hook.ffn_output(y) + hook.ffn(x_ffn)` with `y = mlp(x_ffn)` (the serial term
    /// only where the hook adapts the FFN output).
    ///
    /// # Shapes
    /// `h_mid`, `x_ffn`: `(batch, seq, hidden)`; result likewise.
    pub fn ffn_residual(&self, h_mid: &Tensor, x_ffn: &Tensor, ctx: &LayerContext<'_>) -> Result<Tensor> {
        let out = if ctx.hook.adapts_ffn_output(self.index) {
            let y = self.mlp.forward(x_ffn, self.index, ctx)?;
            let y = match ctx.hook.ffn_output(self.index, &y)? {
                Some(extra) => (y + extra)?,
                None => y,
            };
            (h_mid + y)?
        } else {
            self.mlp.forward_onto(x_ffn, Some(h_mid), self.index, ctx)?
        };
        match ctx.hook.ffn(self.index, x_ffn)? {
            Some(extra) => out + extra,
            None => Ok(out),
        }
    }
}

impl Mlp {
    /// The FFN of frozen `(out, in)` weights.
    pub fn new(gate_proj: Tensor, up_proj: Tensor, down_proj: Tensor) -> Result<Self> {
        let (gate_up, [gate_proj, up_proj]) = Packed::new([gate_proj, up_proj])?;
        Ok(Self { gate_proj, up_proj, down_proj, gate_up, down_bf16: None })
    }

    /// `down(silu(gate(x)) ∘ up(x))`; gate and up are one matmul of the packed weights.
    ///
    /// # Shapes
    /// `x`: `(batch, seq, hidden)`; result likewise.
    pub fn forward(&self, x: &Tensor, layer: usize, ctx: &LayerContext<'_>) -> Result<Tensor> {
        self.forward_onto(x, None, layer, ctx)
    }

    /// [`Mlp::forward`] added onto `residual` by the down projection itself, when given.
    fn forward_onto(&self, x: &Tensor, residual: Option<&Tensor>, layer: usize, ctx: &LayerContext<'_>) -> Result<Tensor> {
        let sites = [(&self.gate_proj, LinearSite::Gate), (&self.up_proj, LinearSite::Up)];
        let gate_up = self.gate_up.project(x, sites, layer, ctx)?;
        let act = ops::swiglu(&gate_up, ctx.path)?;
        project_onto(&act, (&self.down_proj, self.down_bf16.as_ref()), residual, layer, LinearSite::Down, ctx)
    }
}

impl SelfAttention {
    /// Grouped-query causal self-attention with RoPE.
    ///
    /// Q, K and V are one matmul of the packed weights; keys/values are shared by the query heads
    /// of their group without being repeated.
    ///
    /// # Shapes
    /// `x`: `(batch, seq, hidden)`; result likewise.
    pub fn forward(&self, x: &Tensor, layer: usize, ctx: &LayerContext<'_>, cache: Option<&mut Option<KvPair>>) -> Result<Tensor> {
        self.forward_onto(x, None, layer, ctx, cache)
    }

    /// [`SelfAttention::forward`] added onto `residual` by the output projection, when given.
    fn forward_onto(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        layer: usize,
        ctx: &LayerContext<'_>,
        cache: Option<&mut Option<KvPair>>,
    ) -> Result<Tensor> {
        let qkv = self.project_qkv(x, layer, ctx)?;
        let out = self.attend(&qkv, ctx, cache)?;
        project_onto(&out, (&self.o_proj, self.o_bf16.as_ref()), residual, layer, LinearSite::Output, ctx)
    }

    /// Q, K and V of `x` as one matmul of the packed weights, with the hook's terms.
    fn project_qkv(&self, x: &Tensor, layer: usize, ctx: &LayerContext<'_>) -> Result<Tensor> {
        let sites = [(&self.q_proj, LinearSite::Query), (&self.k_proj, LinearSite::Key), (&self.v_proj, LinearSite::Value)];
        self.qkv.project(x, sites, layer, ctx)
    }

    /// Attention of the packed `qkv` at `ctx`'s positions over the cached keys/values and its
    /// own, extending the cache entry when given; the result is the output projection's input.
    fn attend(&self, qkv: &Tensor, ctx: &LayerContext<'_>, cache: Option<&mut Option<KvPair>>) -> Result<Tensor> {
        let mut kv = ops::kv_heads(qkv, &ctx.rope, self.rope_layout, self.dims, ctx.path)?;
        if let Some(entry) = cache {
            if let Some((k_old, v_old)) = entry.as_ref() {
                kv = Tensor::cat(&[&Tensor::stack(&[k_old, v_old], 0)?, &kv], 3)?;
            }
            *entry = Some((kv.get(0)?, kv.get(1)?));
        }
        ops::attention(qkv, &kv, &ctx.rope, self.rope_layout, self.dims, ctx.mask, ctx.path)
    }

    /// One new position for each of `n` independent sequences: row `i` of `x` attends at
    /// `ctxs[i]`'s position over `entries[i]` (extended by it); the projections run once over
    /// all rows (the hook sees the `n` rows together, with `ctxs[0]`'s hook and path).
    ///
    /// # Shapes
    /// `x`, `residual`: `(n, 1, hidden)`; result likewise.
    fn forward_rows_onto(
        &self,
        x: &Tensor,
        residual: &Tensor,
        layer: usize,
        ctxs: &[LayerContext<'_>],
        entries: &mut [&mut Option<KvPair>],
    ) -> Result<Tensor> {
        let qkv = self.project_qkv(x, layer, &ctxs[0])?;
        let mut outs = Vec::with_capacity(ctxs.len());
        for (i, (ctx, entry)) in ctxs.iter().zip(entries.iter_mut()).enumerate() {
            outs.push(self.attend(&qkv.narrow(0, i, 1)?, ctx, Some(&mut **entry))?);
        }
        let out = Tensor::cat(&outs, 0)?;
        project_onto(&out, (&self.o_proj, self.o_bf16.as_ref()), Some(residual), layer, LinearSite::Output, &ctxs[0])
    }
}

impl SelfAttention {
    /// The attention block of frozen `(out, in)` weights with `cfg`'s head layout.
    pub fn new(q_proj: Tensor, k_proj: Tensor, v_proj: Tensor, o_proj: Tensor, cfg: &ModelConfig) -> Result<Self> {
        let dims = HeadDims { heads: cfg.num_attention_heads, kv_heads: cfg.num_key_value_heads, head_dim: cfg.head_dim };
        let (qkv, [q_proj, k_proj, v_proj]) = Packed::new([q_proj, k_proj, v_proj])?;
        Ok(Self { q_proj, k_proj, v_proj, o_proj, dims, rope_layout: cfg.rope_layout, qkv, o_bf16: None })
    }

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
