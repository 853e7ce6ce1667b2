//! The training forward, made cheap where that is exact.
//!
//! - **Frozen prefix cache** (spec §13): when every adapter sits at or above layer `start`, the
//!   layers below it see no adapter and no gradient, so their output for a sequence never changes.
//!   [`FrozenPrefix`] runs them once per sequence and keeps the hidden states; each step then runs
//!   only layers `start..`. Right padding keeps this exact: causal attention never lets a padded
//!   position reach a real one.
//! - **Head only where needed**: the output head (vocabulary × hidden, the largest matmul of a
//!   small model) runs only on the positions whose next token is a loss target or a completion
//!   token to check, not on the whole batch.
//!
//! [`Positions`] says which rows those are; [`Outputs`] holds the head's results for them.

use anyhow::{Result, bail};
use candle_core::{D, DType, Tensor};
use meft_core::{AdapterHook, NoAdapters};
use meft_models::{Llama, ops};
use rayon::prelude::*;

use super::data::Sequence;

/// Hidden states entering layer `start`, one `(len, hidden)` tensor per sequence.
#[derive(Clone)]
pub struct FrozenPrefix {
    start: usize,
    states: Vec<Tensor>,
}

impl FrozenPrefix {
    /// Runs layers `0..start` over `seqs` (no adapters), in chunks of `chunk` sequences of
    /// similar length (sorted by length, so little of a chunk is padding), the chunks spread over
    /// the current rayon pool. Each sequence's states equal those of a chunk of its own: right
    /// padding never reaches a real position. With `start == 0` nothing is computed and
    /// [`Self::input`] embeds the tokens.
    pub fn build(model: &Llama, seqs: &[Sequence], start: usize, chunk: usize) -> Result<Self> {
        if start == 0 {
            return Ok(Self { start, states: Vec::new() });
        }
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| (seqs[i].tokens.len(), i));
        let parts: Vec<Vec<(usize, Tensor)>> = order
            .par_chunks(chunk.max(1))
            .map(|part| {
                let refs: Vec<&Sequence> = part.iter().map(|&i| &seqs[i]).collect();
                let tokens = super::data::collate(&refs, model.embed_tokens.device())?.0;
                let h = run_layers(model, &model.embed(&tokens)?, 0..start, &NoAdapters)?;
                part.iter().enumerate().map(|(row, &i)| Ok((i, h.get(row)?.narrow(0, 0, seqs[i].tokens.len())?.contiguous()?))).collect()
            })
            .collect::<Result<_>>()?;
        let mut states: Vec<Option<Tensor>> = vec![None; seqs.len()];
        for (i, t) in parts.into_iter().flatten() {
            states[i] = Some(t);
        }
        let states = states.into_iter().map(|t| t.ok_or_else(|| anyhow::anyhow!("a sequence got no cached prefix"))).collect::<Result<_>>()?;
        Ok(Self { start, states })
    }

    /// The first layer a step runs.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.states.iter().map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
    }

    /// The `(batch, len, hidden)` input of layer `start` for sequences `idx` (whose collated
    /// tokens are `tokens`, `(batch, len)`): cached states zero-padded to `len`, or embeddings.
    pub fn input(&self, model: &Llama, idx: &[usize], tokens: &Tensor) -> Result<Tensor> {
        if self.start == 0 {
            return Ok(model.embed(tokens)?);
        }
        let len = tokens.dim(1)?;
        let rows = idx
            .iter()
            .map(|&i| {
                let s = self.states.get(i).ok_or_else(|| anyhow::anyhow!("no cached prefix for sequence {i}"))?;
                let pad = len - s.dim(0)?;
                Ok(if pad == 0 { s.clone() } else { s.pad_with_zeros(0, 0, pad)? })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?)
    }
}

/// Runs `layers` of `model` over `h` (`(batch, len, hidden)`) with `hook`.
pub fn run_layers(model: &Llama, h: &Tensor, layers: std::ops::Range<usize>, hook: &dyn AdapterHook) -> Result<Tensor> {
    let ctx = model.context(hook, model.op_path, 0, h.dim(1)?);
    let mut h = h.clone();
    for layer in &model.layers[layers] {
        h = layer.forward(&h, &ctx, None)?;
    }
    Ok(h)
}

