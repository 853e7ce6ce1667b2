//! Training data: tokenised sequences with loss weights, split into train / held-out, and a
//! deterministic batch order that a checkpoint can resume from.
//!
//! Sources: the `synthetic` knowledge task (random key → value token facts for a tiny random
//! model; the offline fallback), or any meft-eval dataset rendered through the model's chat
//! template. The order of epoch `e` is a permutation drawn from `(seed, e)` alone, so the data
//! position is just `(epoch, cursor)`.

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use meft_eval::{Dataset, Example, LossMask, SplitConfig};
use meft_models::Tokenizer;
use meft_models::chat::ChatTemplate;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::config::RawDataset;

/// One tokenised training sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// Token ids (prompt then completion), truncated to the max length.
    pub tokens: Vec<u32>,
    /// 1 where the token is a loss target.
    pub weights: Vec<u8>,
    /// Tokens of the prompt (completion starts here).
    pub prompt_len: usize,
}

/// Train and held-out sequences.
#[derive(Debug, Clone)]
pub struct Data {
    /// Training split.
    pub train: Vec<Sequence>,
    /// Held-out split.
    pub held_out: Vec<Sequence>,
}

/// Where the loop is in the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataPosition {
    /// Current epoch.
    pub epoch: u64,
    /// Next index into the epoch's permutation.
    pub cursor: usize,
}

/// Token facts of the synthetic task: `[1, k1, k2, k3, 2, v1, v2, v3]` with 3 random key and
/// value tokens from ids 3.. of `vocab`; the completion is the value.
pub fn synthetic(facts: usize, vocab: usize, seed: u64, mask: LossMask) -> Result<Vec<Sequence>> {
    if vocab < 8 {
        bail!("the synthetic task needs a vocabulary of at least 8 tokens (got {vocab})");
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_da7a);
    let mut draw = || rand::Rng::random_range(&mut rng, 3..vocab as u32);
    Ok((0..facts)
        .map(|_| {
            let mut tokens = vec![1];
            tokens.extend((0..3).map(|_| draw()));
            tokens.push(2);
            tokens.extend((0..3).map(|_| draw()));
            Sequence { weights: mask.weights(5, 3), tokens, prompt_len: 5 }
        })
        .collect())
}

/// Tokenises `examples` through `chat`.
pub fn tokenise(examples: &[Example], tok: &Tokenizer, chat: &ChatTemplate, mask: LossMask, max_len: usize) -> Result<Vec<Sequence>> {
    examples
        .iter()
        .map(|e| {
            let r = meft_eval::render(e, chat);
            let mut tokens = tok.encode(&r.prompt)?;
            let prompt_len = tokens.len();
            tokens.extend(tok.encode(&r.completion)?);
            let mut weights = mask.weights(prompt_len, tokens.len() - prompt_len);
            tokens.truncate(max_len);
            weights.truncate(max_len);
            Ok(Sequence { tokens, weights, prompt_len: prompt_len.min(max_len) })
        })
        .collect()
}

/// Loads the examples of a meft-eval dataset (the cache file, or `path`), capped at `limit`.
///
/// `name` may join several benchmarks with `+` (`bfcl_simple_python+bfcl_multiple`): their
/// examples follow each other in that order (ids must stay distinct), and `limit` takes the
/// first rows of each in proportion to its size, so the mix stays the benchmarks' own.
/// `closed_book` drops QA passages.
pub fn load_examples(cfg: &RawDataset) -> Result<Vec<Example>> {
    let parts: Vec<&str> = cfg.name.split('+').map(str::trim).collect();
    if parts.len() > 1 && cfg.path.is_some() {
        bail!("dataset.path names one file but dataset.name `{}` joins {} datasets; drop the path or the `+`", cfg.name, parts.len());
    }
    let mut loaded = Vec::new();
    for name in parts {
        let dataset = Dataset::parse(name)?;
        let path = match (&cfg.path, &dataset) {
            (Some(p), _) => p.clone(),
            (None, Dataset::User(_)) => bail!("dataset.path is required for {name} (a JSONL file)"),
            (None, _) => meft_assets::Cache::from_env().dataset_path(name).with_context(|| format!("locating dataset {name}"))?,
        };
        loaded.push(dataset.load(&path)?);
    }
    let sizes: Vec<usize> = loaded.iter().map(Vec::len).collect();
    let mut examples = Vec::new();
    for (part, keep) in loaded.into_iter().zip(proportional_caps(&sizes, cfg.limit)) {
        examples.extend(part.into_iter().take(keep));
    }
    if cfg.closed_book {
        for e in &mut examples {
            if let Example::Qa(qa) = e {
                qa.context = None;
            }
        }
    }
    Ok(examples)
}

