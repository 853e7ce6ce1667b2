//! Scoring predictions from any system against a dataset, keeping per-example results.
//!
//! Predictions are JSONL rows `{"id": <string or integer>, "prediction": "<text>"}`; ids must be
//! unique and must exist in the dataset. [`score_predictions`] is what `meft eval --predictions
//! F.jsonl --dataset D` calls; generation-based evaluation calls [`score_examples`] directly.
//!
//! Primary metric per dataset ([`Metric::for_dataset`]): NQ-open — substring EM, case-sensitive
//! (paper); SQuAD — substring EM, case-insensitive (paper); TriviaQA — substring EM,
//! case-insensitive over the value, aliases and normalised aliases (our choice: TriviaQA's aliases
//! differ mostly in case and punctuation, and its official script is case-insensitive); GSM8K —
//! final-number accuracy; MATH — boxed-answer accuracy; BFCL — function-call match (with API-set
//! IoU alongside); user QA — case-insensitive substring EM; user instruction / chat — SQuAD EM.
//! SQuAD-normalised EM and F1 are reported beside every text metric; TriviaQA also gets its
//! official script's EM, and GSM8K lm-eval's strict and flexible exact match.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::datasets::Dataset;
use crate::error::{EvalError, Result};
use crate::example::{Example, ToolExpectation};
use crate::jsonl::map_rows;
use crate::metrics::math::{Gsm8kExtraction, final_number_correct, gsm8k_correct, math_answer_correct};
use crate::metrics::qa::{CaseRule, exact_match, f1, substring_match, trivia_exact_match};
use crate::metrics::tool::{api_iou, calls_match, parse_calls};
use crate::user::UserFormat;

/// The primary metric of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Some gold answer is a substring of the prediction (the paper's EM).
    SubstringEm(CaseRule),
    /// SQuAD-normalised exact match.
    NormalizedEm,
    /// GSM8K final-number accuracy.
    FinalNumber,
    /// MATH boxed-answer accuracy.
    MathAnswer,
    /// BFCL function-call match.
    FunctionCall,
}

impl Metric {
    /// The primary metric for `dataset` (see the module docs for the reasons).
    pub fn for_dataset(dataset: &Dataset) -> Self {
        match dataset {
            Dataset::NqOpen => Self::SubstringEm(CaseRule::Sensitive),
            Dataset::TriviaQa | Dataset::Squad | Dataset::User(UserFormat::Qa) => Self::SubstringEm(CaseRule::Insensitive),
            Dataset::Gsm8k => Self::FinalNumber,
            Dataset::Math => Self::MathAnswer,
            Dataset::Bfcl(_) => Self::FunctionCall,
            Dataset::User(UserFormat::Instruction | UserFormat::Chat) => Self::NormalizedEm,
        }
    }
}

/// What to do with dataset examples that have no prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Coverage {
    /// Score only the predicted examples (e.g. the first 500 items, as the paper does).
    #[default]
    Predicted,
    /// Score every example; a missing prediction counts as wrong.
    All,
}

/// Scores of one example.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ExampleScores {
    /// The primary metric, 0 or 1.
    pub primary: f64,
    /// SQuAD-normalised EM (text metrics only).
    pub squad_em: Option<f64>,
    /// SQuAD token F1 (text metrics only).
    pub squad_f1: Option<f64>,
    /// IoU of called vs expected function names (BFCL with expected calls or none).
    pub api_iou: Option<f64>,
    /// TriviaQA's official v1.0 exact match over the aliases (TriviaQA only).
    #[serde(default)]
    pub trivia_em: Option<f64>,
    /// lm-eval's GSM8K `strict-match` exact match (GSM8K only).
    #[serde(default)]
    pub gsm8k_strict: Option<f64>,
    /// lm-eval's GSM8K `flexible-extract` exact match (GSM8K only).
    #[serde(default)]
    pub gsm8k_flexible: Option<f64>,
    /// The answer read from the prediction (maths: the number or boxed text; BFCL: the calls).
    pub extracted: Option<String>,
}

