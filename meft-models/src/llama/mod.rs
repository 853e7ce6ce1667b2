//! LLaMA and Mistral decoders in one implementation.
//!
//! LLaMA: Touvron et al., "LLaMA: Open and Efficient Foundation Language Models" (2023), and
//! "Llama 2" (2023): pre-RMSNorm, SwiGLU FFN, rotary position embeddings (Su et al., RoFormer),
//! grouped-query attention (Ainslie et al., 2023). Mistral: Jiang et al., "Mistral 7B" (2023): the
//! same block with sliding-window attention. [`ModelConfig`] selects between them; the model code
//! never branches on the architecture beyond the attention mask.
//!
//! Two forwards share the layers: a training forward ([`Llama::forward`]) that is differentiable
//! end to end (frozen base weights are plain tensors, gradients reach the activations and the
//! adapters), and an inference forward with a [`KvCache`] ([`Llama::forward_cached`]).

mod layer;
mod packed;

use std::sync::Arc;

use candle_core::{DType, Device, Result as CResult, Tensor};
use meft_core::AdapterHook;
use rayon::prelude::*;

pub use layer::{DecoderLayer, KvPair, LayerContext, Mlp, SelfAttention};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::kv_cache::KvCache;
use crate::ops::{self, AttentionMask, Bf16Weight, FrozenPrecision, OpPath};
use crate::weights::WeightMap;

/// A LLaMA/Mistral causal language model with frozen weights.
#[derive(Debug, Clone)]
pub struct Llama {
    /// The configuration the weights were checked against.
    pub config: ModelConfig,
    /// `model.embed_tokens.weight`, `(vocab, hidden)`.
    pub embed_tokens: Tensor,
    /// `model.layers.*`.
    pub layers: Vec<DecoderLayer>,
    /// `model.norm.weight`, `(hidden)`.
    pub norm: Tensor,
    /// `lm_head.weight`, `(vocab, hidden)`; the embedding itself when tied.
    pub lm_head: Tensor,
    /// Which op implementation the training forward uses.
    pub op_path: OpPath,
    /// The precision of the frozen products ([`Llama::set_frozen_precision`]).
    precision: FrozenPrecision,
    /// bf16 companion of `lm_head` (bf16 frozen precision).
    head_bf16: Option<Arc<Bf16Weight>>,
}

/// Mean negative log-likelihood of a token sequence.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Score {
    /// Number of tokens in the sequence (predictions are one fewer).
    pub tokens: usize,
    /// Mean next-token negative log-likelihood in nats.
    pub mean_nll: f64,
}

impl Llama {
    /// Builds the model from HF-named weights, checking every shape against `cfg`.
    ///
    /// Q/K weights are used in the layout `cfg.rope_layout` says they are stored in (rotate-half
    /// for HF checkpoints, interleaved pairs for GGUF), so no permutation is needed at load.
    pub fn load(cfg: &ModelConfig, mut weights: WeightMap, dtype: DType, device: &Device) -> Result<Self, ModelError> {
        let (d, v) = (cfg.hidden_size, cfg.vocab_size);
        let embed_tokens = weights.take("model.embed_tokens.weight", &[v, d], dtype, device)?;
        let layers = (0..cfg.num_hidden_layers).map(|i| load_layer(cfg, &mut weights, i, dtype, device)).collect::<Result<Vec<_>, _>>()?;
        let norm = weights.take("model.norm.weight", &[d], dtype, device)?;
        let lm_head = if cfg.tie_word_embeddings && !weights.contains("lm_head.weight") {
            embed_tokens.clone()
        } else {
            weights.take("lm_head.weight", &[v, d], dtype, device)?
        };
        Ok(Self {
            config: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            op_path: OpPath::default(),
            precision: FrozenPrecision::F32,
            head_bf16: None,
        })
    }

    /// Computes every frozen product (projections and head) in `precision`: `Bf16` rounds the
    /// weights and the products' inputs to bfloat16 and sums in f32 (AMX tiles where the CPU has
    /// them), `F32` is exact f32. Building the bf16 companions packs every weight once.
    ///
    /// # Errors
    /// A weight that is not a contiguous f32 CPU tensor (bf16 only).
    pub fn set_frozen_precision(&mut self, precision: FrozenPrecision) -> Result<(), ModelError> {
        self.layers.par_iter_mut().try_for_each(|l| l.set_precision(precision))?;
        self.head_bf16 = layer::companion(&self.lm_head, precision)?;
        self.precision = precision;
        Ok(())
    }