/// How many of each part's rows `limit` keeps (0: all): shares proportional to the sizes, rounded
/// down, the rows left over going to the first parts; they sum to `min(limit, total)`.
fn proportional_caps(sizes: &[usize], limit: usize) -> Vec<usize> {
    let total: usize = sizes.iter().sum();
    if limit == 0 || limit >= total {
        return sizes.to_vec();
    }
    let mut caps: Vec<usize> = sizes.iter().map(|&n| n * limit / total).collect();
    let mut left = limit - caps.iter().sum::<usize>();
    for (cap, &n) in caps.iter_mut().zip(sizes) {
        let more = left.min(n - *cap);
        *cap += more;
        left -= more;
    }
    caps
}

/// Splits `items` deterministically (hashed ids for real data, index ids for synthetic data).
pub fn split<T>(items: Vec<T>, ids: &[String], cfg: &RawDataset) -> Result<(Vec<T>, Vec<T>)> {
    let split = SplitConfig::new(cfg.held_out, cfg.split_seed)?;
    let (mut train, mut held) = (Vec::new(), Vec::new());
    for (item, id) in items.into_iter().zip(ids) {
        match split.split_of(id) {
            meft_eval::Split::Train => train.push(item),
            meft_eval::Split::HeldOut => held.push(item),
        }
    }
    Ok((train, held))
}

/// The batch order of `epoch`.
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ epoch);
    order.shuffle(&mut rng);
    order
}

/// How an epoch's order is cut into micro-batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Sequences per micro-batch.
    pub micro: usize,
    /// Group lengths over windows of this many micro-batches (0 or 1: off): within each window
    /// of the shuffled order the sequences are sorted by length, cut into micro-batches, and the
    /// micro-batches shuffled, so a batch pads to similar lengths.
    pub group_window: usize,
}

/// The order of `epoch` for sequences of `lens`: [`permutation`], length-grouped per
/// [`Batching::group_window`].
pub fn epoch_order(lens: &[usize], seed: u64, epoch: u64, b: Batching) -> Vec<usize> {
    let mut order = permutation(lens.len(), seed, epoch);
    let window = b.micro * b.group_window;
    if b.group_window < 2 || b.micro == 0 {
        return order;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(0xd134_2543_de82_ef95) ^ epoch);
    for chunk in order.chunks_mut(window) {
        chunk.sort_by_key(|&i| (lens[i], i));
        let mut batches: Vec<Vec<usize>> = chunk.chunks(b.micro).map(<[usize]>::to_vec).collect();
        batches.shuffle(&mut rng);
        for (slot, i) in chunk.iter_mut().zip(batches.into_iter().flatten()) {
            *slot = i;
        }
    }
    order
}