/// One example's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleResult {
    /// Example id.
    pub id: String,
    /// The prediction, `None` when missing (only with [`Coverage::All`]).
    pub prediction: Option<String>,
    /// The references it was compared with.
    pub references: Vec<String>,
    /// Its scores.
    pub scores: ExampleScores,
}

/// A scored evaluation: aggregates plus every example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Dataset name.
    pub dataset: String,
    /// The primary metric.
    pub metric: Metric,
    /// How missing predictions were treated.
    pub coverage: Coverage,
    /// Examples in the dataset.
    pub n_dataset: usize,
    /// Examples scored.
    pub n_scored: usize,
    /// Dataset examples without a prediction.
    pub n_missing: usize,
    /// Mean primary metric over scored examples (0 when none).
    pub primary: f64,
    /// Mean SQuAD EM, when the metric is textual.
    pub squad_em: Option<f64>,
    /// Mean SQuAD F1, when the metric is textual.
    pub squad_f1: Option<f64>,
    /// Mean API-set IoU over examples where it is defined.
    pub api_iou: Option<f64>,
    /// Mean TriviaQA official EM (TriviaQA).
    #[serde(default)]
    pub trivia_em: Option<f64>,
    /// Mean lm-eval GSM8K strict-match accuracy (GSM8K).
    #[serde(default)]
    pub gsm8k_strict: Option<f64>,
    /// Mean lm-eval GSM8K flexible-extract accuracy (GSM8K).
    #[serde(default)]
    pub gsm8k_flexible: Option<f64>,
    /// Per-example results, in dataset order.
    pub examples: Vec<ExampleResult>,
}

/// One prediction row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prediction {
    /// Example id.
    pub id: String,
    /// The system's output text.
    pub text: String,
    /// 1-based line in the predictions file.
    pub line: usize,
}

/// Reads a predictions JSONL file (`{"id", "prediction"}` rows, ids unique).
pub fn load_predictions(path: &Path) -> Result<Vec<Prediction>> {
    let predictions = map_rows(path, |row| {
        let id = row.id(&["id"])?;
        let text = row.str(&["prediction"])?.to_owned();
        Ok(Prediction { id, text, line: row.line })
    })?;
    let mut first_line: HashMap<&str, usize> = HashMap::new();
    for p in &predictions {
        if let Some(&first) = first_line.get(p.id.as_str()) {
            let (path, id, line) = (path.to_path_buf(), p.id.clone(), p.line);
            return Err(EvalError::DuplicateId { path, line, id, first_line: first });
        }
        first_line.insert(&p.id, p.line);
    }
    Ok(predictions)
}

/// Scores the predictions file `predictions` against `dataset` loaded from `dataset_file`.
///
/// Fails on a prediction whose id is not in the dataset (naming the line), on malformed rows,
/// and on duplicate ids. The CLI resolves `dataset_file` from the asset cache
/// (`meft_assets::Cache::dataset_path`) or takes a user file.
pub fn score_predictions(predictions: &Path, dataset: &Dataset, dataset_file: &Path, coverage: Coverage) -> Result<Report> {
    let examples = dataset.load(dataset_file)?;
    let rows = load_predictions(predictions)?;
    let known: HashMap<&str, ()> = examples.iter().map(|e| (e.id(), ())).collect();
    if let Some(unknown) = rows.iter().find(|p| !known.contains_key(p.id.as_str())) {
        return Err(EvalError::UnknownPredictionId {
            path: predictions.to_path_buf(),
            line: unknown.line,
            id: unknown.id.clone(),
            dataset: dataset.name(),
        });
    }
    let by_id: HashMap<&str, &str> = rows.iter().map(|p| (p.id.as_str(), p.text.as_str())).collect();
    Ok(score_examples(&dataset.name(), &examples, &by_id, Metric::for_dataset(dataset), coverage))
}

