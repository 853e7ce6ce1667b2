//! The offloaded MEFT adapter: an [`AdapterHook`] whose rows live in host memory (spec §5).
//!
//! # The step sequence
//! The hook is called during the forward pass, but gradients exist only after `loss.backward()`,
//! so the adapter works in phases, with interior-mutable state between them:
//!
//! 1. **Forward** — the model calls [`AdapterHook::ffn`] for every layer ℓ. If ℓ + p is adapted
//!    (pre-look distance p ≥ 1), the adapter first dispatches routing for ℓ + p from this x.
//!    If ℓ is adapted it obtains ℓ's routing (prefetched, or computed now from x when p = 0 or
//!    ℓ < p), gathers the union's bundled rows into the layer's staging buffer, copies them into a
//!    fresh device working-set variable (`|U|×2d`), evaluates the sparse adapter with candle autograd
//!    and records the working set for backward.
//! 2. **Backward** — the caller runs `loss.backward()` and passes the gradient store to
//!    [`MeftAdapter::finish_backward`], which copies each working set's gradient to the host and
//!    scatter-adds it into the layer's accumulator, and accumulates the gate gradients on the device.
//!    Repeat 1–2 for every micro-batch of an optimizer step (gradient accumulation).
//! 3. **Step** — [`MeftAdapter::step`] runs the host AdamW (dense or lazy) over every layer's rows and
//!    the device AdamW over the gates, clears the accumulators and appends a [`StepRecord`] to the
//!    ledger. [`MeftAdapter::discard_forward`] drops a forward's records without backward (evaluation).
//!
//! # Non-finite gradients
//! Policy: **skip the step and count it.** `finish_backward` scans each arriving row gradient and
//! gate gradient; a NaN or infinity marks the step poisoned (the bad gradient is not accumulated).
//! The next `step` then updates nothing — no host row, moment or step counter, no gate — clears every
//! accumulator, returns [`StepStatus::SkippedNonFinite`] and counts it in
//! [`MeftAdapter::skipped_steps`]. The ledger records the step with that status.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Tensor, Var};
use meft_core::adapters::DeviceAdamW;
use meft_core::sparse::{Evaluation, GateInput, SparseIndex, SparseSelection, sparse_activation_bytes, sparse_adapter_forward};
use meft_core::sparse_fused::{PairIndex, fused_activation_bytes, sparse_adapter_fused};
use meft_core::{AdapterHook, LinearSite};
use meft_router::{Capacity, ExpertLayout, FiniteCheck, RouteConfig, RouteScratch, Scoring, init_gates};

use crate::device::{Category, OffloadDevice};
use crate::error::{OffloadError, Result};
use crate::host::{HostStore, LayerArena, random_arenas};
use crate::ledger::{Ledger, TimeSource};
use crate::plan::{MeftConfig, OffloadPlan, PrefetchMode};
use crate::routing::{Prefetcher, RouteContext, RouteJob, Routed, route_job};
use crate::step::{Pending, StepState, selection};

/// The MEFT sparse adapter with host-resident rows; see the module docs for the call sequence.
#[derive(Debug)]
pub struct MeftAdapter {
    pub(crate) cfg: MeftConfig,
    pub(crate) plan: OffloadPlan,
    pub(crate) device: Arc<OffloadDevice>,
    pub(crate) ctx: Arc<RouteContext>,
    pub(crate) gates: BTreeMap<usize, Var>,
    pub(crate) gate_opt: DeviceAdamW,
    pub(crate) staging: BTreeMap<usize, Mutex<Vec<f32>>>,
    pub(crate) state: Mutex<StepState>,
    pub(crate) ledger: Ledger,
    prefetcher: Option<Prefetcher>,
    inline_scratch: Mutex<RouteScratch>,
}

impl MeftAdapter {
    /// An adapter with spec §4 initialisation: keys ~ N(0, 0.02) from `seed`, values 0,
    /// gates = 50 × mean of each expert's keys.
    pub fn init(cfg: MeftConfig, plan: OffloadPlan, device: Arc<OffloadDevice>, seed: u64) -> Result<Self> {
        let layers: Vec<usize> = plan.layers.iter().map(|l| l.layer).collect();
        let arenas = random_arenas(cfg.hidden, cfg.neurons, &layers, seed)?;
        Self::from_arenas(cfg, plan, device, arenas)
    }

