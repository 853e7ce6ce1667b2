//! Stage one of the experiment configuration: the raw TOML file plus `key=value` overrides.
//!
//! A [`RawConfig`] is exactly what the file says (serde, unknown keys rejected, defaults filled in);
//! [`crate::train::plan::TrainPlan`] is the validated, typed stage built from it. Overrides use
//! dotted keys (`optim.lr=3e-3`, `meft.neurons=4096`); the value is parsed as a TOML value and
//! taken as a string when that fails (`model.name=smollm2-135m-instruct`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A configuration error: names the file or field, what is wrong, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML does not parse, or a key is unknown / has the wrong type.
    #[error("config {origin}: {message}")]
    Parse {
        /// File name, or `overrides`.
        origin: String,
        /// The parser's message (names the key).
        message: String,
    },
    /// A `key=value` override is malformed.
    #[error("override `{arg}`: {reason}")]
    Override {
        /// The argument as given.
        arg: String,
        /// What is wrong.
        reason: String,
    },
    /// A field has an invalid value.
    #[error("config field `{field}`: {reason}; fix: {fix}")]
    Invalid {
        /// Dotted field name.
        field: String,
        /// What is wrong.
        reason: String,
        /// How to fix it.
        fix: String,
    },
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] for `field`.
    pub fn invalid(field: &str, reason: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), reason: reason.into(), fix: fix.into() }
    }
}

/// The fine-tuning method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodKind {
    /// The offloaded sparse adapter (spec §2–§5).
    #[default]
    Meft,
    /// The dense Parallel Adapter, all on the device.
    Pa,
    /// LoRA on attention (and optionally FFN) projections.
    Lora,
    /// AdapterH: the serial bottleneck adapter after the FFN (Houlsby et al. 2019).
    AdapterH,
    /// Full fine-tuning of the adapted layers' projections.
    FullFt,
    /// No adapter (base model; evaluation only, training is rejected).
    None,
}

impl MethodKind {
    /// The name used in reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::Meft => "MEFT",
            Self::Pa => "PA",
            Self::Lora => "LoRA",
            Self::AdapterH => "AdapterH",
            Self::FullFt => "full FT",
            Self::None => "base",
        }
    }
}

/// The whole experiment file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Seed of adapter initialisation, data order and dropout.
    pub seed: u64,
    /// Optimizer steps (0: use `epochs`).
    pub steps: u64,
    /// Passes over the training split (used when `steps` is 0).
    pub epochs: u64,
    /// Evaluate held-out loss every N optimizer steps (0: only at the end).
    pub eval_every: u64,
    /// Examples of each split that an evaluation scores (0: all of them).
    pub eval_examples: usize,
    /// Where metrics, checkpoints and the adapter go.
    pub output_dir: PathBuf,
    /// The fine-tuning method.
    pub method: MethodKind,
    /// Adapted layers: `all`, `a..b` (half-open) or `last:N`.
    pub layers: String,
    /// The model.
    pub model: RawModel,
    /// The data.
    pub dataset: RawDataset,
    /// MEFT parameters.
    pub meft: RawMeft,
    /// Parallel Adapter parameters.
    pub pa: RawPa,
    /// LoRA parameters.
    pub lora: RawLora,
    /// AdapterH parameters.
    pub adapter_h: RawAdapterH,
    /// Full fine-tuning parameters.
    pub full_ft: RawFullFt,
    /// Optimizer and schedule.
    pub optim: RawOptim,
    /// Batching.
    pub batch: RawBatch,
    /// Checkpointing.
    pub checkpoint: RawCheckpoint,
    /// The (simulated) device.
    pub device: RawDevice,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawModel {
    /// `tiny-random` (a small random LLaMA built from `seed`), a pinned model name, a `.gguf` file or
    /// an HF directory.
    pub name: String,
    /// Precision of the frozen products: `f32`, or `bf16` (bfloat16 inputs and weights, f32
    /// sums; AMX tiles where the CPU has them).
    pub precision: meft_models::ops::FrozenPrecision,
}

impl Default for RawModel {
    fn default() -> Self {
        Self { name: "tiny-random".into(), precision: meft_models::ops::FrozenPrecision::F32 }
    }
}

