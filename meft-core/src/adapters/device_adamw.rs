//! AdamW over candle [`Var`]s, written with plain tensor ops so it runs wherever the parameters live.
//!
//! The update is torch's `AdamW` (single-tensor path) step for step: decoupled weight decay
//! `p ← p·(1 − lr·λ)`, moments `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, and
//! `p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)`. Each parameter keeps its own step count and is
//! skipped (no decay, no moment decay) in a step where it has no gradient, as torch skips a
//! parameter whose `.grad` is `None`. Used for dense adapters, LoRA and MEFT's router gates; the
//! offloaded adapter rows use the host AdamW in [`crate::optim`].
//!
//! A contiguous f32 parameter on the CPU steps in place through the fused host kernel
//! ([`crate::optim::adamw_dense`]: one pass over parameters, gradients and moments, the moments
//! kept as plain vectors); any other parameter steps through tensor ops ([`update_slow`]). The
//! two agree to the host kernel's tolerance (tested).

use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor, Var};

use crate::optim::{AdamWBuffers, FiniteCheck, StepOutcome, adamw_dense};

/// AdamW hyper-parameters (defaults: the paper's β = (0.9, 0.999), ε = 1e-8, no weight decay).
pub use crate::optim::AdamWConfig as DeviceAdamWConfig;

/// A parameter's moments: plain vectors for the fused in-place step, or tensors.
#[derive(Debug)]
enum Moments {
    /// `(m, v)` of a contiguous f32 CPU parameter.
    Host(Mutex<(Vec<f32>, Vec<f32>)>),
    /// `(m, v)` as tensors beside the parameter.
    Tensors(Tensor, Tensor),
}

/// One parameter's optimizer state.
#[derive(Debug)]
struct Slot {
    var: Var,
    moments: Moments,
    step: u64,
}

impl Slot {
    fn new(var: Var) -> Result<Self> {
        let host = var.device().is_cpu() && var.dtype() == DType::F32 && var.as_tensor().is_contiguous();
        let moments = if host {
            let n = var.elem_count();
            Moments::Host(Mutex::new((vec![0.0; n], vec![0.0; n])))
        } else {
            let z = var.as_tensor().zeros_like()?;
            Moments::Tensors(z.clone(), z)
        };
        Ok(Self { var, moments, step: 0 })
    }

    /// `(m, v)` as tensors of the parameter's shape.
    fn moment_tensors(&self) -> Result<(Tensor, Tensor)> {
        match &self.moments {
            Moments::Host(mv) => {
                let (m, v) = &*mv.lock().unwrap_or_else(|e| e.into_inner());
                let dev = self.var.device();
                Ok((Tensor::from_slice(m, self.var.shape(), dev)?, Tensor::from_slice(v, self.var.shape(), dev)?))
            }
            Moments::Tensors(m, v) => Ok((m.clone(), v.clone())),
        }
    }

