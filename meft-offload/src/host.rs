//! The host store: every adapted layer's rows and optimizer state in host memory (spec §5).
//!
//! One [`LayerArena`] per adapted layer holds, as flat `f32` arrays of `M` rows of `2d`:
//! the bundled parameters `[k_i | v_i]` (a neuron's key and value adjacent, so one contiguous copy
//! moves a whole neuron), both AdamW moments and the gradient accumulator; plus per-row step
//! counters (lazy AdamW) and the set of rows touched since the last optimizer step.
//!
//! Without the `cuda` feature the arrays are ordinary heap memory (there is no device to pin for).

use meft_core::optim::{AdamWBuffers, AdamWConfig, FiniteCheck, StepOutcome, adamw_dense, adamw_lazy_rows};
use meft_core::rows::{gather_rows, scatter_add_rows, zero_rows};
use meft_router::KeysView;

use crate::error::{OffloadError, Result};
use crate::plan::HostOptimizer;

/// One adapted layer's host-resident state.
#[derive(Debug)]
pub struct LayerArena {
    hidden: usize,
    rows: usize,
    params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    grads: Vec<f32>,
    row_steps: Vec<u64>,
    touched: Vec<bool>,
    touched_ids: Vec<u32>,
    steps: u64,
}

impl LayerArena {
    /// An arena from keys and values (`M×d` each, row-major); moments and gradients zero.
    pub fn new(hidden: usize, keys: &[f32], values: &[f32]) -> Result<Self> {
        if hidden == 0 || !keys.len().is_multiple_of(hidden) || keys.len() != values.len() {
            return Err(OffloadError::plan(
                "host store",
                format!("keys ({}) and values ({}) are not two M×{hidden} matrices", keys.len(), values.len()),
                "pass row-major keys and values of the same M×d shape",
            ));
        }
        let rows = keys.len() / hidden;
        let mut params = vec![0f32; rows * 2 * hidden];
        for (i, row) in params.chunks_exact_mut(2 * hidden).enumerate() {
            row[..hidden].copy_from_slice(&keys[i * hidden..(i + 1) * hidden]);
            row[hidden..].copy_from_slice(&values[i * hidden..(i + 1) * hidden]);
        }
        let n = params.len();
        Ok(Self {
            hidden,
            rows,
            params,
            m: vec![0.0; n],
            v: vec![0.0; n],
            grads: vec![0.0; n],
            row_steps: vec![0; rows],
            touched: vec![false; rows],
            touched_ids: Vec::new(),
            steps: 0,
        })
    }

    /// Neurons M.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bundled row length 2d.
    pub fn row_len(&self) -> usize {
        2 * self.hidden
    }

    /// The bundled parameters, `M` rows of `[k | v]`.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The gradient accumulator (same layout as [`Self::params`]).
    pub fn grads(&self) -> &[f32] {
        &self.grads
    }

    /// The AdamW moments `(m, v)` (same layout as [`Self::params`]).
    pub fn moments(&self) -> (&[f32], &[f32]) {
        (&self.m, &self.v)
    }

    /// Dense AdamW steps taken (the shared step count of the dense rule).
    pub fn dense_steps(&self) -> u64 {
        self.steps
    }

    /// Per-row AdamW step counts (advanced by lazy steps only).
    pub fn row_steps(&self) -> &[u64] {
        &self.row_steps
    }