    /// An adapter over given host arenas (one per planned layer, in plan order).
    pub fn from_arenas(cfg: MeftConfig, plan: OffloadPlan, device: Arc<OffloadDevice>, arenas: Vec<(usize, LayerArena)>) -> Result<Self> {
        plan.validate(&cfg)?;
        let layout = ExpertLayout::new(cfg.neurons, cfg.experts)?;
        check_arenas(&cfg, &plan, &arenas)?;
        let store = Arc::new(HostStore::new(arenas));
        let mut configs = BTreeMap::new();
        let mut gates = BTreeMap::new();
        let mut staging = BTreeMap::new();
        for l in &plan.layers {
            let rc = RouteConfig {
                top_p: cfg.top_p,
                top_k: cfg.top_k,
                scoring: cfg.scoring,
                capacity: Capacity::Rows(l.capacity),
                finite_check: FiniteCheck::Scored,
            };
            rc.validate(&layout)?;
            configs.insert(l.layer, rc);
            let arena = store.layer(l.layer).ok_or_else(|| missing(l.layer))?;
            let g = init_gates(&arena.read().unwrap_or_else(|e| e.into_inner()).keys()?, &layout)?;
            gates.insert(l.layer, Var::from_slice(&g, (cfg.experts, cfg.hidden), device.candle())?);
            staging.insert(l.layer, Mutex::new(vec![0f32; l.staging_rows * 2 * cfg.hidden]));
            let ws_bytes = l.capacity as u64 * cfg.row_bytes();
            device.set_usage(&format!("working_set.layer{}", l.layer), Category::WorkingSets, ws_bytes)?;
            let gate_bytes = 3 * (cfg.experts * cfg.hidden * 4) as u64;
            device.set_usage(&format!("gates.layer{}", l.layer), Category::DeviceOptimizer, gate_bytes)?;
        }
        let gate_opt = DeviceAdamW::new(cfg.adamw, gates.values().cloned())?;
        let ctx = Arc::new(RouteContext { store, layout, configs, hidden: cfg.hidden });
        let prefetcher = match (plan.pre_look, plan.prefetch) {
            (1.., PrefetchMode::Worker) => Some(Prefetcher::spawn(ctx.clone())?),
            _ => None,
        };
        Ok(Self {
            cfg,
            plan,
            device,
            ctx,
            gates,
            gate_opt,
            staging,
            state: Mutex::new(StepState::default()),
            ledger: Ledger::default(),
            prefetcher,
            inline_scratch: Mutex::new(RouteScratch::default()),
        })
    }

    /// The adapter configuration.
    pub fn config(&self) -> &MeftConfig {
        &self.cfg
    }

    /// The offload plan.
    pub fn plan(&self) -> &OffloadPlan {
        &self.plan
    }

    /// The host store (rows, moments, accumulators).
    pub fn store(&self) -> &HostStore {
        &self.ctx.store
    }

    /// The expert layout.
    pub fn layout(&self) -> &ExpertLayout {
        &self.ctx.layout
    }

    /// The device gate matrix of `layer` (`N×d`).
    pub fn gates(&self, layer: usize) -> Option<&Var> {
        self.gates.get(&layer)
    }

    /// The ledger of finished steps.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Replaces the ledger with `ledger`, the one a checkpoint saved (a resumed run keeps the
    /// records of the steps before the resume).
    pub fn restore_ledger(&mut self, ledger: Ledger) {
        self.ledger = ledger;
    }

    fn adapted(&self, layer: usize) -> bool {
        self.gates.contains_key(&layer)
    }

    pub(crate) fn lock_state(&self) -> std::sync::MutexGuard<'_, StepState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies x (`T×d`) and its gate scores `G_target·x` to the host as a routing job for `target`.
    fn make_job(&self, target: usize, x: &Tensor) -> Result<RouteJob> {
        let gates = self.gates.get(&target).ok_or_else(|| missing(target))?;
        let scores = x.matmul(&gates.as_detached_tensor().t()?)?;
        let x_host = x.flatten_all()?.to_vec1::<f32>()?;
        let gate_scores = scores.flatten_all()?.to_vec1::<f32>()?;
        let mut st = self.lock_state();
        let seq = st.next_seq();
        let bytes = 4 * (x_host.len() + gate_scores.len()) as u64;
        let rec = st.record(target, self.link_source(), self.full_offload_bytes());
        rec.route_input_bytes += bytes;
        rec.link_time_s += self.plan.link.transfer_s(bytes);
        Ok(RouteJob { layer: target, seq, tokens: x.dim(0)?, x: x_host, gate_scores })
    }

