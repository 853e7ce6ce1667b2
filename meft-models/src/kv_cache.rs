//! The key/value cache shared by LLaMA and Mistral.
//!
//! Convention: one entry per layer, keys and values after RoPE, shaped
//! `(batch, kv_heads, positions, head_dim)`, positions counted from the first token of the
//! sequence. Mistral keeps every position too and hides the old ones with its sliding-window
//! mask, so one cache serves both architectures and the mask alone decides what is visible.

use crate::llama::KvPair;

/// Keys and values of the positions processed so far, per layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<KvPair>>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self { layers: vec![None; num_layers], len: 0 }
    }

    /// Number of positions already cached (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records that `n` more positions were appended by a forward call.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Forgets every cached position.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.len = 0;
    }
}
