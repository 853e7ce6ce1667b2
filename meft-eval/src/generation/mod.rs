//! Generation-based evaluation: prompt → chat template → tokens → decoding with the KV cache →
//! prediction text → [`score_examples`].
//!
//! - [`decode`]: greedy, seeded sampling and beam search over any [`Stepper`], with the
//!   repetition penalty, streaming, and the exhaustive reference that beam search is tested
//!   against; the workspace's one decoder (`meft generate` streams through it too).
//! - [`model`]: the [`Stepper`] over a `meft_models::Llama` and the model's chat template.
//! - [`output`]: the results JSON and the HDF5 per-example tables of an evaluation.
//!
//! A prediction is the decoded text of the new tokens without the final stop token, trimmed of
//! surrounding whitespace. Greedy decoding answers [`EvalConfig::batch`] examples side by side
//! (one batched forward per step, [`decode::greedy_many`]); beam search answers one example at
//! a time with its beams batched (at most [`EvalConfig::batch`] rows per forward). Either way
//! each answer is the one decoding it alone gives (up to float rounding of the batched matmuls)
//! for adapters that treat rows independently, and a run is deterministic for a given model,
//! adapter and configuration.

pub mod decode;
pub mod model;
pub mod output;
mod sample;

use std::collections::HashMap;
use std::time::Instant;

use meft_core::AdapterHook;
use meft_models::{Llama, Tokenizer};
use serde::{Deserialize, Serialize};

pub use decode::{DecodeConfig, Decoded, Decoding, PenaltyScope, RepetitionPenalty, Stepper, StopReason, decode_streaming};
pub use model::{LlamaStepper, stop_tokens};

use crate::datasets::Dataset;
use crate::error::Result;
use crate::example::Example;
use crate::prompt::{ChatTemplate, render};
use crate::score::{Coverage, Metric, Report, score_examples};

/// Settings of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    /// How replies are decoded.
    pub decode: DecodeConfig,
    /// Rows per decoding forward: examples decoded side by side by greedy decoding, or the
    /// beams of one example in beam search (1 = one row per forward). An adapter whose device
    /// capacity is shared by the rows of a forward call (MEFT's working set) must keep the rows
    /// few enough that batching cannot drop selections that decoding alone keeps.
    #[serde(default = "default_batch")]
    pub batch: usize,
}

fn default_batch() -> usize {
    8
}

impl EvalConfig {
    /// Checks the decoding settings and the batch size, naming the setting to fix.
    pub fn validate(&self) -> Result<()> {
        self.decode.validate()?;
        if self.batch == 0 {
            return Err(crate::EvalError::Decode { problem: "the generation batch must be at least 1".into() });
        }
        Ok(())
    }
}

impl Default for EvalConfig {
    /// Greedy, 64 new tokens, no repetition penalty (the fast default; the paper used beam 4,
    /// penalty 2.0 and 256 tokens).
    fn default() -> Self {
        Self {
            decode: DecodeConfig { decoding: Decoding::Greedy, max_new_tokens: 64, repetition_penalty: RepetitionPenalty::default() },
            batch: default_batch(),
        }
    }
}

/// Generation facts of one example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// Example id.
    pub id: String,
    /// Tokens in the rendered prompt.
    pub prompt_tokens: usize,
    /// Tokens generated, stop token included.
    pub new_tokens: usize,
    /// Why generation ended.
    pub stop: StopReason,
    /// Sum of the (penalised) log-probabilities of the new tokens, in nats.
    pub log_prob: f64,
    /// Seconds spent on this example (prompt and generation; in a batch, an equal share of the
    /// batch's time).
    pub seconds: f64,
}

/// The outcome of [`Evaluator::evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Scores, with every example's prediction.
    pub report: Report,
    /// Per-example generation facts, in the order of `report.examples`.
    pub generations: Vec<Generation>,
    /// Seconds for the whole evaluation.
    pub wall_seconds: f64,
}

impl Evaluation {
    /// Generated tokens in total.
    pub fn new_tokens(&self) -> usize {
        self.generations.iter().map(|g| g.new_tokens).sum()
    }
}

