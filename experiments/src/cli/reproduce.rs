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
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Where the report, figures and results go.
    #[arg(long, default_value = "paper")]
    pub paper_dir: PathBuf,
    /// Scratch space for training runs (checkpoints; an interrupted run resumes from them).
    #[arg(long, default_value = "target/meft-runs")]
    pub runs_dir: PathBuf,
    /// Seed of every run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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
    /// The MEFT knob to vary.
    #[arg(value_enum)]
    pub knob: crate::repro::ablate::Knob,
    /// Values, comma-separated (e.g. 1,4,16,64,256).
    #[arg(long, value_delimiter = ',', required = true)]
    pub values: Vec<usize>,
    /// Size of the underlying experiment-1 setup.
    #[arg(long, value_enum, default_value_t = Profile::Default)]
    pub profile: Profile,
    /// Peak learning rate of every run.
    #[arg(long, default_value_t = 1e-2)]
    pub lr: f64,
    /// Output places, seed and data source.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Runs `meft ablate`; prints the markdown table on stdout.
pub fn ablate(args: &AblateArgs) -> anyhow::Result<()> {
    let ctx = crate::repro::Context {
        profile: args.profile,
        source: pipeline::data_source(args.run.offline_reason.clone()),
        paper_dir: args.run.paper_dir.clone(),
        runs_dir: args.run.runs_dir.join("ablate"),
        seed: args.run.seed,
    };
    if let crate::repro::DataSource::Synthetic { reason } = &ctx.source {
        eprintln!("!!! SYNTHETIC FALLBACK: {reason}");
    }
    println!("{}", crate::repro::ablate::ablate(&ctx, args.knob, &args.values, args.lr)?);
    Ok(())
}