    /// Pre-look: queues routing for `target` on the worker, or defers it to when `target` is reached.
    fn dispatch(&self, target: usize, x: &Tensor) -> Result<()> {
        let job = self.make_job(target, x)?;
        match &self.prefetcher {
            Some(p) => {
                self.lock_state().in_flight.insert(target, job.seq);
                p.submit(job)
            }
            None => {
                self.lock_state().deferred.insert(target, job);
                Ok(())
            }
        }
    }

    /// Routing for `layer`: prefetched, deferred (inline pre-look) or computed now from `x`.
    fn routing_for(&self, layer: usize, x: &Tensor) -> Result<Routed> {
        let (in_flight, deferred) = {
            let mut st = self.lock_state();
            (st.in_flight.remove(&layer), st.deferred.remove(&layer))
        };
        let mut wait_ns = 0;
        let mut routed = match (in_flight, &self.prefetcher, deferred) {
            (Some(seq), Some(p), _) => {
                let start = Instant::now();
                let r = p.wait(layer, seq)?;
                wait_ns = start.elapsed().as_nanos() as u64;
                r
            }
            (_, _, Some(job)) => self.route_inline(job)?,
            // p = 0, or ℓ < p: route from this layer's own input.
            _ => self.route_inline(self.make_job(layer, x)?)?,
        };
        let mut st = self.lock_state();
        let rec = st.record(layer, self.link_source(), self.full_offload_bytes());
        rec.host.route_ns += std::mem::take(&mut routed.route_ns);
        rec.host.route_wait_ns += wait_ns;
        Ok(routed)
    }

    fn route_inline(&self, job: RouteJob) -> Result<Routed> {
        let mut scratch = self.inline_scratch.lock().unwrap_or_else(|e| e.into_inner());
        route_job(&self.ctx, &mut scratch, job)
    }

    pub(crate) fn link_source(&self) -> TimeSource {
        match self.device.kind() {
            crate::DeviceKind::Cuda { .. } => TimeSource::Measured,
            crate::DeviceKind::Cpu | crate::DeviceKind::Simulated { .. } => TimeSource::Modelled,
        }
    }

    /// Full-offload bytes of one layer per step: `2·M·2d·4`.
    pub(crate) fn full_offload_bytes(&self) -> u64 {
        2 * self.cfg.neurons as u64 * self.cfg.row_bytes()
    }

    /// The adapted forward of one layer on `x` (`T×d`, f32).
    fn forward_layer(&self, layer: usize, x: &Tensor) -> Result<Tensor> {
        let routed = self.routing_for(layer, x)?;
        let (ids, sel, drops) = selection(&routed.routing, &self.ctx.layout, self.cfg.evaluation);
        let (u, two_d) = (ids.len(), 2 * self.cfg.hidden);
        let t0 = Instant::now();
        let staging = self.staging.get(&layer).ok_or_else(|| missing(layer))?;
        let mut staging = staging.lock().unwrap_or_else(|e| e.into_inner());
        {
            let arena = self.ctx.store.layer(layer).ok_or_else(|| missing(layer))?;
            arena.read().unwrap_or_else(|e| e.into_inner()).gather(&ids, &mut staging[..u * two_d])?;
        }
        let t1 = Instant::now();
        let ws = Var::from_slice(&staging[..u * two_d], (u, two_d), self.device.candle())?;
        drop(staging);
        let t2 = Instant::now();
        let gate_var = self.gates.get(&layer).ok_or_else(|| missing(layer))?;
        let (y, act) = self.sparse_output(x, &ws, gate_var, &sel)?;
        let act = act + 2 * (u * two_d * 4) as u64;
        self.device.set_usage(&format!("activations.meft.layer{layer}"), Category::Activations, act)?;
        let bytes = (u * two_d * 4) as u64;
        let mut st = self.lock_state();
        let rec = st.record(layer, self.link_source(), self.full_offload_bytes());
        rec.micro_batches += 1;
        rec.tokens += sel.tokens;
        rec.union_rows += u;
        rec.drops += drops;
        rec.h2d_bytes += bytes;
        rec.host.gather_ns += (t1 - t0).as_nanos() as u64;
        rec.host.h2d_ns += (t2 - t1).as_nanos() as u64;
        rec.link_time_s += self.plan.link.transfer_s(bytes);
        if st.pending.insert(layer, Pending { ws, ids, gate: gate_var.clone() }).is_some() {
            return Err(OffloadError::Sequence(format!(
                "layer {layer} was run forward twice without finish_backward; call finish_backward after each \
                 backward pass, or discard_forward after an evaluation forward"
            )));
        }
        Ok(y)
    }

