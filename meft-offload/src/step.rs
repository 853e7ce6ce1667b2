//! After the forward: gradients back to the host, the optimizer step, and the step's ledger record.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use meft_core::optim::first_non_finite;
use meft_core::sparse::{Evaluation, SparseSelection};
use meft_router::{DROPPED, ExpertLayout, Routing};

use crate::adapter::{MeftAdapter, missing};
use crate::error::Result;
use crate::ledger::{LayerRecord, StepRecord, StepStatus, TimeSource};
use crate::routing::RouteJob;

/// A forward's record of one layer, waiting for its gradient.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The device working set (`|U|×2d`).
    pub ws: Var,
    /// Neuron id of each working-set row (the sorted union U).
    pub ids: Vec<u32>,
    /// The layer's gate variable.
    pub gate: Var,
}

/// Interior-mutable state between forward, backward and step.
#[derive(Debug, Default)]
pub(crate) struct StepState {
    pub pending: BTreeMap<usize, Pending>,
    pub in_flight: BTreeMap<usize, u64>,
    pub deferred: BTreeMap<usize, RouteJob>,
    pub records: BTreeMap<usize, LayerRecord>,
    pub gate_grads: BTreeMap<usize, Tensor>,
    pub non_finite: Option<String>,
    pub skipped_steps: u64,
    seq: u64,
}

impl StepState {
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn record(&mut self, layer: usize, source: TimeSource, full_offload_bytes: u64) -> &mut LayerRecord {
        self.records.entry(layer).or_insert_with(|| LayerRecord::new(layer, source, full_offload_bytes))
    }
}

/// The union, the device-side selection and the drop count of a routing result.
pub(crate) fn selection(r: &Routing, layout: &ExpertLayout, evaluation: Evaluation) -> (Vec<u32>, SparseSelection, usize) {
    let ids = r.union().to_vec();
    let row_expert = ids.iter().map(|&id| layout.expert_of(id as usize) as u32).collect();
    let mut pairs = Vec::new();
    if evaluation == Evaluation::PerToken {
        for t in 0..r.tokens() {
            pairs.extend(r.token_slots(t).iter().filter(|&&s| s != DROPPED).map(|&s| (t as u32, s)));
        }
    }
    let sel = SparseSelection { tokens: r.tokens(), row_expert, pairs, evaluation };
    (ids, sel, r.stats().dropped)
}

impl MeftAdapter {
    /// After `loss.backward()`: copies every recorded working set's gradient to the host and
    /// scatter-adds it into the layer's accumulator; accumulates gate gradients on the device.
    ///
    /// A working set without a gradient (the loss did not depend on it) contributes nothing.
    pub fn finish_backward(&self, grads: &GradStore) -> Result<()> {
        let pending = std::mem::take(&mut self.lock_state().pending);
        for (layer, p) in pending {
            self.device.release(&format!("activations.meft.layer{layer}"));
            let t0 = Instant::now();
            let host = match grads.get(p.ws.as_tensor()) {
                Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                None => Vec::new(),
            };
            let t1 = Instant::now();
            let bytes = 4 * host.len() as u64;
            let bad_rows = first_non_finite(&host).map(|i| format!("layer {layer} row gradient element {i}"));
            if bad_rows.is_none() && !host.is_empty() {
                let arena = self.ctx.store.layer(layer).ok_or_else(|| missing(layer))?;
                arena.write().unwrap_or_else(|e| e.into_inner()).accumulate(&p.ids, &host)?;
            }
            let t2 = Instant::now();
            let gate_grad = grads.get(p.gate.as_tensor()).map(|g| g.detach());
            let bad_gate = match &gate_grad {
                Some(g) => first_non_finite(&g.flatten_all()?.to_vec1::<f32>()?).map(|i| format!("layer {layer} gate gradient element {i}")),
                None => None,
            };
            let mut st = self.lock_state();
            if let Some(what) = bad_rows.or(bad_gate) {
                st.non_finite.get_or_insert(what);
            } else if let Some(g) = gate_grad {
                let sum = match st.gate_grads.remove(&layer) {
                    Some(prev) => (prev + g)?,
                    None => g,
                };
                st.gate_grads.insert(layer, sum);
            }
            let rec = st.record(layer, self.link_source(), self.full_offload_bytes());
            rec.d2h_bytes += bytes;
            rec.link_time_s += self.plan.link.transfer_s(bytes);
            rec.host.d2h_ns += (t1 - t0).as_nanos() as u64;
            rec.host.scatter_ns += (t2 - t1).as_nanos() as u64;
        }
        Ok(())
    }

    /// Drops the records of a forward that will not be followed by a backward (evaluation).
    pub fn discard_forward(&self) {
        let mut st = self.lock_state();
        for layer in std::mem::take(&mut st.pending).into_keys() {
            self.device.release(&format!("activations.meft.layer{layer}"));
        }
        st.in_flight.clear();
        st.deferred.clear();
        st.records.clear();
    }

    /// The optimizer step: host AdamW over every layer's rows, device AdamW over the gates;
    /// clears the accumulators and appends the step to the ledger. See the module docs of
    /// [`crate::adapter`] for the non-finite policy.
    pub fn step(&mut self) -> Result<StepStatus> {
        let (poisoned, gate_grads) = {
            let mut st = self.lock_state();
            (st.non_finite.take(), std::mem::take(&mut st.gate_grads))
        };
        let status = if poisoned.is_some() { StepStatus::SkippedNonFinite } else { StepStatus::Applied };
        let mut adamw_ns = BTreeMap::new();
        for (layer, arena) in self.ctx.store.layers() {
            let start = Instant::now();
            let mut arena = arena.write().unwrap_or_else(|e| e.into_inner());
            match status {
                StepStatus::Applied => arena.step(&self.cfg.adamw, self.cfg.host_optimizer)?,
                StepStatus::SkippedNonFinite => arena.clear_grads()?,
            }
            adamw_ns.insert(layer, start.elapsed().as_nanos() as u64);
        }
        if status == StepStatus::Applied {
            let mut store = GradStore::default();
            for (layer, g) in gate_grads {
                let var = self.gates.get(&layer).ok_or_else(|| missing(layer))?;
                store.insert(var.as_tensor(), g);
            }
            self.gate_opt.step(&store)?;
        }
        let mut st = self.lock_state();
        if status == StepStatus::SkippedNonFinite {
            st.skipped_steps += 1;
        }
        let mut records = std::mem::take(&mut st.records);
        drop(st);
        let layers = self
            .plan
            .layers
            .iter()
            .map(|l| {
                let mut rec = records.remove(&l.layer).unwrap_or_else(|| LayerRecord::new(l.layer, self.link_source(), self.full_offload_bytes()));
                rec.host.adamw_ns = adamw_ns.get(&l.layer).copied().unwrap_or(0);
                rec
            })
            .collect();
        let step = self.ledger.steps.len() as u64 + 1;
        self.ledger.steps.push(StepRecord { step, status, layers, device: self.device.report() });
        self.device.reset_peak();
        Ok(status)
    }

    /// Steps skipped because of a non-finite gradient.
    pub fn skipped_steps(&self) -> u64 {
        self.lock_state().skipped_steps
    }

    /// Sets the learning rate of the host and device optimizers (for schedules).
    pub fn set_lr(&mut self, lr: f64) {
        self.cfg.adamw.lr = lr;
        self.gate_opt.set_lr(lr);
    }
}