    /// The precision of the frozen products.
    pub fn frozen_precision(&self) -> FrozenPrecision {
        self.precision
    }

    /// Token embeddings.
    ///
    /// # Shapes
    /// `tokens`: `(batch, seq)` u32; result `(batch, seq, hidden)`.
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor, ModelError> {
        let (b, s) = tokens.dims2()?;
        let ids = tokens.flatten_all()?.to_vec1::<u32>()?;
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(ModelError::InvalidInput {
                op: "embed",
                reason: format!("token id {bad} is outside the vocabulary of {}", self.config.vocab_size),
            });
        }
        let flat = tokens.flatten_all()?.to_dtype(DType::U32)?;
        Ok(self.embed_tokens.index_select(&flat, 0)?.reshape((b, s, self.config.hidden_size))?)
    }

    /// Context for one forward call over `seq` positions starting at `offset`.
    pub fn context<'a>(&self, hook: &'a dyn AdapterHook, path: OpPath, offset: usize, seq: usize) -> LayerContext<'a> {
        let cfg = &self.config;
        LayerContext {
            hook,
            path,
            rope: ops::rope_tables(cfg.head_dim, cfg.rope_theta, offset, seq),
            mask: AttentionMask { seq, offset, window: cfg.sliding_window },
        }
    }

    /// Training forward from tokens: differentiable logits.
    ///
    /// # Shapes
    /// `tokens`: `(batch, seq)` u32; result `(batch, seq, vocab)`.
    pub fn forward(&self, tokens: &Tensor, hook: &dyn AdapterHook) -> Result<Tensor, ModelError> {
        self.forward_embeds(&self.embed(tokens)?, hook)
    }

    /// Training forward from embeddings (e.g. a `Var` to take gradients w.r.t. the input).
    ///
    /// # Shapes
    /// `h`: `(batch, seq, hidden)`; result `(batch, seq, vocab)`.
    pub fn forward_embeds(&self, h: &Tensor, hook: &dyn AdapterHook) -> Result<Tensor, ModelError> {
        Ok(self.head(&self.hidden_embeds(h, hook)?, self.op_path)?)
    }

    /// Training forward from embeddings through every decoder layer, without the final norm and
    /// head: the input of [`Llama::next_token_loss_of_hidden`].
    ///
    /// # Shapes
    /// `h`: `(batch, seq, hidden)`; result likewise.
    pub fn hidden_embeds(&self, h: &Tensor, hook: &dyn AdapterHook) -> Result<Tensor, ModelError> {
        let ctx = self.context(hook, self.op_path, 0, h.dim(1)?);
        let mut h = h.clone();
        for layer in &self.layers {
            h = layer.forward(&h, &ctx, None)?;
        }
        Ok(h)
    }

    /// Final norm and output head.
    ///
    /// # Shapes
    /// `h`: `(batch, seq, hidden)`; result `(batch, seq, vocab)`.
    pub fn head(&self, h: &Tensor, path: OpPath) -> CResult<Tensor> {
        let x = ops::rms_norm(h, &self.norm, self.config.rms_norm_eps, path)?;
        ops::linear_with(&x, &self.lm_head, self.head_bf16.as_ref())
    }

    /// Inference forward of new tokens after the positions in `cache`, extending the cache.
    /// Fused kernels; intended for use without gradients.
    ///
    /// # Shapes
    /// `tokens`: `(batch, seq)` u32; result `(batch, seq, vocab)`.
    pub fn forward_cached(&self, tokens: &Tensor, cache: &mut KvCache, hook: &dyn AdapterHook) -> Result<Tensor, ModelError> {
        let h = self.hidden_cached(tokens, cache, hook)?;
        Ok(self.head(&h, OpPath::Fused)?)
    }

    /// Like [`Llama::forward_cached`] but runs the output head on the last position only (what
    /// decoding needs: the head is a fifth of the model's weights).
    ///
    /// # Shapes
    /// `tokens`: `(batch, seq)` u32; result `(batch, vocab)`.
    pub fn forward_cached_last(&self, tokens: &Tensor, cache: &mut KvCache, hook: &dyn AdapterHook) -> Result<Tensor, ModelError> {
        let h = self.hidden_cached(tokens, cache, hook)?;
        let last = h.narrow(1, h.dim(1)? - 1, 1)?;
        Ok(self.head(&last, OpPath::Fused)?.squeeze(1)?)
    }

    /// One decoding step of `tokens.len()` independent sequences: `tokens[i]` follows the
    /// positions of `caches[i]` (each cache may hold a different length) and extends it. The
    /// projections, FFNs and head run once over all rows; attention runs per sequence. Equals
    /// [`Llama::forward_cached_last`] of each token alone, up to float rounding, for hooks that
    /// treat rows independently (an adapter whose device capacity is shared by the rows of a
    /// call, such as MEFT's working set, may drop more when rows are batched).
    ///
    /// # Shapes
    /// result `(tokens.len(), vocab)`.
    pub fn forward_step_batch(&self, tokens: &[u32], caches: &mut [&mut KvCache], hook: &dyn AdapterHook) -> Result<Tensor, ModelError> {
        let bad = |reason: String| Err(ModelError::InvalidInput { op: "forward_step_batch", reason });
        if tokens.is_empty() || tokens.len() != caches.len() {
            return bad(format!("{} tokens for {} caches: give one token per cache, at least one", tokens.len(), caches.len()));
        }
        if let Some(c) = caches.iter().find(|c| c.layers.len() != self.layers.len()) {
            return bad(format!("a cache has {} layers, the model {}", c.layers.len(), self.layers.len()));
        }
        let ids = Tensor::from_slice(tokens, (tokens.len(), 1), self.embed_tokens.device())?;
        let mut h = self.embed(&ids)?;
        let ctxs: Vec<LayerContext<'_>> = caches.iter().map(|c| self.context(hook, OpPath::Fused, c.len(), 1)).collect();
        for (l, layer) in self.layers.iter().enumerate() {
            let mut entries: Vec<&mut Option<KvPair>> = caches.iter_mut().map(|c| &mut c.layers[l]).collect();
            h = layer.forward_rows(&h, &ctxs, &mut entries)?;
        }
        caches.iter_mut().for_each(|c| c.advance(1));
        Ok(self.head(&h, OpPath::Fused)?.squeeze(1)?)
    }

    /// The decoder layers of [`Llama::forward_cached`], without the head.
    fn hidden_cached(&self, tokens: &Tensor, cache: &mut KvCache, hook: &dyn AdapterHook) -> Result<Tensor, ModelError> {
        if cache.layers.len() != self.layers.len() {
            return Err(ModelError::InvalidInput {
                op: "forward_cached",
                reason: format!("cache has {} layers, model {}", cache.layers.len(), self.layers.len()),
            });
        }
        let h = self.embed(tokens)?;
        let seq = h.dim(1)?;
        let ctx = self.context(hook, OpPath::Fused, cache.len(), seq);
        let mut h = h;
        for (layer, entry) in self.layers.iter().zip(cache.layers.iter_mut()) {
            h = layer.forward(&h, &ctx, Some(entry))?;
        }
        cache.advance(seq);
        Ok(h)
    }

    /// Mean next-token cross-entropy (differentiable): position `t` predicts `tokens[t + 1]`.
    ///
    /// `mask` (same shape as `tokens`, 1 = counted) selects the target tokens that count;
    /// its first column is ignored since the first token is never predicted.
    ///
    /// # Shapes
    /// `logits`: `(batch, seq, vocab)`, `tokens`/`mask`: `(batch, seq)`; result a scalar.
    pub fn next_token_loss(&self, logits: &Tensor, tokens: &Tensor, mask: Option<&Tensor>) -> Result<Tensor, ModelError> {
        check_next_token_shapes(logits, tokens)?;
        masked_mean(&ops::next_token_nll(logits, tokens, self.op_path)?, mask, tokens.dim(1)?)
    }

    /// [`Llama::next_token_loss`] of the logits of the last hidden states `h` (the output of
    /// [`Llama::hidden_embeds`]): same value and gradients, but the head and the loss are one
    /// node ([`ops::head_next_token_nll`]), so the vocabulary-sized logits never enter autograd.
    ///
    /// # Shapes
    /// `h`: `(batch, seq, hidden)`, `tokens`/`mask`: `(batch, seq)`; result a scalar.
    pub fn next_token_loss_of_hidden(&self, h: &Tensor, tokens: &Tensor, mask: Option<&Tensor>) -> Result<Tensor, ModelError> {
        check_next_token_shapes(h, tokens)?;
        let x = ops::rms_norm(h, &self.norm, self.config.rms_norm_eps, self.op_path)?;
        let nll = ops::head_next_token_nll_with(&x, &self.lm_head, self.head_bf16.as_ref(), tokens, self.op_path)?;
        masked_mean(&nll, mask, tokens.dim(1)?)
    }

    /// Mean next-token negative log-likelihood of `tokens` (no gradient; used by `meft score`).
    pub fn score(&self, tokens: &[u32]) -> Result<Score, ModelError> {
        if tokens.len() < 2 {
            return Err(ModelError::InvalidInput { op: "score", reason: "need at least two tokens to score".into() });
        }
        let device = self.embed_tokens.device();
        let ids = Tensor::from_slice(tokens, (1, tokens.len()), device)?;
        let mut cache = KvCache::new(self.layers.len());
        let logits = self.forward_cached(&ids, &mut cache, &meft_core::NoAdapters)?.to_dtype(DType::F32)?;
        let loss = self.next_token_loss(&logits, &ids, None)?;
        Ok(Score { tokens: tokens.len(), mean_nll: loss.to_dtype(DType::F64)?.to_scalar::<f64>()? })
    }
}

