//! Inputs for the routing studies (experiments 2 and 3): the FFN inputs x of real prompts at a few
//! adapted layers, and adapter keys drawn as MEFT initialises them.
//!
//! On [`DataSource::Real`] the prompts are NQ-open questions with their first answer, rendered
//! through SmolLM2's chat template exactly as the trainer renders them (`train::data::tokenise`,
//! whole sequence); on [`DataSource::Synthetic`] they are the synthetic key → value facts for
//! `tiny-random`. The sequences run through the frozen model in right-padded batches, up to the
//! last captured layer only; padded positions are dropped, so every captured row is a real token. A recording
//! [`AdapterHook`] copies x at the chosen layers and adds nothing.
//!
//! Captures are memoised per process: experiments 2 and 3 share one forward pass.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use candle_core::{DType, Device, Tensor};
use meft_core::{AdapterHook, LinearSite};
use meft_eval::LossMask;
use rand::SeedableRng;
use rand_distr::Distribution;

use super::{Context, DataSource};
use crate::train::build::{self, Frozen};
use crate::train::config::RawDataset;
use crate::train::data::{self, Sequence};

/// Longest sequence kept (tokens), as the paper's max length.
const MAX_LEN: usize = 256;

/// FFN inputs of a set of sequences at some layers.
#[derive(Debug)]
pub struct Captured {
    /// Hidden size d.
    pub hidden: usize,
    /// Model layers captured, ascending.
    pub layers: Vec<usize>,
    /// Tokens of each sequence, in order; their rows are consecutive in every layer's inputs.
    pub seq_lens: Vec<usize>,
    /// Per captured layer (same order as `layers`): all tokens' x, `tokens × d` row-major.
    pub inputs: Vec<Vec<f32>>,
    /// What the sequences are (for the report).
    pub description: String,
    /// Seconds spent loading the model and running the forward passes.
    pub seconds: f64,
}

impl Captured {
    /// Total tokens T over all sequences.
    pub fn tokens(&self) -> usize {
        self.seq_lens.iter().sum()
    }

    /// Token rows of sequences `first..first + count`.
    pub fn rows_of(&self, first: usize, count: usize) -> std::ops::Range<usize> {
        let start: usize = self.seq_lens[..first].iter().sum();
        let len: usize = self.seq_lens[first..first + count].iter().sum();
        start..start + len
    }
}

/// A hook that records x at `layers` and adds nothing.
struct Recorder {
    layers: Vec<usize>,
    seen: Mutex<BTreeMap<usize, Vec<f32>>>,
}

impl AdapterHook for Recorder {
    fn ffn(&self, layer: usize, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        if self.layers.contains(&layer) {
            let rows = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.entry(layer).or_default().extend(rows);
        }
        Ok(None)
    }

    fn linear(&self, _: usize, _: LinearSite, _: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(None)
    }

    fn adapts_projections(&self, _: usize) -> bool {
        false
    }
}

/// Three layers spread over the depth (a third, two thirds, the last), deduplicated.
pub fn spread_layers(num_layers: usize) -> Vec<usize> {
    let mut layers = vec![num_layers / 3, 2 * num_layers / 3, num_layers.saturating_sub(1)];
    layers.dedup();
    layers
}

/// The frozen model of `ctx` and `n` tokenised sequences, with a description of them.
pub fn model_and_sequences(ctx: &Context, n: usize) -> Result<(Frozen, Vec<Sequence>, String)> {
    let frozen = build::model(ctx.model_name(), ctx.seed).with_context(|| format!("loading model {}", ctx.model_name()))?;
    let mask = LossMask::WholeSequence;
    let (seqs, what) = match (&ctx.source, &frozen.text) {
        (DataSource::Real, Some((tok, chat))) => {
            let raw = RawDataset { name: "nq_open".into(), limit: n, ..RawDataset::default() };
            let examples = data::load_examples(&raw)?;
            let seqs = data::tokenise(&examples, tok, chat, mask, MAX_LEN)?;
            let what = format!(
                "the first {} NQ-open validation questions with their first answer, in SmolLM2's \
                 chat template (prompt + answer)",
                seqs.len()
            );
            (seqs, what)
        }
        (DataSource::Real, None) => bail!("model {} has no tokenizer", ctx.model_name()),
        (DataSource::Synthetic { .. }, _) => {
            let vocab = frozen.model.config.vocab_size;
            let seqs = data::synthetic(n, vocab, ctx.seed, mask)?;
            let what = format!("{n} synthetic key → value facts (8 tokens each) for tiny-random");
            (seqs, what)
        }
    };
    if seqs.is_empty() {
        bail!("no sequences to capture: the dataset is empty");
    }
    Ok((frozen, seqs, what))
}

/// Sequences per forward pass when capturing.
const CAPTURE_BATCH: usize = 16;

