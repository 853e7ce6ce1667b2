//! The reproduction pipeline behind `meft reproduce` and `cargo xtask reproduce`.
//!
//! Each experiment ([`ExperimentId`]) runs at the size its [`Profile`] asks for, on the real
//! pinned assets or, when they cannot be fetched, on the synthetic fallback ([`DataSource`]), and
//! returns a [`Section`]: its part of `paper/REPRODUCTION.md` (tables with our number beside the
//! paper's), the figures it drew and its machine-readable results. The report writer
//! ([`report`]) puts the sections together with the machine facts and wall times.

pub mod ablations;
pub mod capture;
pub mod evaluate;
pub mod output;
pub mod pipeline;
pub mod plot;
pub mod probes;
pub mod report;
pub mod runs;
pub mod setup;
pub mod stats;
pub mod table1;
pub mod traffic;
pub mod traffic_trained;
pub mod trained;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

/// How much work a reproduction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Minutes on 2 cores: tiny sizes, checks the pipeline end to end (CI runs it).
    Smoke,
    /// At most an hour on 2 cores: the committed report.
    Default,
    /// Larger sweeps for a bigger machine or a longer wait.
    Full,
}

/// One experiment of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentId {
    /// 1. Table 1: every task and baseline under one device budget.
    Table1,
    /// 2. Fig. 1 / Table 2: EM against adapter size.
    Size,
    /// 3. Fig. 4: MEFT without Key-Experts.
    KeyExperts,
    /// 4. Fig. 6: neurons kept per token.
    TopK,
    /// 5. Fig. 7: the number of experts, trained.
    Experts,
    /// 6. Fig. 8: union and traffic after training, and the modelled step time.
    Traffic,
}

impl ExperimentId {
    /// Every experiment, in report order.
    pub const ALL: [Self; 6] = [Self::Table1, Self::Size, Self::KeyExperts, Self::TopK, Self::Experts, Self::Traffic];

    /// The stable name used for files and `--only`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Table1 => "table1",
            Self::Size => "size",
            Self::KeyExperts => "key_experts",
            Self::TopK => "top_k",
            Self::Experts => "experts",
            Self::Traffic => "traffic",
        }
    }
}

/// Where the model and data come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DataSource {
    /// SmolLM2-135M-Instruct and the pinned QA data from the asset cache.
    Real,
    /// The offline fallback: a small random LLaMA on a synthetic key → value task.
    Synthetic {
        /// Why the real assets were not used.
        reason: String,
    },
}

/// What every experiment gets.
#[derive(Debug, Clone)]
pub struct Context {
    /// The work size.
    pub profile: Profile,
    /// Where the model and data come from.
    pub source: DataSource,
    /// `paper/`: the report, `figures/` and `results/` go here.
    pub paper_dir: PathBuf,
    /// Scratch space for training runs (checkpoints, metrics); not part of the report.
    pub runs_dir: PathBuf,
    /// Seed of every run.
    pub seed: u64,
    /// Training runs at once (each on one thread).
    pub workers: usize,
}

impl Context {
    /// The synthetic-fallback context writing under `dir` (`paper/`, `runs/`), seed 0: what the
    /// pipeline's own tests run on.
    pub fn synthetic_in(dir: &std::path::Path, profile: Profile, reason: &str) -> Self {
        Self {
            profile,
            source: DataSource::Synthetic { reason: reason.into() },
            paper_dir: dir.join("paper"),
            runs_dir: dir.join("runs"),
            seed: 0,
            workers: 2,
        }
    }

    /// `paper/figures/`.
    pub fn figures_dir(&self) -> PathBuf {
        self.paper_dir.join("figures")
    }

    /// `paper/results/`.
    pub fn results_dir(&self) -> PathBuf {
        self.paper_dir.join("results")
    }

    /// The model name the trainer understands for this source.
    pub fn model_name(&self) -> &'static str {
        match self.source {
            DataSource::Real => "smollm2-135m-instruct",
            DataSource::Synthetic { .. } => crate::train::build::TINY_RANDOM,
        }
    }
}

/// One experiment's part of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// Which experiment.
    pub id: ExperimentId,
    /// Heading.
    pub title: String,
    /// Markdown body: setup, tables (ours beside the paper's), readings.
    pub markdown: String,
    /// Figure paths relative to `paper/` (`figures/<name>.png`).
    pub figures: Vec<String>,
    /// Machine-readable results (also written to `results/<name>.json`).
    pub results: serde_json::Value,
    /// Seconds the experiment took.
    pub wall_seconds: f64,
}

/// Times `f`, filling [`Section::wall_seconds`].
pub fn timed(f: impl FnOnce() -> Result<Section>) -> Result<Section> {
    let start = Instant::now();
    let mut s = f()?;
    s.wall_seconds = start.elapsed().as_secs_f64();
    Ok(s)
}