/// `[dataset]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDataset {
    /// `synthetic` (random key→value token facts), a benchmark (`nq_open`, `trivia_qa`, ...) or
    /// `user_qa` / `user_instruction` / `user_chat` with `path`.
    pub name: String,
    /// JSONL file for user data (or to override the cache file of a benchmark).
    pub path: Option<PathBuf>,
    /// Fraction of examples held out for evaluation, in [0, 1).
    pub held_out: f64,
    /// Seed of the hashed split.
    pub split_seed: u64,
    /// Use at most this many examples (0: all).
    pub limit: usize,
    /// `whole` sequence (authors' default) or `response` only.
    pub loss_mask: String,
    /// Synthetic task: number of facts.
    pub facts: usize,
    /// The system turn of the chat template: the `model`'s default, or `none` (no system turn).
    pub system_prompt: SystemPrompt,
    /// QA without the passage (closed-book), e.g. SQuAD questions alone.
    pub closed_book: bool,
}

/// Which system turn a chat-formatted example starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemPrompt {
    /// The model template's default system prompt (SmolLM2: "You are a helpful AI assistant ...").
    #[default]
    Model,
    /// No system turn unless the example has one.
    None,
}

impl Default for RawDataset {
    fn default() -> Self {
        Self {
            name: "synthetic".into(),
            path: None,
            held_out: 0.1,
            split_seed: 0,
            limit: 0,
            loss_mask: "whole".into(),
            facts: 64,
            system_prompt: SystemPrompt::Model,
            closed_book: false,
        }
    }
}

/// `[meft]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMeft {
    /// Neurons per adapted layer M.
    pub neurons: usize,
    /// Neurons kept per token K.
    pub top_k: usize,
    /// Experts probed per token P.
    pub top_p: usize,
    /// Experts N; 0 derives N = √M / `expert_factor`.
    pub experts: usize,
    /// Keys per expert as a fraction of √M (spec default 0.25, i.e. N = 4·√M).
    pub expert_factor: f64,
    /// Working-set capacity C in rows per layer; 0 fits it to the device budget.
    pub capacity: usize,
    /// `gated` or `plain` candidate scores.
    pub scoring: String,
    /// `per_token` or `union` evaluation.
    pub evaluation: String,
    /// `dense` or `lazy` host AdamW.
    pub host_optimizer: String,
    /// Pre-look distance p (0: route each layer from its own input).
    pub pre_look: usize,
}

impl Default for RawMeft {
    fn default() -> Self {
        Self {
            neurons: 4096,
            top_k: 64,
            top_p: 8,
            experts: 0,
            expert_factor: 0.25,
            capacity: 0,
            scoring: "gated".into(),
            evaluation: "per_token".into(),
            host_optimizer: "dense".into(),
            pre_look: 0,
        }
    }
}

/// `[pa]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPa {
    /// Neurons per adapted layer.
    pub size: usize,
    /// `relu` (paper) or `silu` (authors' code).
    pub activation: String,
}

impl Default for RawPa {
    fn default() -> Self {
        Self { size: 256, activation: "relu".into() }
    }
}

/// `[lora]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLora {
    /// Rank r.
    pub rank: usize,
    /// Scale numerator α (output scaled by α / r).
    pub alpha: f64,
    /// Input dropout probability.
    pub dropout: f64,
    /// Projections: any of `q k v o gate up down`.
    pub targets: Vec<String>,
}

impl Default for RawLora {
    fn default() -> Self {
        Self { rank: 8, alpha: 16.0, dropout: 0.05, targets: vec!["q".into(), "v".into()] }
    }
}

/// `[adapter_h]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdapterH {
    /// Bottleneck units per adapted layer.
    pub size: usize,
}

impl Default for RawAdapterH {
    fn default() -> Self {
        Self { size: 64 }
    }
}

/// `[full_ft]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFullFt {
    /// Projections trained: any of `q k v o gate up down` (default all; norms stay frozen).
    pub targets: Vec<String>,
}

impl Default for RawFullFt {
    fn default() -> Self {
        Self { targets: ["q", "k", "v", "o", "gate", "up", "down"].map(String::from).to_vec() }
    }
}

/// `[optim]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOptim {
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW β1.
    pub beta1: f64,
    /// AdamW β2.
    pub beta2: f64,
    /// AdamW ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Fraction of steps with linear warm-up.
    pub warmup: f64,
    /// After warm-up: `linear` decay to 0 or `constant`.
    pub decay: String,
    /// Global gradient-norm clip (0: off).
    pub clip: f64,
}

impl Default for RawOptim {
    fn default() -> Self {
        let adamw = meft_core::optim::AdamWConfig::default();
        Self {
            lr: adamw.lr,
            beta1: adamw.beta1,
            beta2: adamw.beta2,
            eps: adamw.eps,
            weight_decay: adamw.weight_decay,
            warmup: 0.02,
            decay: "linear".into(),
            clip: 1.0,
        }
    }
}

