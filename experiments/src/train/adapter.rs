//! One trait for every trainable adapter, so the training loop never branches on the method.
//!
//! [`DeviceTrainable`] wraps an adapter whose parameters are candle `Var`s (dense Parallel
//! Adapter, LoRA, or nothing) with a [`DeviceAdamW`]; [`MeftTrainable`] wraps the offloaded
//! [`MeftAdapter`] (host AdamW over rows, device AdamW over gates). Both accumulate gradients
//! across micro-batches, report the squared norm of what they accumulated (MEFT: host row
//! accumulators plus gate gradients, so clipping sees every trainable parameter), scale it, step,
//! and expose their full state as named tensors for checkpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use meft_core::AdapterHook;
use meft_core::adapters::{DeviceAdamW, Phase, Trainable};
use meft_offload::{FullOffloadAdapter, HostStore, LayerArena, MeftAdapter, OffloadDevice};

use super::state::{StateMap, StateTensor};

/// Per-step facts an adapter reports (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StepFacts {
    /// Distinct rows selected, summed over layers (MEFT; 0 otherwise).
    pub union_rows: u64,
    /// Adapter bytes copied host→device this step (offloaded adapters; 0 otherwise).
    pub h2d_bytes: u64,
    /// Adapter bytes copied device→host this step (offloaded adapters; 0 otherwise).
    pub d2h_bytes: u64,
    /// Peak device bytes this step (simulated device; 0 when not tracked).
    pub device_peak_bytes: u64,
}

impl StepFacts {
    /// Bytes moved between host and device this step, both directions.
    pub fn moved_bytes(&self) -> u64 {
        self.h2d_bytes + self.d2h_bytes
    }
}

/// A trainable adapter: forward hook, after-backward, step, and state for checkpoints.
pub trait TrainableAdapter {
    /// The hook the model calls during forward.
    fn hook(&self) -> &dyn AdapterHook;
    /// Training (dropout on) or evaluation.
    fn set_phase(&self, phase: Phase);
    /// Takes the gradients of one micro-batch's backward and accumulates them.
    fn after_backward(&mut self, grads: &GradStore) -> Result<()>;
    /// Drops what a forward without backward recorded (evaluation).
    fn discard_forward(&self);
    /// Sum of squares of the accumulated gradients.
    fn grad_sq_norm(&self) -> Result<f64>;
    /// Multiplies the accumulated gradients by `factor`.
    fn scale_grads(&mut self, factor: f64) -> Result<()>;
    /// One optimizer step at learning rate `lr`; clears the accumulated gradients.
    fn step(&mut self, lr: f64) -> Result<StepFacts>;
    /// Trainable scalars.
    fn param_count(&self) -> u64;
    /// Parameters and optimizer state as named tensors.
    fn state(&self) -> Result<StateMap>;
    /// Restores [`Self::state`].
    fn load_state(&mut self, state: &StateMap) -> Result<()>;
    /// Only the adapter parameters (for export).
    fn export(&self) -> Result<StateMap>;

    /// Restarts dropout at `seed` before a training forward (so a resumed run draws the same
    /// masks); a no-op for adapters without dropout.
    fn reseed(&self, _seed: u64) {}

    /// The transfer ledger of an offloaded adapter (MEFT); `None` for device adapters.
    fn ledger(&self) -> Option<&meft_offload::Ledger> {
        None
    }

    /// Restores the ledger a checkpoint saved (see [`Self::ledger`]); a no-op for adapters
    /// without one.
    fn restore_ledger(&mut self, _ledger: meft_offload::Ledger) {}

    /// Rows per decoding forward with this adapter when `batch` are asked for: `batch`, or fewer
    /// for an adapter whose rows of one forward call share a device capacity (MEFT's working set
    /// C), so that batching independent sequences never changes what each one gets.
    fn generation_batch(&self, batch: usize) -> usize {
        batch
    }

    /// Loads exported parameters (optimizer state reset): every exported name must exist.
    fn load_params(&mut self, params: &StateMap) -> Result<()> {
        let mut full = self.state()?;
        for (name, t) in &params.0 {
            if !full.0.contains_key(name) {
                bail!("adapter file has `{name}`, which this adapter does not (another method or size?)");
            }
            full.insert(name.clone(), t.clone());
        }
        self.load_state(&full)
    }
}

/// A device-resident adapter (PA, LoRA, none) with a device AdamW.
pub struct DeviceTrainable<A> {
    adapter: A,
    vars: Vec<(String, Var)>,
    opt: DeviceAdamW,
    acc: BTreeMap<usize, Tensor>,
    phase_fn: fn(&A, Phase),
}