    /// Keys as a strided view for the router.
    pub fn keys(&self) -> Result<KeysView<'_>> {
        Ok(KeysView::f32(&self.params, self.rows, self.hidden, 2 * self.hidden)?)
    }

    /// Rows touched since the last optimizer step, in the order first touched.
    pub fn touched(&self) -> &[u32] {
        &self.touched_ids
    }

    /// Host bytes of the arena (params, moments, gradients, step counters).
    pub fn bytes(&self) -> u64 {
        (4 * self.params.len() * 4 + self.rows * 8 + self.rows) as u64
    }

    /// Copies the bundled rows `ids` into `dst` (`ids.len()·2d`).
    pub fn gather(&self, ids: &[u32], dst: &mut [f32]) -> Result<()> {
        Ok(gather_rows(&self.params, self.row_len(), ids, dst)?)
    }

    /// Adds row gradients `src` (`ids.len()·2d`, `ids` strictly increasing) into the accumulator.
    pub fn accumulate(&mut self, ids: &[u32], src: &[f32]) -> Result<()> {
        let row_len = self.row_len();
        scatter_add_rows(&mut self.grads, row_len, ids, src)?;
        for &id in ids {
            let t = &mut self.touched[id as usize];
            if !*t {
                *t = true;
                self.touched_ids.push(id);
            }
        }
        Ok(())
    }

    /// One AdamW step over the accumulated gradients, then clears them.
    ///
    /// Gradients are trusted (the adapter checks them for non-finite values on arrival).
    pub fn step(&mut self, cfg: &AdamWConfig, opt: HostOptimizer) -> Result<()> {
        let cfg = AdamWConfig { finite_check: FiniteCheck::Trusted, ..*cfg };
        self.touched_ids.sort_unstable();
        let row_len = self.row_len();
        let bufs = AdamWBuffers { params: &mut self.params, grads: &self.grads, m: &mut self.m, v: &mut self.v };
        let outcome = match opt {
            HostOptimizer::Dense => {
                self.steps += 1;
                adamw_dense(&cfg, self.steps, bufs)?
            }
            HostOptimizer::Lazy => adamw_lazy_rows(&cfg, row_len, &self.touched_ids, bufs, &mut self.row_steps)?,
        };
        debug_assert_eq!(outcome, StepOutcome::Applied);
        self.clear_grads()
    }

    /// Zeroes the accumulated gradients and the touched set.
    pub fn clear_grads(&mut self) -> Result<()> {
        self.touched_ids.sort_unstable();
        let row_len = self.row_len();
        zero_rows(&mut self.grads, row_len, &self.touched_ids)?;
        for &id in &self.touched_ids {
            self.touched[id as usize] = false;
        }
        self.touched_ids.clear();
        Ok(())
    }

    /// An arena with given bundled parameters, moments and step counters (a checkpoint restore);
    /// gradients start at zero. Lengths must be `rows × 2d` (`row_steps`: `rows`).
    pub fn restore(hidden: usize, params: Vec<f32>, m: Vec<f32>, v: Vec<f32>, row_steps: Vec<u64>, steps: u64) -> Result<Self> {
        let n = params.len();
        let rows = row_steps.len();
        if hidden == 0 || n != rows * 2 * hidden || m.len() != n || v.len() != n {
            return Err(OffloadError::plan(
                "host store restore",
                format!("params {n}, m {}, v {}, rows {rows} do not fit rows × 2·{hidden}", m.len(), v.len()),
                "restore from a checkpoint written for the same M and d",
            ));
        }
        Ok(Self { hidden, rows, params, m, v, grads: vec![0.0; n], row_steps, touched: vec![false; rows], touched_ids: Vec::new(), steps })
    }

    /// Sum of squares of the accumulated gradients (touched rows only; the rest are zero).
    pub fn grad_sq_norm(&self) -> f64 {
        let row_len = self.row_len();
        let rows = self.touched_ids.iter().map(|&id| &self.grads[id as usize * row_len..(id as usize + 1) * row_len]);
        rows.map(sq_sum).sum()
    }

    /// Multiplies the accumulated gradients by `factor` (gradient clipping).
    pub fn scale_grads(&mut self, factor: f32) {
        let row_len = self.row_len();
        for &id in &self.touched_ids {
            self.grads[id as usize * row_len..(id as usize + 1) * row_len].iter_mut().for_each(|g| *g *= factor);
        }
    }
}

/// `Σ g²` of one row in f64, as eight independent partial sums (vectorisable, fixed order).
fn sq_sum(row: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = row.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&g| f64::from(g) * f64::from(g)).sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += f64::from(c[i]) * f64::from(c[i]);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Spec §4 initialisation of `neurons` rows for each layer in `layers`: keys ~ N(0, 0.02) drawn
/// from `seed` (layer after layer), values 0.
pub fn random_arenas(hidden: usize, neurons: usize, layers: &[usize], seed: u64) -> Result<Vec<(usize, LayerArena)>> {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let normal = rand_distr::Normal::new(0f32, 0.02).map_err(|e| OffloadError::Sequence(e.to_string()))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = neurons * hidden;
    layers
        .iter()
        .map(|&layer| {
            let keys: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
            Ok((layer, LayerArena::new(hidden, &keys, &vec![0.0; n])?))
        })
        .collect()
}

/// Arenas of every adapted layer.
#[derive(Debug, Default)]
pub struct HostStore {
    layers: Vec<(usize, std::sync::RwLock<LayerArena>)>,
}

impl HostStore {
    /// A store from `(layer, arena)` pairs.
    pub fn new(layers: Vec<(usize, LayerArena)>) -> Self {
        Self { layers: layers.into_iter().map(|(l, a)| (l, std::sync::RwLock::new(a))).collect() }
    }

    /// The arena of `layer`.
    pub fn layer(&self, layer: usize) -> Option<&std::sync::RwLock<LayerArena>> {
        self.layers.iter().find(|(l, _)| *l == layer).map(|(_, a)| a)
    }

    /// All `(layer, arena)` pairs.
    pub fn layers(&self) -> impl Iterator<Item = (usize, &std::sync::RwLock<LayerArena>)> {
        self.layers.iter().map(|(l, a)| (*l, a))
    }

    /// Host bytes of all arenas.
    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(|(_, a)| a.read().unwrap_or_else(|e| e.into_inner()).bytes()).sum()
    }
}
