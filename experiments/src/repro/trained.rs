//! A trained MEFT run opened again for routing studies: its keys and gates after training, and
//! the FFN inputs of its trained facts computed through its own adapter (the inputs the router
//! saw at the end of training).
//!
//! From these: recall@K of the trained router against exact retrieval over all M trained keys
//! (the same gated score, every expert probed), the routing time, and the union |U| a micro-batch
//! of B sequences selects, against B, with the trained keys (Fig. 8 after training).

use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use meft_router::{
    DenseConfig, ExpertLayout, GateSource, KeysView, RouteConfig, RouteInputs, RouteScratch, Rows, Scoring, dense_top_k, recall_at_k, route,
};
use serde::{Deserialize, Serialize};

use super::runs::{RunSpec, Runner};

/// Keys, gates and captured inputs of every adapted layer of a trained MEFT run.
pub struct TrainedRouting {
    /// Adapted layers.
    pub layers: Vec<usize>,
    /// Hidden size d.
    pub hidden: usize,
    /// The expert layout.
    pub layout: ExpertLayout,
    /// Experts probed per token.
    pub top_p: usize,
    /// Neurons kept per token.
    pub top_k: usize,
    /// Per layer: keys `M×d`.
    pub keys: Vec<Vec<f32>>,
    /// Per layer: gates `N×d`.
    pub gates: Vec<Vec<f32>>,
    /// Per layer: FFN inputs `T×d` of the captured sequences.
    pub inputs: Vec<Vec<f32>>,
    /// Tokens of each captured sequence, in order.
    pub seq_lens: Vec<usize>,
}

/// Recall and routing time of a router.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RouterQuality {
    /// recall@K against exact retrieval over all M keys (mean over layers).
    pub recall: f64,
    /// Routing time per 1,000 tokens and layer, milliseconds (measured, one thread).
    pub route_ms_per_1k: f64,
}

/// |U| of micro-batches of `batch` consecutive sequences.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UnionPoint {
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Mean real tokens per micro-batch.
    pub tokens: f64,
    /// Mean |U| over micro-batches and layers.
    pub union_rows: f64,
    /// `|U| / M`.
    pub fraction: f64,
}

impl TrainedRouting {
    /// Opens the finished run `spec` and captures the FFN inputs of its first `sequences`
    /// trained facts.
    pub fn load(runner: &Runner, spec: &RunSpec, sequences: usize) -> Result<Self> {
        let r = &spec.raw.meft;
        let (trainer, _) = runner.reopen(spec)?;
        if trainer.step() == 0 {
            bail!("run {} has no trained state to open (train it first)", spec.key);
        }
        let layers = trainer.plan().layers.clone();
        let state = trainer.adapter().export()?;
        let d = trainer.model().config.hidden_size;
        let layout = ExpertLayout::new(r.neurons, r.experts.max(1))?;
        let mut keys = Vec::new();
        let mut gates = Vec::new();
        for &l in &layers {
            let rows = state.f32(&format!("layers.{l}.rows"), &[r.neurons, 2 * d])?;
            keys.push(rows.chunks(2 * d).flat_map(|row| row[..d].iter().copied()).collect());
            gates.push(state.f32(&format!("layers.{l}.gates"), &[layout.experts(), d])?);
        }
        let (inputs, seq_lens) = trainer.ffn_inputs(&layers, sequences)?;
        Ok(Self { layers, hidden: d, layout, top_p: r.top_p, top_k: r.top_k, keys, gates, inputs, seq_lens })
    }

    /// The same inputs with the keys and gates the run started from (spec §4 initialisation from
    /// the run's `seed`): the router before training.
    pub fn initial(&self, seed: u64) -> Result<Self> {
        let (d, m) = (self.hidden, self.layout.neurons());
        let arenas = meft_offload::random_arenas(d, m, &self.layers, seed)?;
        let mut keys = Vec::new();
        let mut gates = Vec::new();
        for (_, arena) in &arenas {
            keys.push(arena.params().chunks(2 * d).flat_map(|row| row[..d].iter().copied()).collect::<Vec<f32>>());
            gates.push(meft_router::init_gates(&arena.keys()?, &self.layout)?);
        }
        Ok(Self {
            keys,
            gates,
            layers: self.layers.clone(),
            layout: self.layout,
            inputs: self.inputs.clone(),
            seq_lens: self.seq_lens.clone(),
            ..*self
        })
    }