    /// The sparse adapter output on the working set `ws`, and the activation bytes it keeps:
    /// per-token evaluation on the CPU as one fused node over the selected pairs
    /// ([`sparse_adapter_fused`]), union evaluation (or another device) through the candle graph.
    fn sparse_output(&self, x: &Tensor, ws: &Var, gate_var: &Var, sel: &SparseSelection) -> Result<(Tensor, u64)> {
        let d = self.cfg.hidden;
        let gate_experts = match self.cfg.scoring {
            Scoring::Gated => self.cfg.experts,
            Scoring::Plain => 0,
        };
        if sel.evaluation == Evaluation::PerToken && x.device().is_cpu() {
            let index = Arc::new(PairIndex::new(sel, self.cfg.experts)?);
            let act = fused_activation_bytes(index.len(), sel.tokens, gate_experts);
            let gates = (self.cfg.scoring == Scoring::Gated).then(|| gate_var.as_tensor());
            return Ok((sparse_adapter_fused(x, ws.as_tensor(), gates, index)?, act));
        }
        let keys = ws.as_tensor().narrow(1, 0, d)?.contiguous()?;
        let values = ws.as_tensor().narrow(1, d, d)?.contiguous()?;
        let index = SparseIndex::new(sel, self.cfg.experts, self.device.candle())?;
        let gate = match self.cfg.scoring {
            Scoring::Gated => GateInput::Gated(gate_var.as_tensor()),
            Scoring::Plain => GateInput::Plain,
        };
        let y = sparse_adapter_forward(x, &keys, &values, gate, &index)?;
        Ok((y, sparse_activation_bytes(sel.tokens, sel.rows(), gate_experts, d, DType::F32)))
    }

    fn ffn_impl(&self, layer: usize, x: &Tensor) -> Result<Option<Tensor>> {
        let target = layer + self.plan.pre_look;
        let wants_dispatch = self.plan.pre_look > 0 && self.adapted(target);
        if !wants_dispatch && !self.adapted(layer) {
            return Ok(None);
        }
        let d = self.cfg.hidden;
        let flat = x.reshape(((), d))?.to_dtype(DType::F32)?;
        if wants_dispatch {
            self.dispatch(target, &flat.detach())?;
        }
        if !self.adapted(layer) {
            return Ok(None);
        }
        let y = self.forward_layer(layer, &flat)?;
        Ok(Some(y.to_dtype(x.dtype())?.reshape(x.shape())?))
    }
}

impl AdapterHook for MeftAdapter {
    fn ffn(&self, layer: usize, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        self.ffn_impl(layer, x).map_err(candle_core::Error::wrap)
    }

    fn linear(&self, _layer: usize, _site: LinearSite, _x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(None)
    }

    fn adapts_projections(&self, _layer: usize) -> bool {
        false
    }
}

pub(crate) fn missing(layer: usize) -> OffloadError {
    OffloadError::Sequence(format!("layer {layer} is not adapted"))
}

fn check_arenas(cfg: &MeftConfig, plan: &OffloadPlan, arenas: &[(usize, LayerArena)]) -> Result<()> {
    let planned: Vec<usize> = plan.layers.iter().map(|l| l.layer).collect();
    let given: Vec<usize> = arenas.iter().map(|a| a.0).collect();
    if planned != given {
        return Err(OffloadError::plan(
            "layers",
            format!("plan lists {planned:?} but host arenas were given for {given:?}"),
            "give one arena per planned layer, in plan order",
        ));
    }
    for (l, a) in arenas {
        if a.rows() != cfg.neurons || a.row_len() != 2 * cfg.hidden {
            return Err(OffloadError::plan(
                format!("host arena of layer {l}"),
                format!("has {} rows of {} but the config says M = {}, 2d = {}", a.rows(), a.row_len(), cfg.neurons, 2 * cfg.hidden),
                "build arenas with the configured M and d",
            ));
        }
    }
    Ok(())
}