/// The next micro-batch's indices into the training split of sequence lengths `lens`,
/// advancing `pos` (the position is an index into [`epoch_order`]).
pub fn next_batch(pos: &mut DataPosition, lens: &[usize], b: Batching, seed: u64) -> Vec<usize> {
    let n = lens.len();
    let mut out = Vec::with_capacity(b.micro);
    let mut order = epoch_order(lens, seed, pos.epoch, b);
    while out.len() < b.micro {
        if pos.cursor >= n {
            pos.epoch += 1;
            pos.cursor = 0;
            order = epoch_order(lens, seed, pos.epoch, b);
        }
        out.push(order[pos.cursor]);
        pos.cursor += 1;
    }
    out
}

/// Right-padded `(tokens, mask)` tensors `(batch, longest)` of `seqs` (pad id 0, weight 0).
pub fn collate(seqs: &[&Sequence], device: &Device) -> Result<(Tensor, Tensor)> {
    let len = seqs.iter().map(|s| s.tokens.len()).max().unwrap_or(0).max(2);
    let mut tokens = Vec::with_capacity(seqs.len() * len);
    let mut mask = Vec::with_capacity(seqs.len() * len);
    for s in seqs {
        tokens.extend(s.tokens.iter().copied().chain(std::iter::repeat(0)).take(len));
        mask.extend(s.weights.iter().map(|&w| f32::from(w)).chain(std::iter::repeat(0.0)).take(len));
    }
    let b = seqs.len();
    Ok((Tensor::from_vec(tokens, (b, len), device)?, Tensor::from_vec(mask, (b, len), device)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_on_joined_datasets_keeps_their_proportions_and_sums_to_the_limit() {
        assert_eq!(proportional_caps(&[400, 200], 300), vec![200, 100]);
        assert_eq!(proportional_caps(&[400, 200], 0), vec![400, 200]);
        assert_eq!(proportional_caps(&[400, 200], 1000), vec![400, 200]);
        assert_eq!(proportional_caps(&[10], 3), vec![3]);
        for (sizes, limit) in [(vec![7, 5, 3], 10), (vec![1, 1, 9], 4), (vec![0, 5], 2), (vec![3, 3, 3], 8)] {
            let caps = proportional_caps(&sizes, limit);
            assert_eq!(caps.iter().sum::<usize>(), limit, "{sizes:?} at {limit}");
            assert!(caps.iter().zip(&sizes).all(|(c, n)| c <= n), "{sizes:?} at {limit}: {caps:?}");
        }
    }

    #[test]
    fn batches_resume_from_a_position() {
        let lens: Vec<usize> = (0..10).map(|i| 3 + i * 7 % 5).collect();
        for group_window in [0, 2] {
            let b = Batching { micro: 3, group_window };
            let mut a = DataPosition::default();
            let full: Vec<Vec<usize>> = (0..7).map(|_| next_batch(&mut a, &lens, b, 5)).collect();
            let mut p = DataPosition::default();
            for _ in 0..3 {
                next_batch(&mut p, &lens, b, 5);
            }
            let mut resumed = p;
            let rest: Vec<Vec<usize>> = (3..7).map(|_| next_batch(&mut resumed, &lens, b, 5)).collect();
            assert_eq!(&full[3..], &rest[..]);
            assert_eq!(a, resumed);
        }
    }

    /// Length grouping keeps every sequence once per epoch and pads less.
    #[test]
    fn length_grouping_is_a_permutation_that_pads_less() {
        let lens: Vec<usize> = (0..96).map(|i| 10 + (i * 37) % 41).collect();
        let padded = |order: &[usize]| order.chunks(8).map(|c| c.iter().map(|&i| lens[i]).max().unwrap_or(0) * c.len()).sum::<usize>();
        let plain = epoch_order(&lens, 3, 1, Batching { micro: 8, group_window: 0 });
        let grouped = epoch_order(&lens, 3, 1, Batching { micro: 8, group_window: 6 });
        let mut sorted = grouped.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..96).collect::<Vec<_>>());
        assert!(padded(&grouped) < padded(&plain), "{} vs {}", padded(&grouped), padded(&plain));
        assert_eq!(plain, permutation(96, 3, 1));
    }
}