    fn set_moments(&mut self, m: Tensor, v: Tensor) -> Result<()> {
        match &mut self.moments {
            Moments::Host(mv) => {
                let flat = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
                *mv.get_mut().unwrap_or_else(|e| e.into_inner()) = (flat(&m)?, flat(&v)?);
            }
            Moments::Tensors(om, ov) => (*om, *ov) = (m, v),
        }
        Ok(())
    }
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
        let slots = vars.into_iter().map(Slot::new).collect::<Result<_>>()?;
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
        self.slots.iter().map(|s| 2 * s.var.elem_count() as u64 * s.var.dtype().size_in_bytes() as u64).sum()
    }

    /// First moment, second moment and step count of every variable, in construction order
    /// (for checkpoints).
    pub fn state(&self) -> Result<Vec<(Tensor, Tensor, u64)>> {
        self.slots.iter().map(|s| Ok((s.moment_tensors()?.0, s.moment_tensors()?.1, s.step))).collect()
    }

    /// Restores what [`Self::state`] returned; count and shapes must match.
    pub fn set_state(&mut self, state: Vec<(Tensor, Tensor, u64)>) -> Result<()> {
        if state.len() != self.slots.len() {
            candle_core::bail!("optimizer state has {} slots, expected {}", state.len(), self.slots.len());
        }
        for (slot, (m, v, step)) in self.slots.iter_mut().zip(state) {
            if m.shape() != slot.var.shape() || v.shape() != slot.var.shape() {
                candle_core::bail!("optimizer state shape {:?} does not match {:?}", m.shape(), slot.var.shape());
            }
            slot.set_moments(m, v)?;
            slot.step = step;
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
    s.step += 1;
    match &mut s.moments {
        Moments::Host(mv) => {
            let op = FusedStep { cfg: DeviceAdamWConfig { finite_check: FiniteCheck::Trusted, ..*cfg }, step: s.step, moments: mv };
            s.var.as_tensor().inplace_op2(&g.to_dtype(DType::F32)?.contiguous()?, &op)
        }
        Moments::Tensors(m, v) => {
            let (nm, nv, next) = update_slow(cfg, s.step, s.var.as_tensor(), m, v, g)?;
            (*m, *v) = (nm, nv);
            s.var.set(&next)
        }
    }
}

/// torch's AdamW step through tensor ops: the new `(m, v, parameter)`.
fn update_slow(cfg: &DeviceAdamWConfig, step: u64, p: &Tensor, m: &Tensor, v: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let (b1, b2) = (cfg.beta1, cfg.beta2);
    let (lr, wd, eps) = (cfg.lr, cfg.weight_decay, cfg.eps);
    let t = step as i32;
    let g = g.to_dtype(m.dtype())?;
    let m = ((m * b1)? + (&g * (1.0 - b1))?)?;
    let v = ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
    let bc1 = 1.0 - b1.powi(t);
    let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
    let denom = ((v.sqrt()? / bc2_sqrt)? + eps)?;
    let next = ((p * (1.0 - lr * wd))? - ((&m / denom)? * (lr / bc1))?)?;
    Ok((m, v, next))
}

/// The fused host AdamW on a parameter's storage, in place.
struct FusedStep<'a> {
    cfg: DeviceAdamWConfig,
    step: u64,
    moments: &'a Mutex<(Vec<f32>, Vec<f32>)>,
}

impl InplaceOp2 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "meft-device-adamw"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else { candle_core::bail!("device AdamW: f32 parameters and gradients only") };
        let (Some((a1, b1)), Some((a2, b2))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("device AdamW: contiguous parameters and gradients only")
        };
        let mut mv = self.moments.lock().unwrap_or_else(|e| e.into_inner());
        let (m, v) = &mut *mv;
        let bufs = AdamWBuffers { params: &mut p[a1..b1], grads: &g[a2..b2], m, v };
        match adamw_dense(&self.cfg, self.step, bufs).map_err(candle_core::Error::wrap)? {
            StepOutcome::Applied | StepOutcome::SkippedNonFinite { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// The fused in-place step and the tensor-op step agree over several steps (with decay).
    #[test]
    fn fused_step_matches_the_tensor_op_step() {
        let cfg = DeviceAdamWConfig { lr: 3e-2, weight_decay: 0.05, ..DeviceAdamWConfig::default() };
        let init: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin()).collect();
        let var = Var::from_slice(&init, (5, 8), &Device::Cpu).unwrap();
        let mut opt = DeviceAdamW::new(cfg, [var.clone()]).unwrap();
        assert!(matches!(opt.slots[0].moments, Moments::Host(_)), "a CPU f32 parameter takes the fused path");
        let (mut p, mut m, mut v) = (
            Tensor::from_slice(&init, (5, 8), &Device::Cpu).unwrap(),
            Tensor::zeros((5, 8), DType::F32, &Device::Cpu).unwrap(),
            Tensor::zeros((5, 8), DType::F32, &Device::Cpu).unwrap(),
        );
        for step in 1..=4u64 {
            let g: Vec<f32> = (0..40).map(|i| ((i * 7 + step as usize) as f32 * 0.11).cos()).collect();
            let g = Tensor::from_vec(g, (5, 8), &Device::Cpu).unwrap();
            let mut store = GradStore::default();
            store.insert(var.as_tensor(), g.clone());
            opt.step(&store).unwrap();
            (m, v, p) = update_slow(&cfg, step, &p, &m, &v, &g).unwrap();
        }
        let (a, b) = (var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(), p.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} vs {y}");
        }
        let (sm, _, steps) = opt.state().unwrap().remove(0);
        assert_eq!(steps, 4);
        let (sm, rm) = (sm.flatten_all().unwrap().to_vec1::<f32>().unwrap(), m.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert!(sm.iter().zip(&rm).all(|(x, y)| (x - y).abs() <= 1e-6 * (1.0 + y.abs())));
    }
}
