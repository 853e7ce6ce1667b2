//! Checkpoint and clipping access to a [`MeftAdapter`]: the gate optimizer's state, and the norm
//! and scaling of the gradients accumulated since the last step (host rows and device gates).

use meft_core::adapters::DeviceAdamW;

use crate::adapter::{MeftAdapter, missing};
use crate::error::Result;

impl MeftAdapter {
    /// The device AdamW over the gates (its state goes into checkpoints).
    pub fn gate_optimizer(&self) -> &DeviceAdamW {
        &self.gate_opt
    }

    /// Mutable access to the gate optimizer (to restore a checkpoint).
    pub fn gate_optimizer_mut(&mut self) -> &mut DeviceAdamW {
        &mut self.gate_opt
    }

    /// Sum of squares of every gradient accumulated since the last step: host row accumulators
    /// and device gate gradients.
    pub fn grad_sq_norm(&self) -> Result<f64> {
        let mut total = 0.0;
        for (_, arena) in self.ctx.store.layers() {
            total += arena.read().unwrap_or_else(|e| e.into_inner()).grad_sq_norm();
        }
        for g in self.lock_state().gate_grads.values() {
            total += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        }
        Ok(total)
    }

    /// Multiplies every accumulated gradient (rows and gates) by `factor` (gradient clipping).
    pub fn scale_grads(&self, factor: f64) -> Result<()> {
        for (_, arena) in self.ctx.store.layers() {
            arena.write().unwrap_or_else(|e| e.into_inner()).scale_grads(factor as f32);
        }
        let mut st = self.lock_state();
        let layers: Vec<usize> = st.gate_grads.keys().copied().collect();
        for layer in layers {
            let g = st.gate_grads.remove(&layer).ok_or_else(|| missing(layer))?;
            st.gate_grads.insert(layer, g.affine(factor, 0.0)?);
        }
        Ok(())
    }
}
