//! The output head and the next-token cross-entropy as one autograd node: `nll = CE(x·Wᵀ)` for a
//! frozen f32 head `W` `(vocab, hidden)`.
//!
//! Through separate head and loss nodes, candle's autograd gave the `(rows, vocab)` logits a
//! zero-filled gradient buffer and added the loss backward's output onto it: two extra
//! vocabulary-sized passes (50 MB each for SmolLM2 at 1 × 256) and their page faults, and the
//! loss backward recomputed every row's log-sum-exp. This op keeps the logits and the
//! log-sum-exps of its forward, turns the logits into their gradient in place, and hands autograd
//! only the `(rows, hidden)` gradient of `x`. Reference: the separate [`super::linear`] and
//! [`super::next_token_nll`] (compared in `ops::tests`).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::kernels::{LogitRows, f32_data, last_dim, nll_grad_in_place, scored_log_sum_exps, targets};
use super::linear::{Weight, linear_bwd_rows, linear_rows};
use meft_core::bf16::Bf16Weight;

/// What the forward keeps for the backward.
struct Saved {
    /// The logits, `(rows, vocab)`; taken (and turned into their gradient) by the first backward.
    logits: Option<Vec<f32>>,
    /// Log-sum-exp of every scored row.
    lse: Vec<f32>,
    /// The target of every scored row.
    targets: Vec<u32>,
}

/// Per scored row, `log Σ e^z − z[target]` with `z = x·Wᵀ`; see the module docs.
pub(super) struct HeadNll {
    pub rows: LogitRows,
    /// Whether the output takes part in autograd (then the forward keeps its logits).
    pub keep: bool,
    /// The head's bf16 companion, when the products run in bf16.
    bf16: Option<std::sync::Arc<Bf16Weight>>,
    saved: Mutex<Option<Saved>>,
}

impl HeadNll {
    pub fn new(rows: LogitRows, keep: bool, bf16: Option<std::sync::Arc<Bf16Weight>>) -> Self {
        Self { rows, keep, bf16, saved: Mutex::new(None) }
    }

    fn weight<'a>(&'a self, w: &'a [f32]) -> Weight<'a> {
        Weight::with(w, self.bf16.as_ref())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Option<Saved>>> {
        self.saved.lock().map_err(|_| candle_core::Error::Msg("head-nll: poisoned lock".into()))
    }
}

/// The vocabulary of a head `(vocab, hidden)`, checked against `x` `(..., hidden)`.
fn head_vocab(op: &str, lx: &Layout, lw: &Layout) -> Result<usize> {
    let &[vocab, hidden] = lw.dims() else { bail!("{op}: head weight must be 2-d, got {:?}", lw.dims()) };
    if last_dim(lx) != hidden {
        bail!("{op}: hidden width {} does not match the head {:?}", last_dim(lx), lw.dims())
    }
    Ok(vocab)
}

impl CustomOp3 for HeadNll {
    fn name(&self) -> &'static str {
        "meft-head-nll"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_data(s1, l1, self.name())?, f32_data(s2, l2, self.name())?);
        let vocab = head_vocab(self.name(), l1, l2)?;
        let t = targets(s3, l3)?;
        let logits = linear_rows(&x, self.weight(&w), vocab)?;
        let lse = scored_log_sum_exps(self.name(), &logits, vocab, self.rows, &t)?;
        let lse_len = lse.len();
        let nll = (0..lse_len).map(|r| lse[r] - logits[self.rows.source(r) * vocab + t[r] as usize]).collect();
        if self.keep {
            *self.lock()? = Some(Saved { logits: Some(logits), lse, targets: t.into_owned() });
        }
        Ok((CpuStorage::F32(nll), Shape::from(lse_len)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _t: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(w, &g.contiguous()?, &HeadNllBwd { fwd: self })?;
        Ok((Some(dx), None, None))
    }
}

/// Gradient of [`HeadNll`] w.r.t. `x`: `dz·W` with `dz = g·(softmax(z) − onehot(target))` on
/// scored rows and 0 elsewhere.
struct HeadNllBwd<'a> {
    fwd: &'a HeadNll,
}

impl CustomOp3 for HeadNllBwd<'_> {
    fn name(&self) -> &'static str {
        "meft-head-nll-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w, g) = (f32_data(s1, l1, self.name())?, f32_data(s2, l2, self.name())?, f32_data(s3, l3, self.name())?);
        let vocab = head_vocab(self.name(), l1, l2)?;
        let mut saved = self.fwd.lock()?;
        let Some(saved) = saved.as_mut() else { bail!("head-nll: backward of a forward that kept nothing") };
        if g.len() != saved.lse.len() {
            bail!("head-nll: {} output gradients for {} scored rows", g.len(), saved.lse.len())
        }
        // A second backward of the same forward finds the logits gone and recomputes them.
        let mut dz = match saved.logits.take() {
            Some(logits) => logits,
            None => linear_rows(&x, self.fwd.weight(&w), vocab)?,
        };
        let rows = self.fwd.rows;
        dz.par_chunks_mut(vocab.max(1)).enumerate().for_each(|(r, row)| match rows.scored(r) {
            Some(k) => nll_grad_in_place(row, saved.lse[k], g[k], saved.targets[k] as usize),
            None => row.fill(0.0),
        });
        Ok((CpuStorage::F32(linear_bwd_rows(&dz, self.fwd.weight(&w), vocab)?), l1.shape().clone()))
    }
}
