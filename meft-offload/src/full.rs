//! The full-offload baseline (ZeRO-Offload style, spec §5): the same `M`-neuron adapter as MEFT
//! in host memory, but every row crosses the link every step.
//!
//! Per adapted layer and micro-batch, the forward copies all `M` bundled rows `[k_i | v_i]` to the
//! device and evaluates the dense adapter `act(x·Kᵀ)·V` there (the Parallel Adapter's math,
//! [`parallel_forward`]); after `loss.backward()` [`FullOffloadAdapter::finish_backward`] copies the
//! whole `M×2d` gradient back and adds it to the host accumulator; [`FullOffloadAdapter::step`]
//! runs the host AdamW (dense, exactly torch AdamW) over every row. Each copy is counted as it is
//! made, so [`FullOffloadStep`] reports the bytes this adapter really moved: `2·M·2d·4` per layer
//! and micro-batch.
//!
//! Non-finite gradients follow MEFT's policy: the step is skipped (nothing written) and counted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use meft_core::adapters::{Activation, parallel_forward};
use meft_core::optim::{AdamWConfig, first_non_finite};
use meft_core::{AdapterHook, LinearSite};

use crate::device::{Category, OffloadDevice};
use crate::error::{OffloadError, Result};
use crate::host::{HostStore, LayerArena};
use crate::ledger::StepStatus;
use crate::plan::HostOptimizer;

/// Bytes one [`FullOffloadAdapter`] step moved, and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FullOffloadStep {
    /// Host→device bytes (every row of every adapted layer, per micro-batch).
    pub h2d_bytes: u64,
    /// Device→host bytes (every row gradient).
    pub d2h_bytes: u64,
    /// Applied, or skipped for a non-finite gradient.
    pub status: StepStatus,
}

#[derive(Debug, Default)]
struct State {
    /// The device copy of each layer's rows, waiting for its gradient.
    pending: BTreeMap<usize, Var>,
    h2d_bytes: u64,
    d2h_bytes: u64,
    non_finite: Option<String>,
    skipped_steps: u64,
}

/// The full-offload adapter; call sequence as [`crate::MeftAdapter`]: forward (hook),
/// `finish_backward`, `step`.
#[derive(Debug)]
pub struct FullOffloadAdapter {
    hidden: usize,
    act: Activation,
    adamw: AdamWConfig,
    store: HostStore,
    all_rows: Vec<u32>,
    device: Arc<OffloadDevice>,
    state: Mutex<State>,
}

impl FullOffloadAdapter {
    /// An adapter over host `arenas` (one per adapted layer, all of `M` rows of `2·hidden`).
    pub fn new(hidden: usize, act: Activation, adamw: AdamWConfig, arenas: Vec<(usize, LayerArena)>, device: Arc<OffloadDevice>) -> Result<Self> {
        adamw.validate().map_err(|e| OffloadError::plan("adamw", e.to_string(), "fix the optimizer config"))?;
        let rows =
            arenas.first().map(|(_, a)| a.rows()).ok_or_else(|| OffloadError::plan("layers", "is empty", "list at least one adapted layer"))?;
        if let Some((l, a)) = arenas.iter().find(|(_, a)| a.rows() != rows || a.row_len() != 2 * hidden) {
            return Err(OffloadError::plan(
                format!("host arena of layer {l}"),
                format!("has {} rows of {}, expected {rows} rows of {}", a.rows(), a.row_len(), 2 * hidden),
                "give every layer the same M and d = the model's hidden size",
            ));
        }
        let all_rows = (0..rows as u32).collect();
        let store = HostStore::new(arenas);
        Ok(Self { hidden, act, adamw, store, all_rows, device, state: Mutex::new(State::default()) })
    }

    /// The host store (rows, moments, accumulators).
    pub fn store(&self) -> &HostStore {
        &self.store
    }

    /// Neurons per layer M.
    pub fn neurons(&self) -> usize {
        self.all_rows.len()
    }

    /// Hidden size d.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// The adapter's activation.
    pub fn activation(&self) -> Activation {
        self.act
    }

    /// Sets the learning rate of the host AdamW.
    pub fn set_lr(&mut self, lr: f64) {
        self.adamw.lr = lr;
    }

    /// The host optimizer's settings.
    pub fn adamw(&self) -> &AdamWConfig {
        &self.adamw
    }

