//! `meft eval`: evaluate a model (optionally with a trained adapter) on a dataset by generation,
//! or score predictions from any system.
//!
//! - `meft eval --model M [--adapter DIR] --dataset D [--limit N] [--beam W]
//!   [--repetition-penalty R] [--max-new-tokens T] [--out DIR]`: renders each question in the
//!   model's chat template, decodes (greedy by default) and scores the first N examples.
//! - `meft eval --predictions F.jsonl --dataset D [--out DIR]`: scores `{"id", "prediction"}`
//!   rows (every prediction id must be in the dataset; examples without one are skipped).
//!
//! `--dataset` is a benchmark name (its file comes from the asset cache, fetched on first use) or
//! `user_qa|user_instruction|user_chat` with `--dataset-file`. The summary JSON goes to stdout;
//! with `--out`, `results.json` and `predictions.h5` are written there.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use meft_core::adapters::Phase;
use meft_core::{AdapterHook, NoAdapters};
use meft_eval::generation::output::{EvalSummary, write_outputs};
use meft_eval::generation::{DecodeConfig, Decoding, PenaltyScope, RepetitionPenalty};
use meft_eval::results::RunMetadata;
use meft_eval::score::{Coverage, Report, score_predictions};
use meft_eval::{Dataset, EvalConfig, Evaluator};

use super::{ModelArgs, WeightDtype};
use crate::train::{RawConfig, TrainPlan, TrainableAdapter, build, checkpoint};

/// Arguments of `meft eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Model to evaluate: `smollm2-135m-instruct`, a .gguf file or an HF directory.
    #[arg(long, short, conflicts_with = "predictions", required_unless_present = "predictions")]
    pub model: Option<String>,
    /// Weight dtype in memory.
    #[arg(long, value_enum, default_value_t = WeightDtype::F32)]
    pub dtype: WeightDtype,
    /// Precision of the frozen products (`f32` or `bf16`).
    #[arg(long, default_value = "f32")]
    pub precision: meft_models::ops::FrozenPrecision,
    /// Adapter directory written by `meft train` (`adapter.safetensors` + `adapter.json`).
    #[arg(long, requires = "model")]
    pub adapter: Option<PathBuf>,
    /// Score this predictions JSONL file instead of generating.
    #[arg(long)]
    pub predictions: Option<PathBuf>,
    /// Dataset: nq_open, trivia_qa, squad, gsm8k, math, bfcl_<category>, user_qa, ...
    #[arg(long, short)]
    pub dataset: String,
    /// The JSONL file of a user dataset (default: the benchmark's cache file).
    #[arg(long)]
    pub dataset_file: Option<PathBuf>,
    /// Only the first N examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Beam width; 1 = greedy (the default).
    #[arg(long, default_value_t = 1)]
    pub beam: usize,
    /// Length-normalisation exponent of beam search (0 = none, 1 = per-token mean).
    #[arg(long, default_value_t = 1.0)]
    pub length_penalty: f64,
    /// Repetition penalty (HF rule; 1 = off; the paper used 2.0).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Count only generated tokens as repeated (default: prompt and generated, as HF).
    #[arg(long, value_enum, default_value_t = Scope::Sequence)]
    pub penalty_scope: Scope,
    /// Most new tokens per answer.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Rows per decoding forward: examples decoded side by side (greedy) or the beams of one
    /// example (beam search); the answers are those of decoding each alone. A MEFT adapter
    /// uses at most C / K rows (its working set C is shared by the rows of a forward call, and
    /// up to C / K one-token rows never drop a neuron).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Directory for results.json and predictions.h5.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Which tokens the repetition penalty counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scope {
    /// Prompt and generated tokens.
    Sequence,
    /// Generated tokens only.
    Generated,
}

impl EvalArgs {
    fn config(&self, batch: usize) -> EvalConfig {
        let decoding = match self.beam {
            0 | 1 => Decoding::Greedy,
            width => Decoding::Beam { width, length_penalty: self.length_penalty },
        };
        let scope = match self.penalty_scope {
            Scope::Sequence => PenaltyScope::Sequence,
            Scope::Generated => PenaltyScope::Generated,
        };
        EvalConfig {
            decode: DecodeConfig {
                decoding,
                max_new_tokens: self.max_new_tokens,
                repetition_penalty: RepetitionPenalty { penalty: self.repetition_penalty, scope },
            },
            batch,
        }
    }

    fn dataset_file(&self, dataset: &Dataset) -> anyhow::Result<PathBuf> {
        if let Some(file) = &self.dataset_file {
            return Ok(file.clone());
        }
        if let Dataset::User(_) = dataset {
            bail!("--dataset {} needs --dataset-file <F.jsonl>", dataset.name());
        }
        let cache = meft_assets::Cache::from_env();
        cache.dataset_path(&dataset.name()).with_context(|| format!("dataset {} (fetch with `cargo xtask assets`)", dataset.name()))
    }
}

