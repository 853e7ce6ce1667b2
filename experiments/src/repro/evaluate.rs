//! Generation-based scoring of a trained run: the run's adapter answers a set of examples by
//! decoding (greedy, or the paper's beam 4 with repetition penalty 2), and the answers are scored
//! with the paper's metric and the standard ones:
//!
//! - QA: the paper's substring match (NQ case-sensitive, SQuAD and TriviaQA case-insensitive),
//!   SQuAD-normalised exact match and token F1 (TriviaQA: over all its aliases);
//! - tool use (BFCL): AST match of the calls (names and allowed argument values) and the paper's
//!   API-name IoU;
//! - GSM8K: final-answer accuracy read by the paper's rule ("The answer is"), by lm-eval's strict
//!   (`#### n`) and flexible (last number) extraction;
//! - MATH: boxed-answer accuracy.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use meft_core::adapters::Phase;
use meft_eval::generation::DecodeConfig;
use meft_eval::metrics::math::{Gsm8kExtraction, gsm8k_correct};
use meft_eval::{Dataset, EvalConfig, Evaluator, Example};
use serde::{Deserialize, Serialize};

use crate::train::{Inputs, Trainer};

/// Examples to answer after training.
#[derive(Clone)]
pub struct GenSet {
    /// What they are (`trained`, `held_out`, `gsm8k`, ...).
    pub name: String,
    /// Their dataset (picks the metrics).
    pub dataset: Dataset,
    /// The examples.
    pub examples: Arc<Vec<Example>>,
    /// How answers are decoded.
    pub decode: DecodeConfig,
}

/// Scores of one [`GenSet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenScores {
    /// The set's name.
    pub name: String,
    /// `greedy` or `beam 4, penalty 2`.
    pub decoding: String,
    /// Examples answered.
    pub n: usize,
    /// Metric name → mean over the examples.
    pub metrics: BTreeMap<String, f64>,
    /// The primary metric per example, in set order.
    pub primary: Vec<bool>,
    /// Seconds spent decoding.
    pub seconds: f64,
}

/// Answers `set` with `trainer`'s adapter and scores the answers.
pub fn generate(trainer: &Trainer, inputs: &Inputs, set: &GenSet) -> Result<GenScores> {
    let adapter = trainer.adapter();
    adapter.set_phase(Phase::Eval);
    let after = || adapter.discard_forward();
    let scores = answer(inputs, adapter.hook(), Some(&after), adapter.generation_batch(GENERATION_BATCH), set);
    adapter.set_phase(Phase::Train);
    scores
}

/// Rows per decoding forward (greedy examples side by side, or beams), for adapters whose rows
/// are independent.
pub const GENERATION_BATCH: usize = 8;

/// Answers `set` with the frozen model of `inputs` and `hook` (`after_forward` runs after each
/// forward call), `batch` examples side by side, and scores the answers.
pub fn answer(inputs: &Inputs, hook: &dyn meft_core::AdapterHook, after_forward: Option<&dyn Fn()>, batch: usize, set: &GenSet) -> Result<GenScores> {
    let (tokenizer, template) = inputs.text().context("generation needs a model with a tokenizer")?;
    let evaluator = Evaluator { model: inputs.model(), tokenizer, template, hook, after_forward };
    let config = EvalConfig { decode: set.decode.clone(), batch };
    let eval = evaluator.evaluate(&set.dataset, &set.examples, &config, &mut |_, _| {})?;
    let report = &eval.report;
    let mut metrics = BTreeMap::new();
    metrics.insert(primary_name(&set.dataset).to_string(), report.primary);
    for (name, value) in [("squad_em", report.squad_em), ("squad_f1", report.squad_f1), ("api_iou", report.api_iou)] {
        if let Some(v) = value {
            metrics.insert(name.into(), v);
        }
    }
    if set.dataset == Dataset::Gsm8k {
        for (name, rule) in
            [("gsm8k_paper", Gsm8kExtraction::Paper), ("gsm8k_strict", Gsm8kExtraction::Strict), ("gsm8k_flexible", Gsm8kExtraction::Flexible)]
        {
            let hits = report
                .examples
                .iter()
                .filter(|r| gsm8k_correct(r.prediction.as_deref().unwrap_or(""), r.references.first().map_or("", String::as_str), rule));
            metrics.insert(name.into(), hits.count() as f64 / report.examples.len().max(1) as f64);
        }
    }
    Ok(GenScores {
        name: set.name.clone(),
        decoding: decoding_label(&set.decode),
        n: report.examples.len(),
        metrics,
        primary: report.examples.iter().map(|r| r.scores.primary > 0.5).collect(),
        seconds: eval.wall_seconds,
    })
}

/// The report's name for a dataset's primary metric.
pub fn primary_name(dataset: &Dataset) -> &'static str {
    match dataset {
        Dataset::NqOpen => "substring_cs",
        Dataset::TriviaQa | Dataset::Squad | Dataset::User(_) => "substring_ci",
        Dataset::Gsm8k => "final_number",
        Dataset::Math => "math_answer",
        Dataset::Bfcl(_) => "ast_match",
    }
}

/// `greedy`, `beam W, penalty P` or `sample T t seed s, penalty P`.
pub fn decoding_label(d: &DecodeConfig) -> String {
    let penalty = d.repetition_penalty.penalty;
    match d.decoding {
        meft_eval::generation::Decoding::Greedy if penalty == 1.0 => "greedy".into(),
        meft_eval::generation::Decoding::Greedy => format!("greedy, penalty {penalty}"),
        meft_eval::generation::Decoding::Beam { width, .. } => format!("beam {width}, penalty {penalty}"),
        meft_eval::generation::Decoding::Sample { temperature, seed } => format!("sample T {temperature} seed {seed}, penalty {penalty}"),
    }
}

/// Greedy decoding of at most `max_new_tokens`.
pub fn greedy(max_new_tokens: usize) -> DecodeConfig {
    DecodeConfig {
        decoding: meft_eval::generation::Decoding::Greedy,
        max_new_tokens,
        repetition_penalty: meft_eval::generation::RepetitionPenalty::default(),
    }
}
