//! `meft reproduce`: run the paper-reproduction experiments and write `paper/REPRODUCTION.md`,
//! `paper/figures/` and `paper/results/` (see [`crate::repro`]).

use std::path::PathBuf;

use crate::repro::pipeline::{self, Options};
use crate::repro::{ExperimentId, Profile};

/// Arguments of `meft reproduce`.
#[derive(Debug, clap::Args)]
pub struct ReproduceArgs {
    /// Work size: smoke (minutes), default (about an hour on 2 cores), full.
    #[arg(long, value_enum, default_value_t = Profile::Default)]
    pub profile: Profile,
    /// Run only these experiments (repeatable); the report keeps the others' saved sections.
    #[arg(long, value_enum)]
    pub only: Vec<ExperimentId>,
    /// Output places, seed and data source.
    #[command(flatten)]
    pub run: RunArgs,
}

/// What `meft reproduce` and `meft ablate` share.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Where the report, figures and results go.
    #[arg(long, default_value = "paper")]
    pub paper_dir: PathBuf,
    /// Scratch space for training runs (checkpoints; an interrupted run resumes from them).
    #[arg(long, default_value = "target/meft-runs")]
    pub runs_dir: PathBuf,
    /// Seed of every run (the first seed of the multi-seed cells).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Training runs at once, each on one thread (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Use the synthetic fallback and state this reason in the report (set by `cargo xtask`
    /// when the asset fetch failed).
    #[arg(long)]
    pub offline_reason: Option<String>,
}

/// Runs `meft reproduce`; prints the report's path on stdout.
pub fn run(args: &ReproduceArgs) -> anyhow::Result<()> {
    let profile = serde_json::to_value(args.profile)?;
    let mut command = format!("meft reproduce --profile {}", profile.as_str().unwrap_or("?"));
    for id in &args.only {
        command += &format!(" --only {}", id.name());
    }
    let opts = Options {
        profile: args.profile,
        only: args.only.clone(),
        paper_dir: args.run.paper_dir.clone(),
        runs_dir: args.run.runs_dir.join(profile.as_str().unwrap_or("runs")),
        seed: args.run.seed,
        workers: args.run.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        offline_reason: args.run.offline_reason.clone(),
        command,
    };
    let path = pipeline::reproduce(&opts)?;
    println!("{}", path.display());
    Ok(())
}

/// Arguments of `meft ablate`.
#[derive(Debug, clap::Args)]
pub struct AblateArgs {
    /// The ablation: one section of the report (every trained ablation of the paper).
    #[arg(value_enum)]
    pub ablation: ExperimentId,
    /// Work size: default (a reduced grid, one seed) or full (the whole grid, three seeds).
    #[arg(long, value_enum, default_value_t = Profile::Default)]
    pub profile: Profile,
    /// Output places, seed, workers and data source.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Runs `meft ablate`: `meft reproduce --only <ablation>` (the report keeps the other sections).
pub fn ablate(args: &AblateArgs) -> anyhow::Result<()> {
    run(&ReproduceArgs { profile: args.profile, only: vec![args.ablation], run: args.run.clone() })
}