/// A model ready to answer: network, adapters, tokenizer and chat template.
pub struct Evaluator<'a> {
    /// The network.
    pub model: &'a Llama,
    /// Its tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// How prompts are rendered.
    pub template: &'a dyn ChatTemplate,
    /// Adapters ([`meft_core::NoAdapters`] for the base model).
    pub hook: &'a dyn AdapterHook,
    /// Called after every forward call (see [`LlamaStepper::after_forward`]).
    pub after_forward: Option<&'a dyn Fn()>,
}

impl Evaluator<'_> {
    /// The reply to one example.
    pub fn answer(&self, example: &Example, config: &EvalConfig) -> Result<(String, Generation)> {
        let start = Instant::now();
        let stops = stop_tokens(self.tokenizer, self.template)?;
        let prompt = self.prompt(example)?;
        let decoded = decode::decode(&self.stepper(config), &prompt, &config.decode, &stops)?;
        self.reply(example, prompt.len(), &decoded, start.elapsed().as_secs_f64())
    }

    /// The replies to `examples`, greedy ones decoded side by side (see the module doc).
    pub fn answer_many(&self, examples: &[Example], config: &EvalConfig) -> Result<Vec<(String, Generation)>> {
        if config.decode.decoding != Decoding::Greedy || examples.len() == 1 {
            return examples.iter().map(|e| self.answer(e, config)).collect();
        }
        let start = Instant::now();
        let stops = stop_tokens(self.tokenizer, self.template)?;
        let prompts = examples.iter().map(|e| self.prompt(e)).collect::<Result<Vec<_>>>()?;
        let decoded = decode::greedy_many(&self.stepper(config), &prompts, &config.decode, &stops)?;
        // One batch: each example is charged an equal share of its wall time.
        let seconds = start.elapsed().as_secs_f64() / examples.len() as f64;
        examples.iter().zip(prompts).zip(decoded).map(|((example, prompt), decoded)| self.reply(example, prompt.len(), &decoded, seconds)).collect()
    }

    /// The tokens of `example`'s rendered prompt.
    fn prompt(&self, example: &Example) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode(&render(example, self.template).prompt)?)
    }

    /// The prediction text of `decoded` (without the stop token, trimmed) and its facts.
    fn reply(&self, example: &Example, prompt_tokens: usize, decoded: &Decoded, seconds: f64) -> Result<(String, Generation)> {
        let text = self.tokenizer.decode(decoded.content())?.trim().to_owned();
        Ok((text, generation(example, prompt_tokens, decoded, seconds)))
    }

    fn stepper(&self, config: &EvalConfig) -> LlamaStepper<'_> {
        LlamaStepper { model: self.model, hook: self.hook, after_forward: self.after_forward, rows: config.batch }
    }

    /// Answers every example of `examples` (from `dataset`) and scores the answers with the
    /// dataset's metric; `on_done(i, n)` is called after each batch of examples.
    pub fn evaluate(
        &self,
        dataset: &Dataset,
        examples: &[Example],
        config: &EvalConfig,
        on_done: &mut dyn FnMut(usize, usize),
    ) -> Result<Evaluation> {
        config.validate()?;
        let start = Instant::now();
        let mut texts = Vec::with_capacity(examples.len());
        let mut generations = Vec::with_capacity(examples.len());
        for chunk in examples.chunks(config.batch) {
            for (text, generation) in self.answer_many(chunk, config)? {
                texts.push(text);
                generations.push(generation);
            }
            on_done(texts.len(), examples.len());
        }
        let predictions: HashMap<&str, &str> = examples.iter().zip(&texts).map(|(e, t)| (e.id(), t.as_str())).collect();
        let report = score_examples(&dataset.name(), examples, &predictions, Metric::for_dataset(dataset), Coverage::Predicted);
        Ok(Evaluation { report, generations, wall_seconds: start.elapsed().as_secs_f64() })
    }
}

/// The generation facts of one decoded example.
fn generation(example: &Example, prompt_tokens: usize, decoded: &Decoded, seconds: f64) -> Generation {
    Generation {
        id: example.id().to_owned(),
        prompt_tokens,
        new_tokens: decoded.tokens.len(),
        stop: decoded.stop,
        log_prob: decoded.log_prob,
        seconds,
    }
}

#[cfg(test)]
mod tests;
