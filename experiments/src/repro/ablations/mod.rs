//! The paper's ablations, each a trained experiment at the capacity scale of Table 1 (adapters
//! on the last layers, K = 64 unless swept) on TriviaQA (the synthetic facts on the fallback):
//!
//! - [`size`]: Fig. 1 / Table 2, trained-fact EM against trainable parameters for PA, LoRA,
//!   AdapterH and MEFT (the device budget marked);
//! - [`router`]: Fig. 4 (MEFT without Key-Experts: exact top-K over all keys) and Fig. 7 (the
//!   number of experts, trained, with the trained router's recall);
//! - [`top_k`]: Fig. 6, the neurons kept per token, trained.
//!
//! The default profile trains fewer epochs than Table 1 on a reduced grid (one seed); `full`
//! trains as long as Table 1 on the whole grid with three seeds. Runs whose configuration equals
//! one of Table 1's share its outcome.

pub mod router;
pub mod size;
pub mod top_k;

use anyhow::Result;
use serde::Serialize;

use super::runs::{RunOutcome, RunSpec, Runner};
use super::setup::{self, Budget, Scale};
use super::stats::Interval;
use super::{Context, DataSource, Profile};
use crate::train::RawConfig;
use crate::train::config::MethodKind;

/// The configuration every ablation run starts from.
#[derive(Debug, Clone, Serialize)]
pub struct AblationBase {
    /// Dataset trained on.
    pub dataset: String,
    /// The capacity scale.
    pub scale: Scale,
    /// The device budget and the budgeted sizes.
    pub budget: Budget,
    /// Seeds of every point.
    pub seeds: Vec<u64>,
    /// The shared learning rate (Table 1's sweep).
    pub lr: f64,
    /// The base configuration (PA at the budget).
    #[serde(skip)]
    pub raw: RawConfig,
}

/// The ablation base of `ctx`'s profile.
pub fn base(ctx: &Context, runner: &Runner) -> Result<AblationBase> {
    let lr = super::table1::shared_lr(ctx, runner)?;
    let dataset = if ctx.source == DataSource::Real { "trivia_qa" } else { "synthetic" };
    let mut scale = Scale::of(ctx.profile, &ctx.source);
    let seeds = match ctx.profile {
        Profile::Default => {
            scale.epochs = 6;
            vec![ctx.seed]
        }
        Profile::Smoke => vec![ctx.seed],
        Profile::Full => vec![ctx.seed, ctx.seed + 1, ctx.seed + 2],
    };
    let mut raw = setup::base_config(ctx, &scale, dataset);
    raw.optim.lr = lr;
    let train = setup::train_count(&raw)?;
    let per_epoch = setup::steps_per_epoch(train, &raw);
    setup::eval_every(&mut raw, per_epoch, scale.eval_every_epochs);
    let budget = setup::budget(&raw, &scale)?;
    raw.device.budget = format!("{}B", budget.bytes);
    Ok(AblationBase { dataset: dataset.into(), scale, budget, seeds, lr, raw })
}

impl AblationBase {
    /// One spec per seed of `raw`, keyed `ablation/<what>/<label>/seed<s>`.
    pub fn specs(&self, what: &str, label: &str, raw: &RawConfig) -> Vec<RunSpec> {
        self.seeds
            .iter()
            .map(|&seed| RunSpec {
                key: format!("{what}/{label}/seed{seed}"),
                task: self.dataset.clone(),
                label: label.into(),
                raw: RawConfig { seed, ..raw.clone() },
                probes: false,
                generation: Vec::new(),
            })
            .collect()
    }

    /// MEFT with `neurons` host rows, `top_k`, `experts` and `top_p`; working set C = M (no
    /// budget, nothing dropped) when `unbudgeted`, else fitted to the budget.
    pub fn meft(&self, neurons: usize, top_k: usize, experts: usize, top_p: usize, unbudgeted: bool) -> RawConfig {
        let mut r = self.raw.clone();
        r.method = MethodKind::Meft;
        (r.meft.neurons, r.meft.top_k, r.meft.experts, r.meft.top_p) = (neurons, top_k, experts, top_p);
        if unbudgeted {
            (r.meft.capacity, r.device.budget) = (neurons, String::new());
        } else {
            r.meft.capacity = 0;
        }
        r
    }
}

/// Mean ± interval over the seeds of the outcomes labelled `label`.
pub fn em_of(runs: &[RunOutcome], label: &str, f: impl Fn(&RunOutcome) -> f64) -> Interval {
    Interval::of(&runs.iter().filter(|o| o.label == label).map(f).collect::<Vec<_>>())
}
