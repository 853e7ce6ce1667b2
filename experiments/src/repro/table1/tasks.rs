//! The task columns of Table 1: their data, training length and generation-based evaluation sets.

use std::sync::Arc;

use anyhow::Result;
use meft_eval::generation::{DecodeConfig, Decoding, PenaltyScope, RepetitionPenalty};
use meft_eval::{Dataset, Example};
use serde::Serialize;

use super::Plan;
use crate::repro::Profile;
use crate::repro::evaluate::{GenSet, greedy};
use crate::repro::setup::{self, Scale};
use crate::train::RawConfig;

/// Longest sequence trained in one micro-batch of 8; longer tasks accumulate micro-batches of 2.
const LONG_SEQUENCE: usize = 128;

/// What kind of column a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Closed-book question answering (the capacity columns).
    Qa,
    /// Function calling (BFCL, our ToolBench stand-in).
    Tool,
    /// Maths word problems.
    Math,
}

/// One column of Table 1.
#[derive(Debug, Clone, Serialize)]
pub struct Task {
    /// Column name (`nq_open`, `squad`, `trivia_qa`, `tool`, `math`, `synthetic`).
    pub name: String,
    /// Its kind.
    pub kind: TaskKind,
    /// The trainer's dataset name.
    pub dataset: String,
    /// Examples used (0: all).
    pub limit: usize,
    /// Held-out fraction.
    pub held_out: f64,
    /// Longest sequence.
    pub max_length: usize,
    /// Epochs.
    pub epochs: u64,
    /// Evaluate every this many epochs.
    pub eval_every_epochs: u64,
    /// Drop QA passages.
    pub closed_book: bool,
    /// Score the forgetting probes.
    pub probes: bool,
    /// Most tokens a generated answer may have.
    pub max_new_tokens: usize,
}

impl Task {
    fn qa(name: &str, s: &Scale) -> Self {
        Self {
            name: name.into(),
            kind: TaskKind::Qa,
            dataset: name.into(),
            limit: s.facts,
            held_out: 0.2,
            max_length: s.max_length,
            epochs: s.epochs,
            eval_every_epochs: s.eval_every_epochs,
            closed_book: name == "squad",
            probes: true,
            max_new_tokens: 24,
        }
    }

    /// The capacity scale with this task's size.
    pub fn scale(&self, s: &Scale) -> Scale {
        Scale { facts: self.limit, epochs: self.epochs, max_length: self.max_length, eval_every_epochs: self.eval_every_epochs, ..s.clone() }
    }

    /// Applies the task's data settings to `raw`.
    pub fn configure(&self, raw: &mut RawConfig) {
        raw.dataset.name = self.dataset.clone();
        raw.dataset.limit = if self.name == "synthetic" { 0 } else { self.limit };
        raw.dataset.held_out = self.held_out;
        raw.dataset.closed_book = self.closed_book;
        raw.batch.max_length = self.max_length;
        raw.epochs = self.epochs;
        if self.max_length > LONG_SEQUENCE {
            // Same 8 sequences per step, a quarter of the activations: two workers running full
            // fine-tuning on 512-token tool calls would otherwise outgrow 24 GiB.
            (raw.batch.micro, raw.batch.accumulation, raw.batch.eval_micro) = (2, raw.batch.micro.div_ceil(2), 8);
        }
    }
}

