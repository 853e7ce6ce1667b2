//! The MEFT adapter configuration and the offload plan: data, validated, serialisable.
//!
//! [`MeftConfig`] says what the adapter is (sizes, routing, optimizer); [`OffloadPlan`] says how it is
//! placed (per-layer working-set capacity and staging size, pre-look distance, link model). A plan is
//! produced by [`OffloadPlan::uniform`] or fitted to a byte budget by [`OffloadPlan::fit`], checked by
//! [`OffloadPlan::validate`], and saved with every run.

use meft_core::optim::AdamWConfig;
use meft_core::sparse::Evaluation;
use meft_router::Scoring;

use crate::error::{OffloadError, Result};
use crate::ledger::LinkModel;

/// How the host AdamW treats rows that got no gradient since the last step (spec §5 step 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostOptimizer {
    /// torch AdamW over every row (rows without gradient still move by momentum); the paper's.
    #[default]
    Dense,
    /// Only rows touched since the last step; per-row bias correction.
    Lazy,
}

/// Where routing for layer ℓ runs when the pre-look distance `p` is ≥ 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefetchMode {
    /// On a host worker thread, overlapping the layers in between (default).
    #[default]
    Worker,
    /// On the calling thread when layer ℓ is reached (same inputs; the reference for tests).
    Inline,
}

/// Serde mirror of the router's [`Scoring`] (which does not derive serde).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(remote = "Scoring", rename_all = "snake_case")]
enum ScoringDef {
    Gated,
    Plain,
}

/// What the MEFT adapter is: sizes, routing and optimizer (spec §1–§5).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MeftConfig {
    /// Hidden size d.
    pub hidden: usize,
    /// Neurons per adapted layer M.
    pub neurons: usize,
    /// Experts per layer N (must divide M).
    pub experts: usize,
    /// Neurons kept per token K.
    pub top_k: usize,
    /// Experts probed per token P.
    pub top_p: usize,
    /// Gated or plain candidate scores.
    #[serde(with = "ScoringDef")]
    pub scoring: Scoring,
    /// Per-token or union evaluation.
    pub evaluation: Evaluation,
    /// Dense or lazy host AdamW.
    pub host_optimizer: HostOptimizer,
    /// AdamW hyper-parameters (host rows and device gates).
    pub adamw: AdamWConfig,
}

impl MeftConfig {
    /// Checks the sizes that the router does not check itself.
    pub fn validate(&self) -> Result<()> {
        if self.hidden == 0 {
            return Err(OffloadError::plan("hidden", "is 0", "set it to the model's hidden size"));
        }
        if self.top_k == 0 || self.top_k > self.neurons {
            return Err(OffloadError::plan(
                "top_k",
                format!("= {} is outside 1..={} (M)", self.top_k, self.neurons),
                "choose K ≤ M (MEFT default 64)",
            ));
        }
        self.adamw.validate().map_err(|e| OffloadError::plan("adamw", e.to_string(), "fix the optimizer config"))
    }

    /// Bytes of one bundled `[k|v]` row (f32).
    pub fn row_bytes(&self) -> u64 {
        (2 * self.hidden * 4) as u64
    }
}

/// Placement of one adapted layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerPlan {
    /// Model layer index.
    pub layer: usize,
    /// Working-set capacity C in rows.
    pub capacity: usize,
    /// Rows of the host staging buffer (≥ capacity).
    pub staging_rows: usize,
}

/// How the adapter is placed on host and device.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OffloadPlan {
    /// Adapted layers, ascending.
    pub layers: Vec<LayerPlan>,
    /// Pre-look distance p: layer ℓ routes from layer ℓ−p's FFN input (0 = its own).
    pub pre_look: usize,
    /// Where pre-look routing runs.
    pub prefetch: PrefetchMode,
    /// Link model for modelled transfer times.
    pub link: LinkModel,
}

impl OffloadPlan {
    /// The same capacity on every layer in `layers`.
    pub fn uniform(layers: &[usize], capacity: usize, pre_look: usize) -> Self {
        let layers = layers.iter().map(|&layer| LayerPlan { layer, capacity, staging_rows: capacity }).collect();
        Self { layers, pre_look, prefetch: PrefetchMode::default(), link: LinkModel::default() }
    }

    /// The largest uniform capacity whose working sets fit `working_set_bytes`, capped at
    /// `min(M, tokens·K)` (no micro-batch can select more).
    pub fn fit(cfg: &MeftConfig, layers: &[usize], tokens: usize, working_set_bytes: u64, pre_look: usize) -> Result<Self> {
        let per_row = cfg.row_bytes() * layers.len().max(1) as u64;
        let fit = (working_set_bytes / per_row) as usize;
        let capacity = fit.min(cfg.neurons).min(tokens.saturating_mul(cfg.top_k));
        let plan = Self::uniform(layers, capacity, pre_look);
        plan.validate(cfg)?;
        Ok(plan)
    }

    /// Checks the plan against the adapter configuration.
    pub fn validate(&self, cfg: &MeftConfig) -> Result<()> {
        cfg.validate()?;
        if self.layers.is_empty() {
            return Err(OffloadError::plan("layers", "is empty", "list at least one adapted layer"));
        }
        for (i, l) in self.layers.iter().enumerate() {
            if i > 0 && self.layers[i - 1].layer >= l.layer {
                return Err(OffloadError::plan("layers", "are not strictly ascending", "sort and deduplicate them"));
            }
            if l.capacity == 0 || l.capacity > cfg.neurons {
                return Err(OffloadError::plan(
                    format!("layers[{i}].capacity"),
                    format!("= {} is outside 1..={} (M)", l.capacity, cfg.neurons),
                    "give every layer a working set of at least one row and at most M rows",
                ));
            }
            if l.staging_rows < l.capacity {
                return Err(OffloadError::plan(
                    format!("layers[{i}].staging_rows"),
                    format!("= {} is below the capacity {}", l.staging_rows, l.capacity),
                    "make the staging buffer at least as large as the working set",
                ));
            }
        }
        self.link.validate()
    }

    /// The plan of `layer`, if adapted.
    pub fn layer(&self, layer: usize) -> Option<&LayerPlan> {
        self.layers.iter().find(|l| l.layer == layer)
    }
}