impl<A: AdapterHook + Trainable> DeviceTrainable<A> {
    /// Wraps `adapter`; `phase_fn` switches its dropout.
    pub fn new(adapter: A, opt_cfg: meft_core::optim::AdamWConfig, phase_fn: fn(&A, Phase)) -> Result<Self> {
        let vars = adapter.vars();
        let opt = DeviceAdamW::new(opt_cfg, vars.iter().map(|(_, v)| v.clone()))?;
        Ok(Self { adapter, vars, opt, acc: BTreeMap::new(), phase_fn })
    }
}

impl<A: AdapterHook + Trainable> TrainableAdapter for DeviceTrainable<A> {
    fn hook(&self) -> &dyn AdapterHook {
        &self.adapter
    }

    fn set_phase(&self, phase: Phase) {
        (self.phase_fn)(&self.adapter, phase);
    }

    fn after_backward(&mut self, grads: &GradStore) -> Result<()> {
        for (i, (_, var)) in self.vars.iter().enumerate() {
            if let Some(g) = grads.get(var.as_tensor()) {
                let sum = match self.acc.remove(&i) {
                    Some(prev) => (prev + g)?,
                    None => g.detach(),
                };
                self.acc.insert(i, sum);
            }
        }
        Ok(())
    }

    fn discard_forward(&self) {}

    fn reseed(&self, seed: u64) {
        self.adapter.reseed_dropout(seed);
    }

    fn grad_sq_norm(&self) -> Result<f64> {
        let mut total = 0.0;
        for g in self.acc.values() {
            total += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        }
        Ok(total)
    }

    fn scale_grads(&mut self, factor: f64) -> Result<()> {
        for g in self.acc.values_mut() {
            *g = g.affine(factor, 0.0)?;
        }
        Ok(())
    }

    fn step(&mut self, lr: f64) -> Result<StepFacts> {
        self.opt.set_lr(lr);
        let mut store = GradStore::default();
        for (i, g) in std::mem::take(&mut self.acc) {
            store.insert(self.vars[i].1.as_tensor(), g);
        }
        self.opt.step(&store)?;
        Ok(StepFacts::default())
    }

    fn param_count(&self) -> u64 {
        self.adapter.param_count() as u64
    }

    fn state(&self) -> Result<StateMap> {
        let mut map = self.export()?;
        for ((name, _), (m, v, step)) in self.vars.iter().zip(self.opt.state()?) {
            map.insert(format!("optim.{name}.m"), StateTensor::from_tensor(&m)?);
            map.insert(format!("optim.{name}.v"), StateTensor::from_tensor(&v)?);
            map.insert(format!("optim.{name}.step"), StateTensor::U64(vec![step], vec![1]));
        }
        Ok(map)
    }

    fn load_state(&mut self, state: &StateMap) -> Result<()> {
        let mut opt = Vec::new();
        for (name, var) in &self.vars {
            var.set(&state.tensor(name, var.dims())?)?;
            let m = state.tensor(&format!("optim.{name}.m"), var.dims())?;
            let v = state.tensor(&format!("optim.{name}.v"), var.dims())?;
            opt.push((m, v, state.scalar_u64(&format!("optim.{name}.step"))?));
        }
        self.opt.set_state(opt)?;
        Ok(())
    }

    fn export(&self) -> Result<StateMap> {
        let mut map = StateMap::default();
        for (name, var) in &self.vars {
            map.insert(name.clone(), StateTensor::from_tensor(var.as_tensor())?);
        }
        Ok(map)
    }
}

/// The offloaded MEFT adapter.
pub struct MeftTrainable {
    adapter: MeftAdapter,
    device: Arc<OffloadDevice>,
}

impl MeftTrainable {
    /// Wraps `adapter`, which accounts its device bytes on `device`.
    pub fn new(adapter: MeftAdapter, device: Arc<OffloadDevice>) -> Self {
        Self { adapter, device }
    }

    fn layers(&self) -> Vec<usize> {
        self.adapter.plan().layers.iter().map(|l| l.layer).collect()
    }
}

impl TrainableAdapter for MeftTrainable {
    fn hook(&self) -> &dyn AdapterHook {
        &self.adapter
    }

    /// Per-token evaluation: `b` one-token rows select at most `b·K` neurons, so while that fits
    /// the smallest capacity C nothing is dropped and each row gets exactly its own top-K, as
    /// alone. Union evaluation mixes a call's rows: one row per forward.
    fn generation_batch(&self, batch: usize) -> usize {
        let cfg = self.adapter.config();
        let capacity = self.adapter.plan().layers.iter().map(|l| l.capacity).min().unwrap_or(0);
        match cfg.evaluation {
            meft_core::sparse::Evaluation::PerToken => batch.min(capacity / cfg.top_k.max(1)).max(1),
            meft_core::sparse::Evaluation::Union => 1,
        }
    }