/// Scores `predictions` (id → text) on `examples` with `metric`.
pub fn score_examples(dataset: &str, examples: &[Example], predictions: &HashMap<&str, &str>, metric: Metric, coverage: Coverage) -> Report {
    let mut results = Vec::new();
    for example in examples {
        let prediction = predictions.get(example.id()).copied();
        if prediction.is_none() && coverage == Coverage::Predicted {
            continue;
        }
        let scores = score_one(dataset, example, prediction.unwrap_or(""), metric);
        results.push(ExampleResult {
            id: example.id().to_owned(),
            prediction: prediction.map(str::to_owned),
            references: example.references(),
            scores,
        });
    }
    let n_missing = examples.iter().filter(|e| !predictions.contains_key(e.id())).count();
    let mean_of = |get: fn(&ExampleScores) -> Option<f64>| mean(results.iter().filter_map(|r| get(&r.scores)));
    Report {
        dataset: dataset.to_owned(),
        metric,
        coverage,
        n_dataset: examples.len(),
        n_scored: results.len(),
        n_missing,
        primary: mean_of(|s| Some(s.primary)).unwrap_or(0.0),
        squad_em: mean_of(|s| s.squad_em),
        squad_f1: mean_of(|s| s.squad_f1),
        api_iou: mean_of(|s| s.api_iou),
        trivia_em: mean_of(|s| s.trivia_em),
        gsm8k_strict: mean_of(|s| s.gsm8k_strict),
        gsm8k_flexible: mean_of(|s| s.gsm8k_flexible),
        examples: results,
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (count > 0).then(|| sum / count as f64)
}

fn indicator(flag: bool) -> f64 {
    if flag { 1.0 } else { 0.0 }
}

/// Scores one prediction against one example of `dataset` (its name: TriviaQA and GSM8K get
/// their canonical scores beside the primary one).
pub fn score_one(dataset: &str, example: &Example, prediction: &str, metric: Metric) -> ExampleScores {
    let references = example.references();
    let gold = references.first().map(String::as_str).unwrap_or("");
    let mut scores = match metric {
        Metric::SubstringEm(case) => text_scores(prediction, &references, substring_match(prediction, &references, case)),
        Metric::NormalizedEm => text_scores(prediction, &references, exact_match(prediction, &references)),
        Metric::FinalNumber => answer_scores(final_number_correct(prediction, gold)),
        Metric::MathAnswer => answer_scores(math_answer_correct(prediction, gold)),
        Metric::FunctionCall => tool_scores(example, prediction),
    };
    match example {
        Example::Qa(_) if dataset == Dataset::TriviaQa.name() => scores.trivia_em = Some(indicator(trivia_exact_match(prediction, &references))),
        Example::Math(_) if dataset == Dataset::Gsm8k.name() => {
            scores.gsm8k_strict = Some(indicator(gsm8k_correct(prediction, gold, Gsm8kExtraction::Strict)));
            scores.gsm8k_flexible = Some(indicator(gsm8k_correct(prediction, gold, Gsm8kExtraction::Flexible)));
        }
        _ => {}
    }
    scores
}

fn text_scores(prediction: &str, references: &[String], primary: bool) -> ExampleScores {
    ExampleScores {
        primary: indicator(primary),
        squad_em: Some(indicator(exact_match(prediction, references))),
        squad_f1: Some(f1(prediction, references)),
        ..ExampleScores::default()
    }
}

fn answer_scores((correct, extracted): (bool, Option<String>)) -> ExampleScores {
    ExampleScores { primary: indicator(correct), extracted, ..ExampleScores::default() }
}

fn tool_scores(example: &Example, prediction: &str) -> ExampleScores {
    let calls = parse_calls(prediction);
    let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
    let (correct, iou) = match example {
        Example::Tool(tool) => {
            let iou = match &tool.expected {
                ToolExpectation::Calls(expected) => Some(api_iou(names.clone(), expected.iter().map(|c| c.name.as_str()))),
                ToolExpectation::NoCall => Some(api_iou(names.clone(), [])),
                ToolExpectation::AnyCall => None,
            };
            (calls_match(&calls, &tool.expected), iou)
        }
        _ => (false, None),
    };
    ExampleScores { primary: indicator(correct), api_iou: iou, extracted: Some(names.join(", ")), ..ExampleScores::default() }
}
