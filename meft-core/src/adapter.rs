//! The adapter hook: how a model lets adapters add to its FFN and projection outputs.
//!
//! A model calls the hook at fixed sites and adds whatever it returns. The model never branches on
//! the fine-tuning method: the dense Parallel Adapter, LoRA and the offloaded MEFT adapter are all
//! implementations of [`AdapterHook`].

use candle_core::{Result, Tensor};

/// A linear projection inside a transformer block that an adapter (e.g. LoRA) may augment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinearSite {
    /// Attention query projection (`q_proj`).
    Query,
    /// Attention key projection (`k_proj`).
    Key,
    /// Attention value projection (`v_proj`).
    Value,
    /// Attention output projection (`o_proj`).
    Output,
    /// FFN gate projection (`gate_proj`).
    Gate,
    /// FFN up projection (`up_proj`).
    Up,
    /// FFN down projection (`down_proj`).
    Down,
}

/// Adapters plugged into a model.
///
/// Every method returns `Ok(None)` when nothing is adapted at that site, so the model pays nothing
/// for unadapted sites. Implementations that keep per-step state (routing results, working sets)
/// use interior mutability: the model only holds a shared reference during a forward pass.
pub trait AdapterHook: Send + Sync {
    /// Parallel adapter beside the FFN of `layer`.
    ///
    /// # Shapes
    /// `x` is the FFN input (post-attention RMSNorm output), `(batch, seq, hidden)`; the returned
    /// tensor has the same shape and is added to the FFN output.
    fn ffn(&self, layer: usize, x: &Tensor) -> Result<Option<Tensor>>;

    /// Additive term for the output of the projection `site` of `layer` (LoRA-style).
    ///
    /// # Shapes
    /// `x` is the projection input `(batch, seq, in)`; the result is `(batch, seq, out)`.
    fn linear(&self, layer: usize, site: LinearSite, x: &Tensor) -> Result<Option<Tensor>>;

    /// Whether [`AdapterHook::linear`] may return a term for some projection of `layer`.
    ///
    /// `false` lets the model run the layer's projections inside fused whole-block kernels that
    /// never call `linear`; the default `true` is always correct.
    fn adapts_projections(&self, _layer: usize) -> bool {
        true
    }

    /// Serial adapter after the FFN of `layer` (Houlsby-style): a term added to the FFN output,
    /// computed from that output.
    ///
    /// Called only when [`AdapterHook::adapts_ffn_output`] is `true` for `layer`.
    ///
    /// # Shapes
    /// `y` is the FFN output (before the residual add), `(batch, seq, hidden)`; the result has
    /// the same shape and is added to it.
    fn ffn_output(&self, _layer: usize, _y: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Whether [`AdapterHook::ffn_output`] adapts `layer` (then the model computes the FFN output
    /// as its own graph tensor instead of adding it onto the residual inside one kernel).
    fn adapts_ffn_output(&self, _layer: usize) -> bool {
        false
    }
}

/// The hook of a model without adapters.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoAdapters;

impl AdapterHook for NoAdapters {
    fn ffn(&self, _layer: usize, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    fn linear(&self, _layer: usize, _site: LinearSite, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    fn adapts_projections(&self, _layer: usize) -> bool {
        false
    }
}
