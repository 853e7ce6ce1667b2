//! The `meft` command line: `score`, `generate`, `info`, `train`, `plan`, `eval`, `reproduce`,
//! `ablate` and `bench-gpu`.
//!
//! `--model` takes a pinned model name (`smollm2-135m-instruct`, fetched into the cache on first
//! use), a `.gguf` file, or an HF directory; see `meft_models::resolve`. Machine-readable results
//! go to stdout, progress and timings to stderr.

mod bench_gpu;
mod eval;
mod generate;
mod info;
mod plan;
mod reproduce;
mod score;
mod train;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device};
use clap::{Parser, Subcommand, ValueEnum};
use meft_models::Llama;
use meft_models::resolve::{self, ModelBundle};

/// Command-line arguments of `meft`.
#[derive(Debug, Parser)]
#[command(name = "meft", version, about = "MEFT: memory-efficient fine-tuning through sparse adapters")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mean next-token NLL of a text: prints {"tokens": n, "mean_nll": x}.
    Score(score::ScoreArgs),
    /// Generate a continuation, streamed to stdout (greedy unless --temperature > 0).
    Generate(generate::GenerateArgs),
    /// Architecture, shapes, parameter counts, dtype and tokenizer facts as JSON.
    Info(info::InfoArgs),
    /// Train an adapter from an experiment TOML (`key=value` overrides); resumes from checkpoints.
    Train(train::TrainArgs),
    /// Device memory plan of a method and the largest adapter that fits a budget (runs nothing).
    Plan(plan::PlanArgs),
    /// Evaluate a model (and adapter) on a dataset by generation, or score a predictions file.
    Eval(eval::EvalArgs),
    /// Run the paper-reproduction experiments and write paper/REPRODUCTION.md.
    Reproduce(reproduce::ReproduceArgs),
    /// Sweep one MEFT knob (experts, k, p, c) on experiment 1's setup.
    Ablate(reproduce::AblateArgs),
    /// Peak device memory, step time and bytes per step of a dense PA, MEFT and full offload.
    BenchGpu(bench_gpu::BenchGpuArgs),
}

/// Floating-point type the frozen weights are held in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WeightDtype {
    /// 32-bit float.
    F32,
    /// bfloat16.
    Bf16,
}

impl WeightDtype {
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }
}

/// Arguments every command takes.
#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Model: `smollm2-135m-instruct`, a .gguf file or an HF directory.
    #[arg(long, short)]
    pub model: String,
    /// Weight dtype in memory.
    #[arg(long, value_enum, default_value_t = WeightDtype::F32)]
    pub dtype: WeightDtype,
    /// Precision of the frozen products of f32 weights: `f32`, or `bf16` (bfloat16 inputs and
    /// weights, f32 sums; AMX tiles where the CPU has them).
    #[arg(long, default_value = "f32")]
    pub precision: meft_models::ops::FrozenPrecision,
}

/// A model ready to run, with its tokenizer and facts.
pub struct Loaded {
    /// The network.
    pub model: Llama,
    /// Tokenizer, chat template, config and storage facts (weights moved into `model`).
    pub bundle: ModelBundle,
    /// Where the files are.
    pub path: PathBuf,
    /// Seconds spent resolving, reading, dequantising and building.
    pub load_seconds: f64,
}

impl ModelArgs {
    /// Resolves and loads the model on the CPU.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        let start = Instant::now();
        let source = resolve::resolve(&self.model)?;
        let dtype = self.dtype.dtype();
        let mut bundle = resolve::load(&source, dtype).with_context(|| format!("loading {}", source.path().display()))?;
        let weights = std::mem::replace(&mut bundle.weights, meft_models::WeightMap::new(Default::default(), source.path()));
        let mut model = Llama::load(&bundle.config, weights, dtype, &Device::Cpu)?;
        model.set_frozen_precision(self.precision)?;
        let load_seconds = start.elapsed().as_secs_f64();
        eprintln!("loaded {} in {load_seconds:.2} s", source.path().display());
        Ok(Loaded { model, bundle, path: source.path().to_path_buf(), load_seconds })
    }
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Score(args) => score::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Info(args) => info::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Plan(args) => plan::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Reproduce(args) => reproduce::run(&args),
        Command::Ablate(args) => reproduce::ablate(&args),
        Command::BenchGpu(args) => bench_gpu::run(&args),
    }
}