/// Rows of a collated batch (`batch × len`, flattened) whose next token matters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Positions {
    /// Flattened row `i * len + t` of every position the head runs on, ascending.
    pub rows: Vec<u32>,
    /// The token at `t + 1` for each row.
    pub targets: Vec<u32>,
    /// Indices into `rows` that are loss targets.
    pub loss: Vec<u32>,
    /// Per sequence, indices into `rows` of its completion tokens (for exact match).
    pub completions: Vec<Vec<u32>>,
}

impl Positions {
    /// Loss positions of `seqs` padded to `len` (their weights), plus completion positions
    /// when `with_completions` asks for them (evaluation).
    pub fn of(seqs: &[&Sequence], len: usize, with_completions: Completions) -> Self {
        let mut p = Self::default();
        for (i, s) in seqs.iter().enumerate() {
            let first_completion = s.prompt_len.max(1);
            let mut completion = Vec::new();
            for t in 0..s.tokens.len().saturating_sub(1) {
                let is_loss = s.weights.get(t + 1).is_some_and(|&w| w > 0);
                let is_completion = with_completions == Completions::Include && t + 1 >= first_completion;
                if !(is_loss || is_completion) {
                    continue;
                }
                let k = p.rows.len() as u32;
                p.rows.push((i * len + t) as u32);
                p.targets.push(s.tokens[t + 1]);
                if is_loss {
                    p.loss.push(k);
                }
                if is_completion {
                    completion.push(k);
                }
            }
            p.completions.push(completion);
        }
        p
    }
}

/// Whether [`Positions::of`] adds the completion positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completions {
    /// Training: loss positions only.
    Skip,
    /// Evaluation: loss and completion positions.
    Include,
}

/// What the head produced on the selected rows.
pub struct Outputs {
    /// Mean next-token cross-entropy over the loss rows (differentiable scalar).
    pub loss: Tensor,
    /// Per sequence: every completion token is the argmax (greedy would reproduce it).
    pub exact: Vec<bool>,
}

