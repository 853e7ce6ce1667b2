//! Forgetting probes (beyond the paper): what a fine-tune costs the base model on what it
//! already knew.
//!
//! - **Known questions.** TriviaQA questions outside every training subset (rows from 2,000 of
//!   the validation file; the runs train on the first rows) whose greedy answer by the *base*
//!   model contains a gold alias (the paper's substring metric, case-insensitive); up to
//!   [`MAX_KNOWN`]. After a fine-tune, the fraction still answered.
//! - **Plain text.** The mean next-token NLL of [`TEXT_PASSAGES`] SQuAD passages (raw text, no
//!   chat template, the first [`TEXT_TOKENS`] tokens): held-out prose the runs never see.
//!
//! The text is scored through the run's own adapter and frozen-prefix cache
//! ([`crate::train::Trainer::score_probe`]), the questions by generation with the run's adapter.
//! On the synthetic fallback (no tokenizer, no text) there are no probes.

use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use meft_eval::{Dataset, Example};
use serde::{Deserialize, Serialize};

use super::evaluate::{self, GenSet, greedy};
use crate::train::data::Sequence;
use crate::train::{Inputs, Probe, Trainer};

/// First row of the TriviaQA file screened for known questions.
const POOL_START: usize = 2000;
/// Known questions kept at most.
pub const MAX_KNOWN: usize = 32;
/// SQuAD passages in the text probe.
pub const TEXT_PASSAGES: usize = 32;
/// Tokens per passage.
pub const TEXT_TOKENS: usize = 128;
/// Most tokens of a generated answer.
const ANSWER_TOKENS: usize = 24;

/// The probes of one model and frozen prefix.
pub struct Probes {
    known: GenSet,
    screened: usize,
    text: Probe,
}

/// A run's scores on the probes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProbeFacts {
    /// Fraction of the base model's known questions still answered.
    pub known_em: f64,
    /// How many known questions there are.
    pub known_count: usize,
    /// How many questions were screened to find them.
    pub screened: usize,
    /// Mean NLL of the plain-text passages (nats per token).
    pub text_nll: f64,
}

impl Probes {
    /// Screens `pool` TriviaQA questions with the base model and tokenises the passages.
    pub fn build(inputs: &Inputs, pool: usize) -> Result<Self> {
        let (tok, _) = inputs.text().context("forgetting probes need a model with a tokenizer (not the synthetic fallback)")?;
        let cache = meft_assets::Cache::from_env();
        let trivia = Dataset::TriviaQa.load(&cache.dataset_path("trivia_qa")?)?;
        let candidates: Vec<Example> = trivia.into_iter().skip(POOL_START).take(pool).collect();
        if candidates.is_empty() {
            bail!("the TriviaQA file has no rows from {POOL_START} for the forgetting probe");
        }
        let screen =
            GenSet { name: "known_screen".into(), dataset: Dataset::TriviaQa, examples: Arc::new(candidates.clone()), decode: greedy(ANSWER_TOKENS) };
        let base = evaluate::answer(inputs, &meft_core::NoAdapters, None, evaluate::GENERATION_BATCH, &screen)?;
        let known: Vec<Example> = candidates.into_iter().zip(&base.primary).filter(|(_, hit)| **hit).map(|(e, _)| e).take(MAX_KNOWN).collect();
        eprintln!(
            "[probes] the base model answers {} of {} held-out TriviaQA questions (kept {})",
            base.primary.iter().filter(|&&h| h).count(),
            base.n,
            known.len()
        );
        let known = GenSet { name: "known".into(), dataset: Dataset::TriviaQa, examples: Arc::new(known), decode: greedy(ANSWER_TOKENS) };
        Ok(Self { known, screened: base.n, text: Probe::new(inputs, passages(tok)?)? })
    }

    /// `trainer`'s scores.
    pub fn score(&self, trainer: &Trainer, inputs: &Inputs) -> Result<ProbeFacts> {
        let known = evaluate::generate(trainer, inputs, &self.known)?;
        let hits = known.primary.iter().filter(|&&e| e).count();
        Ok(ProbeFacts {
            known_em: hits as f64 / known.n.max(1) as f64,
            known_count: known.n,
            screened: self.screened,
            text_nll: trainer.score_probe(&self.text)?.mean_loss,
        })
    }
}

/// The first tokens of the first distinct SQuAD passages, every token but the first scored.
fn passages(tok: &meft_models::Tokenizer) -> Result<Vec<Sequence>> {
    let cache = meft_assets::Cache::from_env();
    let squad = Dataset::Squad.load(&cache.dataset_path("squad")?)?;
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for e in &squad {
        let Example::Qa(qa) = e else { continue };
        let Some(p) = &qa.context else { continue };
        if out.len() == TEXT_PASSAGES || !seen.insert(p.text.clone()) {
            continue;
        }
        let mut tokens = tok.encode(&p.text)?;
        tokens.truncate(TEXT_TOKENS);
        if tokens.len() < 2 {
            continue;
        }
        let weights = (0..tokens.len()).map(|i| u8::from(i > 0)).collect();
        out.push(Sequence { prompt_len: tokens.len(), weights, tokens });
    }
    Ok(out)
}