/// Runs `meft eval`; prints the summary JSON on stdout.
pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    if args.beam == 0 {
        bail!("--beam must be at least 1 (1 = greedy)");
    }
    let dataset = Dataset::parse(&args.dataset)?;
    let file = args.dataset_file(&dataset)?;
    let (summary, report, generations, config_json) = match (&args.predictions, &args.model) {
        (Some(predictions), _) => score_file(args, &dataset, &file, predictions)?,
        (None, Some(model)) => generate(args, &dataset, &file, model)?,
        (None, None) => bail!("give --model M to generate, or --predictions F.jsonl to score"),
    };
    if let Some(dir) = &args.out {
        let metadata =
            RunMetadata { config_json, git_revision: meft_eval::results::git_revision(), description: format!("meft eval on {}", dataset.name()) };
        let paths = write_outputs(dir, &metadata, &summary, &report, &generations)?;
        eprintln!("wrote {} and {}", paths.json.display(), paths.hdf5.display());
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

type Outcome = (EvalSummary, Report, Vec<meft_eval::generation::Generation>, String);

fn score_file(args: &EvalArgs, dataset: &Dataset, file: &Path, predictions: &Path) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let report = score_predictions(predictions, dataset, file, Coverage::Predicted)?;
    let mut summary = EvalSummary::of_report(&report, start.elapsed().as_secs_f64());
    summary.predictions = Some(predictions.display().to_string());
    let config_json = serde_json::json!({ "predictions": summary.predictions, "dataset": args.dataset }).to_string();
    Ok((summary, report, Vec::new(), config_json))
}

fn generate(args: &EvalArgs, dataset: &Dataset, file: &Path, model: &str) -> anyhow::Result<Outcome> {
    let loaded = ModelArgs { model: model.to_owned(), dtype: args.dtype, precision: args.precision }.load()?;
    let template = loaded
        .bundle
        .chat
        .as_ref()
        .with_context(|| format!("{} declares no chat template; meft eval prompts in chat form", loaded.path.display()))?;
    let adapter = match &args.adapter {
        Some(dir) => Some(load_adapter(dir, &loaded.bundle.config)?),
        None => None,
    };
    let mut examples = dataset.load(file)?;
    if let Some(n) = args.limit {
        examples.truncate(n);
    }
    let batch = match &adapter {
        Some(a) => a.generation_batch(args.batch as usize),
        None => args.batch as usize,
    };
    let config = args.config(batch);
    let release = || {
        if let Some(a) = &adapter {
            a.discard_forward();
        }
    };
    let hook: &dyn AdapterHook = match &adapter {
        Some(a) => a.hook(),
        None => &NoAdapters,
    };
    let evaluator =
        Evaluator { model: &loaded.model, tokenizer: &loaded.bundle.tokenizer, template, hook, after_forward: Some(&release as &dyn Fn()) };
    let bar = indicatif::ProgressBar::new(examples.len() as u64);
    let evaluation = evaluator.evaluate(dataset, &examples, &config, &mut |i, _| bar.set_position(i as u64))?;
    bar.finish_and_clear();
    let mut summary = EvalSummary::of_report(&evaluation.report, evaluation.wall_seconds);
    summary.model = Some(model.to_owned());
    summary.adapter = args.adapter.as_ref().map(|p| p.display().to_string());
    summary.limit = args.limit;
    summary.config = Some(config);
    summary.new_tokens = evaluation.new_tokens();
    eprintln!(
        "{} examples, {} new tokens in {:.1} s ({:.1} tokens/s)",
        evaluation.report.n_scored,
        summary.new_tokens,
        evaluation.wall_seconds,
        summary.new_tokens as f64 / evaluation.wall_seconds.max(1e-9)
    );
    let config_json = serde_json::to_string(&summary.config)?;
    Ok((summary, evaluation.report, evaluation.generations, config_json))
}

/// Rebuilds the adapter of an exported directory from its recorded config and loads its weights.
fn load_adapter(dir: &Path, model: &meft_models::ModelConfig) -> anyhow::Result<Box<dyn TrainableAdapter>> {
    let (params, manifest) = checkpoint::import(dir)?;
    let origin = format!("{}/adapter.json (config_toml)", dir.display());
    let plan = TrainPlan::new(RawConfig::parse(&manifest.config_toml, &origin, &[])?, model)?;
    let device = build::device(&plan, model)?;
    let mut adapter = build::adapter(&plan, model, &device)?;
    adapter.load_params(&params).with_context(|| format!("loading {}/adapter.safetensors", dir.display()))?;
    adapter.set_phase(Phase::Eval);
    eprintln!("adapter {} ({} parameters, trained on {})", dir.display(), adapter.param_count(), manifest.model);
    Ok(adapter)
}