fn load_layer(cfg: &ModelConfig, w: &mut WeightMap, i: usize, dtype: DType, device: &Device) -> Result<DecoderLayer, ModelError> {
    let p = format!("model.layers.{i}");
    let d = cfg.hidden_size;
    let mut take = |name: &str, shape: &[usize]| w.take(&format!("{p}.{name}.weight"), shape, dtype, device);
    let [q, k, v, o] = SelfAttention::shapes(cfg);
    let self_attn = SelfAttention::new(
        take(&format!("self_attn.{}", q.0), &q.1)?,
        take(&format!("self_attn.{}", k.0), &k.1)?,
        take(&format!("self_attn.{}", v.0), &v.1)?,
        take(&format!("self_attn.{}", o.0), &o.1)?,
        cfg,
    )?;
    let f = cfg.intermediate_size;
    let mlp = Mlp::new(take("mlp.gate_proj", &[f, d])?, take("mlp.up_proj", &[f, d])?, take("mlp.down_proj", &[d, f])?)?;
    Ok(DecoderLayer {
        index: i,
        input_layernorm: take("input_layernorm", &[d])?,
        self_attn,
        post_attention_layernorm: take("post_attention_layernorm", &[d])?,
        mlp,
        eps: cfg.rms_norm_eps,
    })
}

