//! Files of an evaluation run: `results.json` (summary, configuration and the scored report)
//! and `predictions.h5` (the per-example table of [`crate::h5::report_table`] plus a `generation`
//! table with token counts, stop reasons and timings).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::generation::{EvalConfig, Generation};
use crate::h5::{Column, ColumnValues, Table, report_table, write_tables};
use crate::results::{RunMetadata, WithMetadata, write_json};
use crate::score::{Metric, Report};

/// What was evaluated and the headline numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// The model argument (name, GGUF file or HF directory); `None` for scored predictions.
    pub model: Option<String>,
    /// The adapter directory, when one was loaded.
    pub adapter: Option<String>,
    /// The predictions file, when external predictions were scored.
    pub predictions: Option<String>,
    /// Dataset name.
    pub dataset: String,
    /// `--limit`: only the first N examples (`None` = all).
    pub limit: Option<usize>,
    /// Decoding settings (`None` for scored predictions).
    pub config: Option<EvalConfig>,
    /// The primary metric.
    pub metric: Metric,
    /// Examples scored.
    pub n_scored: usize,
    /// Mean primary metric.
    pub primary: f64,
    /// Mean SQuAD-normalised EM (text metrics).
    pub squad_em: Option<f64>,
    /// Mean SQuAD F1 (text metrics).
    pub squad_f1: Option<f64>,
    /// Mean API-set IoU (BFCL).
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
    /// Seconds of generation and scoring (model loading excluded).
    pub wall_seconds: f64,
    /// Tokens generated in total (0 for scored predictions).
    pub new_tokens: usize,
}

impl EvalSummary {
    /// The headline numbers of `report`; the caller fills in what was run.
    pub fn of_report(report: &Report, wall_seconds: f64) -> Self {
        Self {
            model: None,
            adapter: None,
            predictions: None,
            dataset: report.dataset.clone(),
            limit: None,
            config: None,
            metric: report.metric,
            n_scored: report.n_scored,
            primary: report.primary,
            squad_em: report.squad_em,
            squad_f1: report.squad_f1,
            api_iou: report.api_iou,
            trivia_em: report.trivia_em,
            gsm8k_strict: report.gsm8k_strict,
            gsm8k_flexible: report.gsm8k_flexible,
            wall_seconds,
            new_tokens: 0,
        }
    }
}

/// The JSON document written to `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResults {
    /// Headline numbers and settings.
    pub summary: EvalSummary,
    /// Every example with its prediction and scores.
    pub report: Report,
    /// Per-example generation facts (empty for scored predictions).
    pub generations: Vec<Generation>,
}

/// Where [`write_outputs`] put the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPaths {
    /// `results.json`.
    pub json: PathBuf,
    /// `predictions.h5`.
    pub hdf5: PathBuf,
}

/// The `generation` table: one row per example.
pub fn generation_table(generations: &[Generation]) -> Table {
    let u64s = |f: fn(&Generation) -> usize| ColumnValues::U64(generations.iter().map(|g| f(g) as u64).collect());
    let stop = generations
        .iter()
        .map(|g| serde_json::to_value(g.stop).ok().and_then(|v| v.as_str().map(str::to_owned)))
        .map(Option::unwrap_or_default)
        .collect();
    Table {
        name: "generation".into(),
        description: "one row per generated example, in the order of the predictions table".into(),
        columns: vec![
            Column::new("id", "text", "example id", ColumnValues::Text(generations.iter().map(|g| g.id.clone()).collect())),
            Column::new("prompt_tokens", "tokens", "tokens in the rendered prompt", u64s(|g| g.prompt_tokens)),
            Column::new("new_tokens", "tokens", "generated tokens, stop token included", u64s(|g| g.new_tokens)),
            Column::new("stop", "text", "stop_token or max_new_tokens", ColumnValues::Text(stop)),
            Column::new(
                "log_prob",
                "nats",
                "sum of penalised log-probabilities of the new tokens",
                ColumnValues::F64(generations.iter().map(|g| g.log_prob).collect()),
            ),
            Column::new("seconds", "s", "wall time of the example", ColumnValues::F64(generations.iter().map(|g| g.seconds).collect())),
        ],
    }
}

/// Writes `results.json` and `predictions.h5` into `dir` (both replaced atomically); the HDF5
/// file has a `generation` table when `generations` is not empty.
pub fn write_outputs(dir: &Path, metadata: &RunMetadata, summary: &EvalSummary, report: &Report, generations: &[Generation]) -> Result<OutputPaths> {
    let paths = OutputPaths { json: dir.join("results.json"), hdf5: dir.join("predictions.h5") };
    let results = EvalResults { summary: summary.clone(), report: report.clone(), generations: generations.to_vec() };
    write_json(&paths.json, &WithMetadata { metadata: metadata.clone(), result: results })?;
    let mut tables = vec![report_table(report)];
    if !generations.is_empty() {
        tables.push(generation_table(generations));
    }
    write_tables(&paths.hdf5, metadata, &tables)?;
    Ok(paths)
}