/// Final norm and head on the rows `pos` of `h` (`(batch, len, hidden)`), then the loss over the
/// loss rows and, when completions were selected, greedy exact match per sequence.
pub fn head_outputs(model: &Llama, h: &Tensor, pos: &Positions) -> Result<Outputs> {
    if pos.loss.is_empty() {
        bail!("the batch has no loss target (every weight is 0); check dataset.loss_mask and max_length");
    }
    let (b, s, d) = h.dims3()?;
    let device = h.device();
    let rows = Tensor::from_slice(&pos.rows, pos.rows.len(), device)?;
    let picked = h.reshape((b * s, d))?.index_select(&rows, 0)?.unsqueeze(0)?;
    let logits = model.head(&picked, model.op_path)?.squeeze(0)?;
    let loss_idx = Tensor::from_slice(&pos.loss, pos.loss.len(), device)?;
    let targets = Tensor::from_slice(&pos.targets, pos.targets.len(), device)?;
    let z = logits.index_select(&loss_idx, 0)?;
    let t = targets.index_select(&loss_idx, 0)?;
    let loss = ops::cross_entropy(&z, &t, model.op_path)?.mean_all()?;
    let exact = if pos.completions.iter().all(Vec::is_empty) {
        Vec::new()
    } else {
        let argmax = logits.detach().argmax(D::Minus1)?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        pos.completions.iter().map(|c| !c.is_empty() && c.iter().all(|&k| argmax[k as usize] == pos.targets[k as usize])).collect()
    };
    Ok(Outputs { loss, exact })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::build::{random_weights, tiny_config};
    use candle_core::Device;

    fn model() -> Llama {
        let cfg = tiny_config();
        Llama::load(&cfg, random_weights(&cfg, 3).expect("weights"), DType::F32, &Device::Cpu).expect("model")
    }

    fn seqs() -> Vec<Sequence> {
        [(vec![1, 5, 9, 2, 7, 8], 4), (vec![1, 6, 2, 11], 3), (vec![1, 12, 13, 14, 2, 15, 16, 17], 5)]
            .into_iter()
            .map(|(tokens, prompt_len): (Vec<u32>, usize)| {
                let weights = (0..tokens.len()).map(|t| u8::from(t >= prompt_len)).collect();
                Sequence { tokens, weights, prompt_len }
            })
            .collect()
    }

    /// The cached prefix + head-on-selected-rows loss equals the plain full forward's masked loss.
    #[test]
    fn cached_prefix_and_selected_head_match_the_full_forward() {
        let m = model();
        let all = seqs();
        let refs: Vec<&Sequence> = all.iter().collect();
        let (x, mask) = crate::train::data::collate(&refs, &Device::Cpu).expect("collate");
        let full = m.forward(&x, &NoAdapters).expect("forward");
        let want = m.next_token_loss(&full, &x, Some(&mask)).expect("loss").to_scalar::<f32>().expect("scalar");
        for start in [0, 1, 3] {
            let cache = FrozenPrefix::build(&m, &all, start, 2).expect("cache");
            let h0 = cache.input(&m, &[0, 1, 2], &x).expect("input");
            let h = run_layers(&m, &h0, start..m.layers.len(), &NoAdapters).expect("layers");
            let pos = Positions::of(&refs, x.dim(1).expect("len"), Completions::Include);
            let got = head_outputs(&m, &h, &pos).expect("head").loss.to_scalar::<f32>().expect("scalar");
            assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "start {start}: {got} vs {want}");
        }
    }

    /// Sorting by length, chunking and spreading the chunks over threads change nothing: every
    /// sequence's cached states equal those of a one-sequence chunk, in the caller's order.
    #[test]
    fn prefix_states_do_not_depend_on_chunk_size_or_threads() {
        let m = model();
        let all = seqs();
        let alone = FrozenPrefix::build(&m, &all, 2, 1).expect("cache");
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
        let together = pool.install(|| FrozenPrefix::build(&m, &all, 2, 2)).expect("cache");
        for (i, s) in all.iter().enumerate() {
            let (a, b) = (&alone.states[i], &together.states[i]);
            assert_eq!(a.dims(), &[s.tokens.len(), m.embed_tokens.dim(1).expect("hidden")][..], "sequence {i}");
            let gap = (a - b).and_then(|d| d.abs()).and_then(|d| d.max_all()).and_then(|d| d.to_scalar::<f32>()).expect("gap");
            assert!(gap <= 1e-5, "sequence {i}: states differ by {gap}");
        }
    }

    #[test]
    fn exact_match_agrees_with_full_argmax() {
        let m = model();
        let all = seqs();
        let refs: Vec<&Sequence> = all.iter().collect();
        let (x, _) = crate::train::data::collate(&refs, &Device::Cpu).expect("collate");
        let full = m.forward(&x, &NoAdapters).expect("forward").argmax(D::Minus1).expect("argmax");
        let pred = full.to_vec2::<u32>().expect("vec");
        let want: Vec<bool> = all.iter().zip(&pred).map(|(s, p)| (s.prompt_len..s.tokens.len()).all(|t| p[t - 1] == s.tokens[t])).collect();
        let pos = Positions::of(&refs, x.dim(1).expect("len"), Completions::Include);
        let h = run_layers(&m, &m.embed(&x).expect("embed"), 0..m.layers.len(), &NoAdapters).expect("layers");
        assert_eq!(head_outputs(&m, &h, &pos).expect("head").exact, want);
    }

    /// A completion made of the model's own greedy choices is an exact match.
    #[test]
    fn greedy_completions_are_exact_matches() {
        let m = model();
        let mut tokens = vec![1u32, 5, 9, 2];
        for _ in 0..3 {
            let x = Tensor::from_slice(&tokens, (1, tokens.len()), &Device::Cpu).expect("tokens");
            let logits = m.forward(&x, &NoAdapters).expect("forward");
            let next = logits.get(0).and_then(|l| l.get(tokens.len() - 1)).and_then(|l| l.argmax(0)).expect("argmax");
            tokens.push(next.to_scalar::<u32>().expect("id"));
        }
        let greedy = Sequence { weights: vec![0, 0, 0, 0, 1, 1, 1], tokens, prompt_len: 4 };
        let mut wrong = greedy.clone();
        wrong.tokens[5] = (wrong.tokens[5] + 1) % 64;
        let refs = [&greedy, &wrong];
        let (x, _) = crate::train::data::collate(&refs, &Device::Cpu).expect("collate");
        let pos = Positions::of(&refs, x.dim(1).expect("len"), Completions::Include);
        let h = run_layers(&m, &m.embed(&x).expect("embed"), 0..m.layers.len(), &NoAdapters).expect("layers");
        assert_eq!(head_outputs(&m, &h, &pos).expect("head").exact, [true, false]);
    }

    #[test]
    fn positions_select_loss_and_completion_rows() {
        let all = seqs();
        let refs: Vec<&Sequence> = all.iter().collect();
        let p = Positions::of(&refs[..1], 6, Completions::Skip);
        assert_eq!(p.rows, [3, 4]);
        assert_eq!(p.targets, [7, 8]);
        assert!(p.completions[0].is_empty());
    }
}