/// `tokens` is `(batch, seq)` with `seq ≥ 2` and matches the first two dimensions of `x`
/// (`(batch, seq, vocab or hidden)`).
fn check_next_token_shapes(x: &Tensor, tokens: &Tensor) -> Result<(), ModelError> {
    let (b, s, _) = x.dims3()?;
    if s < 2 {
        return Err(ModelError::InvalidInput { op: "next_token_loss", reason: "need at least two tokens".into() });
    }
    if tokens.dims() != [b, s] {
        return Err(ModelError::InvalidInput {
            op: "next_token_loss",
            reason: format!("tokens {:?} do not match the model output {:?}", tokens.dims(), x.dims()),
        });
    }
    Ok(())
}

/// Mean of the per-position losses `nll` (`batch·(seq − 1)`) over the positions `mask` selects
/// (its first column ignored), or over all of them.
fn masked_mean(nll: &Tensor, mask: Option<&Tensor>, seq: usize) -> Result<Tensor, ModelError> {
    let Some(m) = mask else { return Ok(nll.mean_all()?) };
    let m = m.narrow(1, 1, seq - 1)?.flatten_all()?.to_dtype(nll.dtype())?;
    let count = m.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    if count == 0.0 {
        return Err(ModelError::InvalidInput { op: "next_token_loss", reason: "the mask selects no token".into() });
    }
    Ok(((nll * m)?.sum_all()? / count)?)
}