/// `[batch]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBatch {
    /// Sequences per micro-batch.
    pub micro: usize,
    /// Micro-batches per optimizer step.
    pub accumulation: usize,
    /// Truncate sequences to this many tokens.
    pub max_length: usize,
    /// `auto`: run the frozen layers below the lowest adapted one once per sequence and reuse
    /// their output every epoch (exact; spec §13); `off`: recompute them every step.
    pub prefix_cache: String,
    /// Sequences per forward during evaluation (0: `micro`).
    pub eval_micro: usize,
    /// Group training sequences of similar length into micro-batches over windows of this many
    /// micro-batches (0: off; the order stays a function of seed and epoch).
    pub group_by_length: usize,
}

impl Default for RawBatch {
    fn default() -> Self {
        Self { micro: 8, accumulation: 1, max_length: 256, prefix_cache: "auto".into(), eval_micro: 0, group_by_length: 0 }
    }
}

/// `[checkpoint]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCheckpoint {
    /// Write a checkpoint every N optimizer steps (0: only at the end).
    pub every: u64,
    /// Keep the last K checkpoints.
    pub keep_last: usize,
}

impl Default for RawCheckpoint {
    fn default() -> Self {
        Self { every: 0, keep_last: 2 }
    }
}

/// `[device]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDevice {
    /// Simulated device budget, e.g. `2GiB`, `512MiB` (empty: unlimited).
    pub budget: String,
}

impl RawConfig {
    /// Reads `path` and applies `overrides` (`a.b=value`).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, &path.display().to_string(), overrides)
    }

    /// Parses TOML `text` (from `origin`) and applies `overrides`.
    pub fn parse(text: &str, origin: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse { origin: origin.into(), message: e.to_string() })?;
        Self::from_table(table.clone()).map_err(|message| ConfigError::Parse { origin: origin.into(), message })?;
        for arg in overrides {
            apply_override(&mut table, arg)?;
            Self::from_table(table.clone()).map_err(|message| ConfigError::Override { arg: arg.clone(), reason: message })?;
        }
        Self::from_table(table).map_err(|message| ConfigError::Parse { origin: origin.into(), message })
    }

    fn from_table(table: toml::Table) -> Result<Self, String> {
        let text = toml::to_string(&table).map_err(|e| e.to_string())?;
        toml::from_str(&text).map_err(|e| e.message().to_string())
    }
}

/// Sets `key=value` in `table`, creating intermediate tables.
fn apply_override(table: &mut toml::Table, arg: &str) -> Result<(), ConfigError> {
    let bad = |reason: &str| ConfigError::Override { arg: arg.into(), reason: reason.into() };
    let (key, value) = arg.split_once('=').ok_or_else(|| bad("expected key=value, e.g. optim.lr=3e-3"))?;
    let path: Vec<&str> = key.trim().split('.').collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(bad("empty key segment; use dotted keys like meft.neurons"));
    }
    let value = parse_value(value.trim());
    let (last, parents) = path.split_last().ok_or_else(|| bad("empty key"))?;
    let mut cur = table;
    for p in parents {
        let entry = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| bad(&format!("`{p}` is not a table")))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(text: &str) -> toml::Value {
    let doc = format!("v = {text}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(text.into())),
        Err(_) => toml::Value::String(text.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_nested_and_string_values() {
        let c = RawConfig::parse(
            "method = 'pa'\n[optim]\nlr = 1e-3\n",
            "t.toml",
            &["optim.lr=3e-3".into(), "model.name=smollm2-135m-instruct".into(), "lora.targets=['q','k']".into()],
        )
        .expect("parse");
        assert_eq!(c.optim.lr, 3e-3);
        assert_eq!(c.model.name, "smollm2-135m-instruct");
        assert_eq!(c.lora.targets, ["q", "k"]);
        assert_eq!(c.method, MethodKind::Pa);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = RawConfig::parse("[optim]\nlrr = 1\n", "t.toml", &[]).unwrap_err().to_string();
        assert!(e.contains("lrr") && e.contains("t.toml"), "{e}");
        let e = RawConfig::parse("", "t.toml", &["meft.nurons=4".into()]).unwrap_err().to_string();
        assert!(e.contains("nurons") && e.contains("override"), "{e}");
        let e = RawConfig::parse("", "t.toml", &["noequals".into()]).unwrap_err().to_string();
        assert!(e.contains("key=value"), "{e}");
    }
}
