//! Datasets, prompts, metrics and evaluation results for meft.
//!
//! - [`datasets`] / [`bfcl`] / [`user`]: load the pinned benchmark JSONL files (written by
//!   `meft-assets` under `$MEFT_HOME/data/`) and user JSONL into typed [`Example`]s; bad rows are
//!   typed errors naming the file, line and field.
//! - [`split`]: deterministic train / held-out splits by hashing stable ids (FNV-1a + fmix64).
//! - [`prompt`]: examples to chat messages and targets, rendered by a [`ChatTemplate`]; [`LossMask`].
//! - [`metrics`]: substring EM, SQuAD EM / F1, GSM8K / MATH answer accuracy, BFCL call match, IoU.
//! - [`score`]: score predictions from any system ([`score_predictions`]) into a [`Report`].
//! - [`generation`]: generation-based evaluation of a model (greedy / beam search with the KV
//!   cache) and its output files.
//! - [`results`] (JSON) and [`h5`] (HDF5): self-describing result files.

pub mod bfcl;
pub mod datasets;
pub mod error;
pub mod example;
pub mod generation;
pub mod h5;
pub mod jsonl;
pub mod metrics;
pub mod prompt;
pub mod results;
pub mod score;
pub mod split;
pub mod user;

pub use datasets::Dataset;
pub use error::{EvalError, Result};
pub use example::{ChatMessage, Example, MathExample, QaExample, Role, ToolExample, ToolExpectation};
pub use generation::{EvalConfig, Evaluation, Evaluator};
pub use prompt::{ChatTemplate, FnTemplate, LossMask, render, to_prompt};
pub use score::{Coverage, Metric, Report, score_examples, score_predictions};
pub use split::{Split, SplitConfig};
pub use user::{UserFormat, load_user_file};