/// The columns of `profile` (real data: the five; the synthetic fallback: its fact task).
pub fn tasks(profile: Profile, real: bool, s: &Scale) -> Vec<Task> {
    if !real {
        return vec![Task { dataset: "synthetic".into(), probes: false, ..Task::qa("synthetic", s) }];
    }
    if profile == Profile::Smoke {
        return vec![Task::qa("nq_open", s)];
    }
    // The default halves the long columns (measured at 600 tool calls and 400 MATH solutions:
    // their 10 runs took 144 of Table 1's 242 run-minutes on 2 AVX2 cores).
    let (tool_limit, math_limit, extra_epochs) = match profile {
        Profile::Full => (0, 800, 2),
        _ => (300, 200, 1),
    };
    vec![
        Task::qa("nq_open", s),
        Task::qa("squad", s),
        Task::qa("trivia_qa", s),
        Task {
            name: "tool".into(),
            kind: TaskKind::Tool,
            dataset: "bfcl_simple_python+bfcl_multiple".into(),
            limit: tool_limit,
            held_out: 0.5,
            max_length: 512,
            epochs: extra_epochs,
            eval_every_epochs: 1,
            closed_book: false,
            probes: true,
            max_new_tokens: 64,
        },
        Task {
            name: "math".into(),
            kind: TaskKind::Math,
            dataset: "math".into(),
            limit: math_limit,
            held_out: 0.2,
            max_length: 384,
            epochs: extra_epochs,
            eval_every_epochs: 1,
            closed_book: false,
            probes: true,
            max_new_tokens: 128,
        },
    ]
}

/// The generation sets of a task: greedy on every run (seed 0), the paper's beam search on the
/// headline cells.
pub struct Generation {
    /// Greedy sets.
    pub greedy: Vec<GenSet>,
    /// Beam 4, repetition penalty 2 sets.
    pub beam: Vec<GenSet>,
}

/// The paper's decoding: beam 4, repetition penalty 2.
fn paper_beam(max_new_tokens: usize) -> DecodeConfig {
    DecodeConfig {
        decoding: Decoding::Beam { width: 4, length_penalty: 1.0 },
        max_new_tokens,
        repetition_penalty: RepetitionPenalty { penalty: 2.0, scope: PenaltyScope::Sequence },
    }
}

fn set(name: &str, dataset: &Dataset, examples: Vec<Example>, decode: DecodeConfig) -> GenSet {
    GenSet { name: name.into(), dataset: dataset.clone(), examples: Arc::new(examples), decode }
}

/// Builds the generation sets of `task` (none on the synthetic fallback).
pub fn generation_sets(task: &Task, base: &RawConfig, plan: &Plan) -> Result<Generation> {
    let n = plan.gen_examples;
    if n == 0 || task.name == "synthetic" {
        return Ok(Generation { greedy: Vec::new(), beam: Vec::new() });
    }
    let (train, held) = setup::split_examples(base)?;
    let first = |v: &[Example], k: usize| v.iter().take(k).cloned().collect::<Vec<_>>();
    let dataset = match task.kind {
        TaskKind::Tool => Dataset::Bfcl("simple_python".into()),
        _ => Dataset::parse(&task.dataset)?,
    };
    let g = greedy(task.max_new_tokens);
    let mut greedy_sets = vec![set("held_out", &dataset, first(&held, n), g.clone())];
    if task.kind != TaskKind::Math {
        greedy_sets.insert(0, set("trained", &dataset, first(&train, n), g.clone()));
    }
    if task.kind == TaskKind::Math {
        let cache = meft_assets::Cache::from_env();
        let gsm = Dataset::Gsm8k.load(&cache.dataset_path("gsm8k")?)?;
        greedy_sets.push(set("gsm8k", &Dataset::Gsm8k, first(&gsm, n), g));
    }
    let beam = match task.kind {
        TaskKind::Qa => vec![set("trained_beam", &dataset, first(&train, plan.beam_examples), paper_beam(task.max_new_tokens))],
        _ => Vec::new(),
    };
    Ok(Generation { greedy: greedy_sets, beam })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repro::DataSource;

    #[test]
    fn long_sequence_tasks_keep_eight_sequences_per_step_in_micro_batches_of_two() {
        let scale = Scale::of(Profile::Default, &DataSource::Real);
        for task in tasks(Profile::Default, true, &scale) {
            let mut raw = RawConfig::default();
            raw.batch.micro = 8;
            task.configure(&mut raw);
            assert_eq!(raw.batch.micro * raw.batch.accumulation, 8, "{}", task.name);
            let long = task.max_length > LONG_SEQUENCE;
            assert_eq!(raw.batch.micro, if long { 2 } else { 8 }, "{}", task.name);
        }
    }
}