    /// Steps skipped because of a non-finite gradient.
    pub fn skipped_steps(&self) -> u64 {
        self.lock().skipped_steps
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn arena(&self, layer: usize) -> Result<&std::sync::RwLock<LayerArena>> {
        self.store.layer(layer).ok_or_else(|| OffloadError::Sequence(format!("layer {layer} is not adapted")))
    }

    /// Copies every row of `layer` to the device and evaluates the dense adapter on `x` (`(.., d)`).
    fn forward_layer(&self, layer: usize, x: &Tensor) -> Result<Tensor> {
        let (m, two_d) = (self.neurons(), 2 * self.hidden);
        let rows = {
            let arena = self.arena(layer)?.read().unwrap_or_else(|e| e.into_inner());
            Var::from_slice(arena.params(), (m, two_d), self.device.candle())?
        };
        let bytes = (m * two_d * 4) as u64;
        let keys = rows.as_tensor().narrow(1, 0, self.hidden)?;
        let values = rows.as_tensor().narrow(1, self.hidden, self.hidden)?;
        let y = parallel_forward(self.act, x, &keys, &values)?;
        let tokens = x.elem_count() / self.hidden;
        self.device.set_usage(&format!("full_offload.rows.layer{layer}"), Category::WorkingSets, 2 * bytes)?;
        self.device.set_usage(&format!("full_offload.activations.layer{layer}"), Category::Activations, 2 * (tokens * m * 4) as u64)?;
        let mut st = self.lock();
        st.h2d_bytes += bytes;
        if st.pending.insert(layer, rows).is_some() {
            return Err(OffloadError::Sequence(format!(
                "layer {layer} was run forward twice without finish_backward; call finish_backward after each backward pass, \
                 or discard_forward after an evaluation forward"
            )));
        }
        Ok(y)
    }

    /// After `loss.backward()`: copies every layer's row gradient to the host and adds it to the
    /// accumulator (a layer the loss did not reach contributes nothing).
    pub fn finish_backward(&self, grads: &GradStore) -> Result<()> {
        let pending = std::mem::take(&mut self.lock().pending);
        for (layer, rows) in pending {
            self.release(layer);
            let Some(g) = grads.get(rows.as_tensor()) else { continue };
            let host = g.flatten_all()?.to_vec1::<f32>()?;
            let mut st = self.lock();
            st.d2h_bytes += 4 * host.len() as u64;
            if let Some(i) = first_non_finite(&host) {
                st.non_finite.get_or_insert(format!("layer {layer} row gradient element {i}"));
                continue;
            }
            drop(st);
            self.arena(layer)?.write().unwrap_or_else(|e| e.into_inner()).accumulate(&self.all_rows, &host)?;
        }
        Ok(())
    }

    fn release(&self, layer: usize) {
        self.device.release(&format!("full_offload.rows.layer{layer}"));
        self.device.release(&format!("full_offload.activations.layer{layer}"));
    }

    /// Drops the device copies of a forward that will not be followed by a backward.
    pub fn discard_forward(&self) {
        for layer in std::mem::take(&mut self.lock().pending).into_keys() {
            self.release(layer);
        }
    }

    /// Sum of squares of the accumulated gradients over every layer.
    pub fn grad_sq_norm(&self) -> f64 {
        self.store.layers().map(|(_, a)| a.read().unwrap_or_else(|e| e.into_inner()).grad_sq_norm()).sum()
    }

    /// Multiplies the accumulated gradients by `factor` (clipping).
    pub fn scale_grads(&mut self, factor: f64) {
        for (_, a) in self.store.layers() {
            a.write().unwrap_or_else(|e| e.into_inner()).scale_grads(factor as f32);
        }
    }

    /// Host AdamW over every row of every layer (skipped when a gradient was non-finite); returns
    /// the bytes moved since the previous step.
    pub fn step(&mut self) -> Result<FullOffloadStep> {
        let mut st = self.lock();
        let status = match st.non_finite.take() {
            Some(_) => StepStatus::SkippedNonFinite,
            None => StepStatus::Applied,
        };
        st.skipped_steps += u64::from(status == StepStatus::SkippedNonFinite);
        let out = FullOffloadStep { h2d_bytes: std::mem::take(&mut st.h2d_bytes), d2h_bytes: std::mem::take(&mut st.d2h_bytes), status };
        drop(st);
        for (_, arena) in self.store.layers() {
            let mut arena = arena.write().unwrap_or_else(|e| e.into_inner());
            match status {
                StepStatus::Applied => arena.step(&self.adamw, HostOptimizer::Dense)?,
                StepStatus::SkippedNonFinite => arena.clear_grads()?,
            }
        }
        Ok(out)
    }
}

impl AdapterHook for FullOffloadAdapter {
    /// `x` may be in the model's dtype (e.g. `bf16`): [`parallel_forward`] computes in `f32`
    /// and returns `x`'s dtype and shape.
    fn ffn(&self, layer: usize, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if self.store.layer(layer).is_none() {
            return Ok(None);
        }
        self.forward_layer(layer, x).map(Some).map_err(candle_core::Error::wrap)
    }

    fn linear(&self, _layer: usize, _site: LinearSite, _x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(None)
    }

    fn adapts_projections(&self, _layer: usize) -> bool {
        false
    }
}
