//! AdamW over candle [`Var`]s, written with plain tensor ops so it runs wherever the parameters live.
//!
//! The update is torch's `AdamW` (single-tensor path) step for step: decoupled weight decay
//! `p ← p·(1 − lr·λ)`, moments `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, and
//! `p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)`. Each parameter keeps its own step count and is
//! skipped (no decay, no moment decay) in a step where it has no gradient, as torch skips a
//! parameter whose `.grad` is `None`. Used for dense adapters, LoRA and MEFT's router gates; the
//! offloaded adapter rows use the host AdamW in [`crate::optim`].

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// AdamW hyper-parameters (defaults: the paper's β = (0.9, 0.999), ε = 1e-8, no weight decay).
pub use crate::optim::AdamWConfig as DeviceAdamWConfig;

/// One parameter's optimizer state.
#[derive(Debug)]
struct Slot {
    var: Var,
    m: Tensor,
    v: Tensor,
    step: u64,
}

/// AdamW over a fixed list of device variables.
#[derive(Debug)]
pub struct DeviceAdamW {
    cfg: DeviceAdamWConfig,
    slots: Vec<Slot>,
}

impl DeviceAdamW {
    /// An optimizer for `vars` with zero moments.
    pub fn new(cfg: DeviceAdamWConfig, vars: impl IntoIterator<Item = Var>) -> Result<Self> {
        let slots = vars
            .into_iter()
            .map(|var| {
                let z = var.as_tensor().zeros_like()?;
                Ok(Slot { var, m: z.clone(), v: z, step: 0 })
            })
            .collect::<Result<_>>()?;
        Ok(Self { cfg, slots })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &DeviceAdamWConfig {
        &self.cfg
    }

    /// Sets the learning rate (for schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.lr = lr;
    }

    /// Bytes of optimizer state (both moments) held on the device.
    pub fn state_bytes(&self) -> u64 {
        self.slots.iter().map(|s| 2 * s.m.elem_count() as u64 * s.m.dtype().size_in_bytes() as u64).sum()
    }

    /// First moment, second moment and step count of every variable, in construction order
    /// (for checkpoints).
    pub fn state(&self) -> Vec<(Tensor, Tensor, u64)> {
        self.slots.iter().map(|s| (s.m.clone(), s.v.clone(), s.step)).collect()
    }

    /// Restores what [`Self::state`] returned; count and shapes must match.
    pub fn set_state(&mut self, state: Vec<(Tensor, Tensor, u64)>) -> Result<()> {
        if state.len() != self.slots.len() {
            candle_core::bail!("optimizer state has {} slots, expected {}", state.len(), self.slots.len());
        }
        for (slot, (m, v, step)) in self.slots.iter_mut().zip(state) {
            if m.shape() != slot.m.shape() || v.shape() != slot.v.shape() {
                candle_core::bail!("optimizer state shape {:?} does not match {:?}", m.shape(), slot.m.shape());
            }
            (slot.m, slot.v, slot.step) = (m, v, step);
        }
        Ok(())
    }

    /// One step using the gradients of a backward pass.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        for slot in &mut self.slots {
            if let Some(g) = grads.get(slot.var.as_tensor()) {
                update(&self.cfg, slot, g)?;
            }
        }
        Ok(())
    }
}

fn update(cfg: &DeviceAdamWConfig, s: &mut Slot, g: &Tensor) -> Result<()> {
    let (b1, b2) = (cfg.beta1, cfg.beta2);
    let (lr, wd, eps) = (cfg.lr, cfg.weight_decay, cfg.eps);
    s.step += 1;
    let t = s.step as i32;
    let g = g.to_dtype(s.m.dtype())?;
    s.m = ((&s.m * b1)? + (&g * (1.0 - b1))?)?;
    s.v = ((&s.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
    let bc1 = 1.0 - b1.powi(t);
    let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
    let denom = ((s.v.sqrt()? / bc2_sqrt)? + eps)?;
    let p = (s.var.as_tensor() * (1.0 - lr * wd))?;
    let next = (p - ((&s.m / denom)? * (lr / bc1))?)?;
    s.var.set(&next)
}