/// Runs the sequences, in right-padded batches, through the layers up to the last of `layers`,
/// recording x. Attention is causal, so a token's x does not depend on the padding after it;
/// padded rows are dropped.
fn record(frozen: &Frozen, seqs: &[Sequence], layers: &[usize]) -> Result<Vec<Vec<f32>>> {
    let model = &frozen.model;
    let last = *layers.last().context("no layers to capture")?;
    let d = model.config.hidden_size;
    let mut out = vec![Vec::new(); layers.len()];
    for batch in seqs.chunks(CAPTURE_BATCH) {
        let refs: Vec<&Sequence> = batch.iter().collect();
        let (tokens, _) = data::collate(&refs, &Device::Cpu)?;
        let width = tokens.dim(1)?;
        let hook = Recorder { layers: layers.to_vec(), seen: Mutex::new(BTreeMap::new()) };
        let mut h = model.embed(&tokens)?;
        let lctx = model.context(&hook, model.op_path, 0, width);
        for layer in &model.layers[..=last] {
            h = layer.forward(&h, &lctx, None)?;
        }
        let mut seen = hook.seen.into_inner().unwrap_or_else(|e| e.into_inner());
        for (l, dst) in layers.iter().zip(&mut out) {
            let x = seen.remove(l).with_context(|| format!("layer {l} was never reached"))?;
            for (i, s) in batch.iter().enumerate() {
                dst.extend_from_slice(&x[i * width * d..(i * width + s.tokens.len()) * d]);
            }
        }
    }
    Ok(out)
}

/// Memo key: model, source kind, sequence count, seed.
type Key = (String, bool, usize, u64);

/// Captured FFN inputs of `n` sequences at [`spread_layers`], memoised per process.
pub fn capture(ctx: &Context, n: usize) -> Result<Arc<Captured>> {
    static MEMO: Mutex<Vec<(Key, Arc<Captured>)>> = Mutex::new(Vec::new());
    let key: Key = (ctx.model_name().into(), ctx.source == DataSource::Real, n, ctx.seed);
    let mut memo = MEMO.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, c)) = memo.iter().find(|(k, _)| *k == key) {
        return Ok(c.clone());
    }
    let start = Instant::now();
    let (frozen, seqs, description) = model_and_sequences(ctx, n)?;
    let layers = spread_layers(frozen.model.config.num_hidden_layers);
    let inputs = record(&frozen, &seqs, &layers)?;
    let captured = Arc::new(Captured {
        hidden: frozen.model.config.hidden_size,
        layers,
        seq_lens: seqs.iter().map(|s| s.tokens.len()).collect(),
        inputs,
        description,
        seconds: start.elapsed().as_secs_f64(),
    });
    memo.push((key, captured.clone()));
    Ok(captured)
}

/// Keys as MEFT initialises them (spec §4): `m × d` draws of N(0, 0.02), row-major, from
/// `(seed, layer)`.
pub fn meft_keys(neurons: usize, hidden: usize, seed: u64, layer: usize) -> Result<Vec<f32>> {
    let normal = rand_distr::Normal::new(0f32, 0.02)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (layer as u64).wrapping_mul(0x9e37_79b9));
    Ok((0..neurons * hidden).map(|_| normal.sample(&mut rng)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_layers_are_distinct_and_in_range() {
        assert_eq!(spread_layers(30), vec![10, 20, 29]);
        assert_eq!(spread_layers(4), vec![1, 2, 3]);
        assert_eq!(spread_layers(1), vec![0]);
    }

    #[test]
    fn padded_batches_capture_what_single_sequences_do() {
        let frozen = build::model(build::TINY_RANDOM, 1).unwrap();
        let mut seqs = data::synthetic(5, 64, 1, LossMask::WholeSequence).unwrap();
        for (i, s) in seqs.iter_mut().enumerate() {
            s.tokens.truncate(3 + i);
        }
        let layers = [1, 3];
        let batched = record(&frozen, &seqs, &layers).unwrap();
        let single: Vec<Vec<Vec<f32>>> = seqs.chunks(1).map(|one| record(&frozen, one, &layers).unwrap()).collect();
        for (li, all) in batched.iter().enumerate() {
            let joined: Vec<f32> = single.iter().flat_map(|s| s[li].iter().copied()).collect();
            assert_eq!(all.len(), joined.len());
            for (a, b) in all.iter().zip(&joined) {
                assert!((a - b).abs() <= 1e-4 + 1e-4 * b.abs(), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn synthetic_capture_has_one_row_per_token() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Context { seed: 3, ..Context::synthetic_in(dir.path(), super::super::Profile::Smoke, "test") };
        let c = capture(&ctx, 5).unwrap();
        assert_eq!(c.seq_lens, vec![8; 5]);
        assert_eq!(c.rows_of(1, 2), 8..24);
        for x in &c.inputs {
            assert_eq!(x.len(), c.tokens() * c.hidden);
            assert!(x.iter().all(|v| v.is_finite()));
        }
        assert!(Arc::ptr_eq(&c, &capture(&ctx, 5).unwrap()), "memoised");
    }
}
