//! Device-resident adapters behind [`AdapterHook`](crate::AdapterHook): the dense Parallel Adapter,
//! LoRA, the serial AdapterH and full fine-tuning as full-size updates, plus an AdamW over candle
//! [`Var`]s for their parameters (and for MEFT's gates).
//!
//! Every adapter owns its trainable parameters as candle [`Var`]s and lists them through
//! [`Trainable::vars`], so one training loop serves every method: forward with the adapter as the
//! model's hook, `loss.backward()`, then [`DeviceAdamW::step`] with the gradient store. The offloaded
//! MEFT adapter (crate `meft-offload`) implements the same hook with its parameters in host memory.

mod device_adamw;
mod full_delta;
mod houlsby;
mod lora;
mod parallel;

pub use device_adamw::{DeviceAdamW, DeviceAdamWConfig};
pub use full_delta::FullDelta;
pub use houlsby::{HoulsbyAdapter, HoulsbyLayer, houlsby_forward_slow};
pub use lora::{LoraAdapter, LoraConfig};
pub use parallel::{Activation, ParallelAdapter, ParallelAdapterLayer, parallel_forward};

use candle_core::Var;

/// Whether the adapters are used for training (dropout active) or evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Training: dropout is applied.
    #[default]
    Train,
    /// Evaluation: dropout is the identity.
    Eval,
}

/// An adapter whose parameters are candle variables on the device.
pub trait Trainable {
    /// Every trainable parameter, with a stable name (e.g. `layers.3.ffn_adapter.keys`).
    fn vars(&self) -> Vec<(String, Var)>;

    /// Total number of trainable scalars.
    fn param_count(&self) -> usize {
        self.vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Restarts the adapter's dropout stream at `seed`: the masks of the following forward
    /// depend on `seed` alone, so a resumed run draws the same masks (no-op without dropout).
    fn reseed_dropout(&self, _seed: u64) {}
}