    fn route_inputs<'a>(&'a self, layer: usize, rows: std::ops::Range<usize>) -> Result<RouteInputs<'a>> {
        let (d, m, n) = (self.hidden, self.layout.neurons(), self.layout.experts());
        let x = &self.inputs[layer][rows.start * d..rows.end * d];
        Ok(RouteInputs {
            x: Rows::new(x, rows.len(), d)?,
            keys: KeysView::f32(&self.keys[layer], m, d, d)?,
            gates: GateSource::Gates(Rows::new(&self.gates[layer], n, d)?),
        })
    }

    fn tokens(&self) -> usize {
        self.seq_lens.iter().sum()
    }

    /// The trained router's recall@K against exact gated retrieval, and its routing time.
    pub fn quality(&self) -> Result<RouterQuality> {
        let (mut recall, mut secs) = (0.0, 0.0);
        let mut scratch = RouteScratch::default();
        for l in 0..self.layers.len() {
            let inputs = self.route_inputs(l, 0..self.tokens())?;
            let start = Instant::now();
            let routed = route(&inputs, &self.layout, &RouteConfig::new(self.top_p, self.top_k), &mut scratch)?;
            secs += start.elapsed().as_secs_f64();
            let exact = dense_top_k(&inputs, &self.layout, &DenseConfig { top_k: self.top_k, scoring: Scoring::Gated })?;
            recall += recall_at_k(&routed, &exact);
        }
        let nl = self.layers.len().max(1) as f64;
        Ok(RouterQuality { recall: recall / nl, route_ms_per_1k: 1e6 * secs / (self.tokens() as f64 * nl).max(1.0) })
    }

    /// |U| against micro-batch size, with the trained keys and gates.
    pub fn union_vs_batch(&self, batches: &[usize]) -> Result<Vec<UnionPoint>> {
        let mut points = Vec::new();
        let mut scratch = RouteScratch::default();
        for &b in batches.iter().filter(|&&b| b >= 1 && b <= self.seq_lens.len()) {
            let (mut union, mut tokens, mut count) = (0.0, 0.0, 0usize);
            let mut start = 0;
            for chunk in self.seq_lens.chunks_exact(b) {
                let len: usize = chunk.iter().sum();
                for l in 0..self.layers.len() {
                    let inputs = self.route_inputs(l, start..start + len)?;
                    union += route(&inputs, &self.layout, &RouteConfig::new(self.top_p, self.top_k), &mut scratch)?.union().len() as f64;
                }
                (tokens, count, start) = (tokens + len as f64, count + 1, start + len);
            }
            let per = (count * self.layers.len()).max(1) as f64;
            points.push(UnionPoint {
                batch: b,
                tokens: tokens / count.max(1) as f64,
                union_rows: union / per,
                fraction: union / per / self.layout.neurons() as f64,
            });
        }
        if points.is_empty() {
            bail!("no batch size fits the {} captured sequences", self.seq_lens.len());
        }
        Ok(points)
    }
}

/// The unions per step and layer a run would select, for cache replays: micro-batches of
/// `batch` consecutive captured sequences, routed with the trained keys.
pub fn union_trace(t: &TrainedRouting, batch: usize) -> Result<Vec<Vec<Vec<u32>>>> {
    let mut steps = Vec::new();
    let mut scratch = RouteScratch::default();
    let mut start = 0;
    for chunk in t.seq_lens.chunks_exact(batch.max(1)) {
        let len: usize = chunk.iter().sum();
        let mut layers = Vec::new();
        for l in 0..t.layers.len() {
            let inputs = t.route_inputs(l, start..start + len).context("routing a captured micro-batch")?;
            layers.push(route(&inputs, &t.layout, &RouteConfig::new(t.top_p, t.top_k), &mut scratch)?.union().to_vec());
        }
        steps.push(layers);
        start += len;
    }
    Ok(steps)
}