    fn set_phase(&self, _phase: Phase) {}

    fn after_backward(&mut self, grads: &GradStore) -> Result<()> {
        Ok(self.adapter.finish_backward(grads)?)
    }

    fn discard_forward(&self) {
        self.adapter.discard_forward();
    }

    fn ledger(&self) -> Option<&meft_offload::Ledger> {
        Some(self.adapter.ledger())
    }

    fn restore_ledger(&mut self, ledger: meft_offload::Ledger) {
        self.adapter.restore_ledger(ledger);
    }

    fn grad_sq_norm(&self) -> Result<f64> {
        Ok(self.adapter.grad_sq_norm()?)
    }

    fn scale_grads(&mut self, factor: f64) -> Result<()> {
        Ok(self.adapter.scale_grads(factor)?)
    }

    fn step(&mut self, lr: f64) -> Result<StepFacts> {
        self.adapter.set_lr(lr);
        self.adapter.step()?;
        let rec = self.adapter.ledger().steps.last().context("ledger has no step after step()")?;
        Ok(StepFacts {
            union_rows: rec.layers.iter().map(|l| l.union_rows as u64).sum(),
            h2d_bytes: rec.layers.iter().map(|l| l.h2d_bytes).sum(),
            d2h_bytes: rec.layers.iter().map(|l| l.d2h_bytes).sum(),
            device_peak_bytes: rec.device.peak_total.max(self.device.report().peak_total),
        })
    }

    fn param_count(&self) -> u64 {
        let c = self.adapter.config();
        let per_layer = 2 * c.neurons * c.hidden + c.experts * c.hidden;
        (per_layer * self.layers().len()) as u64
    }

    fn state(&self) -> Result<StateMap> {
        let mut map = self.export()?;
        insert_row_moments(&mut map, self.adapter.store());
        for (layer, (m, v, step)) in self.layers().into_iter().zip(self.adapter.gate_optimizer().state()?) {
            map.insert(format!("optim.layers.{layer}.gates.m"), StateTensor::from_tensor(&m)?);
            map.insert(format!("optim.layers.{layer}.gates.v"), StateTensor::from_tensor(&v)?);
            map.insert(format!("optim.layers.{layer}.gates.step"), StateTensor::U64(vec![step], vec![1]));
        }
        Ok(map)
    }

    fn load_state(&mut self, state: &StateMap) -> Result<()> {
        let cfg = self.adapter.config().clone();
        let plan = self.adapter.plan().clone();
        let mut arenas = Vec::new();
        let mut gate_state = Vec::new();
        for layer in self.layers() {
            arenas.push((layer, restore_arena(state, layer, cfg.hidden, cfg.neurons)?));
            let g = [cfg.experts, cfg.hidden];
            gate_state.push((
                state.tensor(&format!("optim.layers.{layer}.gates.m"), &g)?,
                state.tensor(&format!("optim.layers.{layer}.gates.v"), &g)?,
                state.scalar_u64(&format!("optim.layers.{layer}.gates.step"))?,
            ));
        }
        let mut adapter = MeftAdapter::from_arenas(cfg.clone(), plan, self.device.clone(), arenas)?;
        for layer in self.layers() {
            let var = adapter.gates(layer).with_context(|| format!("no gates for layer {layer}"))?;
            var.set(&state.tensor(&format!("layers.{layer}.gates"), &[cfg.experts, cfg.hidden])?)?;
        }
        adapter.gate_optimizer_mut().set_state(gate_state)?;
        self.adapter = adapter;
        Ok(())
    }

    fn export(&self) -> Result<StateMap> {
        let mut map = StateMap::default();
        insert_rows(&mut map, self.adapter.store());
        for layer in self.layers() {
            let gates = self.adapter.gates(layer).with_context(|| format!("no gates for layer {layer}"))?;
            map.insert(format!("layers.{layer}.gates"), StateTensor::from_tensor(gates.as_tensor())?);
        }
        if map.is_empty() {
            bail!("the MEFT adapter has no layers");
        }
        Ok(map)
    }
}

/// The full-offload baseline: every row down and every gradient up each step, host AdamW.
pub struct FullOffloadTrainable {
    adapter: FullOffloadAdapter,
    device: Arc<OffloadDevice>,
}

