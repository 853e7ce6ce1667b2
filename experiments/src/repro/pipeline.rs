//! Running a reproduction: choose the data source, run the selected experiments in order, save
//! each section as soon as it is done, and rebuild the report.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result};

use super::{Context, DataSource, ExperimentId, Profile, Section, report, timed};

/// What `meft reproduce` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Work size.
    pub profile: Profile,
    /// Experiments to run (empty: all).
    pub only: Vec<ExperimentId>,
    /// `paper/`.
    pub paper_dir: PathBuf,
    /// Scratch space for training runs.
    pub runs_dir: PathBuf,
    /// Seed of every run.
    pub seed: u64,
    /// Training runs at once.
    pub workers: usize,
    /// Set when the caller already knows the assets are unavailable.
    pub offline_reason: Option<String>,
    /// The command line, for the report header.
    pub command: String,
}

/// The data source: real unless an offline reason is given or the pinned model and data are
/// not in the cache (then the reason names what is missing).
pub fn data_source(offline_reason: Option<String>) -> DataSource {
    if let Some(reason) = offline_reason.filter(|r| !r.trim().is_empty()) {
        return DataSource::Synthetic { reason };
    }
    let cache = meft_assets::Cache::from_env();
    let missing = std::iter::once(cache.model_path("smollm2-135m-instruct").err().map(|e| e.to_string()))
        .chain(["nq_open", "trivia_qa"].iter().map(|d| cache.dataset_path(d).err().map(|e| e.to_string())))
        .flatten()
        .next();
    match missing {
        Some(reason) => DataSource::Synthetic { reason },
        None => DataSource::Real,
    }
}

/// Runs the experiments of `opts`; returns the report's path.
pub fn reproduce(opts: &Options) -> Result<PathBuf> {
    let start = Instant::now();
    let ctx = Context {
        profile: opts.profile,
        source: data_source(opts.offline_reason.clone()),
        paper_dir: opts.paper_dir.clone(),
        runs_dir: opts.runs_dir.clone(),
        seed: opts.seed,
        workers: opts.workers,
    };
    if let DataSource::Synthetic { reason } = &ctx.source {
        eprintln!("\n!!! SYNTHETIC FALLBACK: {reason}\n!!! the report will say so at the top; its numbers check the pipeline only\n");
    }
    for dir in [ctx.figures_dir(), ctx.results_dir(), ctx.runs_dir.clone()] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let probe_pool = match ctx.profile {
        Profile::Smoke => 16,
        Profile::Default => 300,
        Profile::Full => 1000,
    };
    let runner = super::runs::Runner::new(&ctx.runs_dir, ctx.workers, probe_pool);
    let selected: Vec<ExperimentId> = ExperimentId::ALL.into_iter().filter(|id| opts.only.is_empty() || opts.only.contains(id)).collect();
    for (i, id) in selected.iter().enumerate() {
        eprintln!("=== experiment {}/{}: {} ({:?} profile)", i + 1, selected.len(), id.name(), ctx.profile);
        let before = runner.tally();
        let section = timed(|| run_one(*id, &ctx, &runner)).with_context(|| format!("experiment `{}`", id.name()))?;
        let runs = runner.tally().since(before);
        let saved = report::save(&ctx, &section, runs)?;
        eprintln!("=== {} done in {:.1} min ({}) -> {}", id.name(), section.wall_seconds / 60.0, runs.describe(), saved.display());
    }
    let path = report::write(&ctx, start.elapsed().as_secs_f64(), &opts.command)?;
    eprintln!("report: {} ({:.1} min)", path.display(), start.elapsed().as_secs_f64() / 60.0);
    Ok(path)
}

fn run_one(id: ExperimentId, ctx: &Context, runner: &super::runs::Runner) -> Result<Section> {
    match id {
        ExperimentId::Table1 => super::table1::run(ctx, runner),
        ExperimentId::Size => super::ablations::size::run(ctx, runner),
        ExperimentId::KeyExperts => super::ablations::router::run_key_experts(ctx, runner),
        ExperimentId::TopK => super::ablations::top_k::run(ctx, runner),
        ExperimentId::Experts => super::ablations::router::run_experts(ctx, runner),
        ExperimentId::Traffic => super::traffic::run(ctx, runner),
    }
}