impl FullOffloadTrainable {
    /// Wraps `adapter`, which accounts its device bytes on `device`.
    pub fn new(adapter: FullOffloadAdapter, device: Arc<OffloadDevice>) -> Self {
        Self { adapter, device }
    }

    fn layers(&self) -> Vec<usize> {
        self.adapter.store().layers().map(|(l, _)| l).collect()
    }
}

impl TrainableAdapter for FullOffloadTrainable {
    fn hook(&self) -> &dyn AdapterHook {
        &self.adapter
    }

    fn set_phase(&self, _phase: Phase) {}

    fn after_backward(&mut self, grads: &GradStore) -> Result<()> {
        Ok(self.adapter.finish_backward(grads)?)
    }

    fn discard_forward(&self) {
        self.adapter.discard_forward();
    }

    fn grad_sq_norm(&self) -> Result<f64> {
        Ok(self.adapter.grad_sq_norm())
    }

    fn scale_grads(&mut self, factor: f64) -> Result<()> {
        self.adapter.scale_grads(factor);
        Ok(())
    }

    fn step(&mut self, lr: f64) -> Result<StepFacts> {
        self.adapter.set_lr(lr);
        let moved = self.adapter.step()?;
        let peak = self.device.report().peak_total;
        self.device.reset_peak();
        let rows = (self.adapter.neurons() * self.layers().len()) as u64;
        Ok(StepFacts { union_rows: rows, h2d_bytes: moved.h2d_bytes, d2h_bytes: moved.d2h_bytes, device_peak_bytes: peak })
    }

    fn param_count(&self) -> u64 {
        (2 * self.adapter.neurons() * self.adapter.hidden() * self.layers().len()) as u64
    }

    fn state(&self) -> Result<StateMap> {
        let mut map = self.export()?;
        insert_row_moments(&mut map, self.adapter.store());
        Ok(map)
    }

    fn load_state(&mut self, state: &StateMap) -> Result<()> {
        let (d, m) = (self.adapter.hidden(), self.adapter.neurons());
        let arenas = self.layers().into_iter().map(|l| Ok((l, restore_arena(state, l, d, m)?))).collect::<Result<Vec<_>>>()?;
        let a = &self.adapter;
        self.adapter = FullOffloadAdapter::new(d, a.activation(), *a.adamw(), arenas, self.device.clone())?;
        Ok(())
    }

    fn export(&self) -> Result<StateMap> {
        let mut map = StateMap::default();
        insert_rows(&mut map, self.adapter.store());
        Ok(map)
    }
}

/// Every layer's bundled rows as `layers.{l}.rows` (`M×2d`).
fn insert_rows(map: &mut StateMap, store: &HostStore) {
    for (layer, arena) in store.layers() {
        let a = arena.read().unwrap_or_else(|e| e.into_inner());
        map.insert(format!("layers.{layer}.rows"), StateTensor::F32(a.params().to_vec(), vec![a.rows(), a.row_len()]));
    }
}

/// Every layer's host AdamW state under `optim.layers.{l}.rows.*`.
fn insert_row_moments(map: &mut StateMap, store: &HostStore) {
    for (layer, arena) in store.layers() {
        let a = arena.read().unwrap_or_else(|e| e.into_inner());
        let (m, v) = a.moments();
        let shape = vec![a.rows(), a.row_len()];
        map.insert(format!("optim.layers.{layer}.rows.m"), StateTensor::F32(m.to_vec(), shape.clone()));
        map.insert(format!("optim.layers.{layer}.rows.v"), StateTensor::F32(v.to_vec(), shape));
        map.insert(format!("optim.layers.{layer}.rows.row_steps"), StateTensor::U64(a.row_steps().to_vec(), vec![a.rows()]));
        map.insert(format!("optim.layers.{layer}.rows.steps"), StateTensor::U64(vec![a.dense_steps()], vec![1]));
    }
}

/// The arena of `layer` from what [`insert_rows`] and [`insert_row_moments`] wrote.
fn restore_arena(state: &StateMap, layer: usize, hidden: usize, neurons: usize) -> Result<LayerArena> {
    let rows = [neurons, 2 * hidden];
    let o = |what: &str| state.f32(&format!("optim.layers.{layer}.rows.{what}"), &rows);
    let row_steps = state.u64(&format!("optim.layers.{layer}.rows.row_steps"), &[neurons])?;
    let steps = state.scalar_u64(&format!("optim.layers.{layer}.rows.steps"))?;
    let params = state.f32(&format!("layers.{layer}.rows"), &rows)?;
    Ok(LayerArena::restore(hidden, params, o("m")?, o("v")?, row_steps, steps)?)
}
