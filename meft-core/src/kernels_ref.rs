//! CPU references for the device kernels of `meft-kernels`, in the kernels' own flat layouts.
//!
//! The device kernels (feature `cuda` of `meft-kernels`) work on plain `f32` buffers. Two of them
//! have exact CPU twins elsewhere in this crate and are tested against those directly:
//! packing slot rows for the device→host copy is [`crate::rows::gather_rows`] with the slots as ids,
//! and the device AdamW of the gates is [`crate::optim::adamw_dense_slow`]. This module holds the
//! references for the rest:
//!
//! - [`place_rows_ref`]: the staged rows (a copy of the pinned host staging buffer) written into
//!   device working-set slots;
//! - [`sparse_pairs_forward_ref`] / [`sparse_pairs_backward_ref`]: the per-token sparse adapter over
//!   `(token, row)` pairs grouped by token ([`SparsePairs`]), with a per-pair gate factor
//!   (`1` for plain scores, `g_{e(r)}(x_t)` for gated ones) and ReLU.
//!
//! The forward agrees with [`crate::sparse::sparse_adapter_forward_slow`] and the backward with
//! candle's autograd through [`crate::sparse::sparse_adapter_forward`] (tests below).

use crate::rows::RowsError;
use crate::sparse::{Evaluation, SparseSelection};

/// Per-token pairs grouped by token (CSR), the layout of the sparse adapter kernels.
#[derive(Debug, Clone, PartialEq)]
pub struct SparsePairs {
    /// Pairs of token `t` are `token_ptr[t]..token_ptr[t + 1]` (length `T + 1`).
    pub token_ptr: Vec<u32>,
    /// Token of every pair.
    pub pair_token: Vec<u32>,
    /// Working-set row (device slot) of every pair.
    pub pair_row: Vec<u32>,
    /// Gate factor of every pair: `1` for plain scores, `g_{e(r)}(x_t)` for gated ones.
    pub pair_gate: Vec<f32>,
}

/// Errors in a sparse pair list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairsError {
    /// The selection uses union evaluation, which the pair kernels do not cover.
    #[error("sparse pairs: the selection uses union evaluation; build pairs from a per-token selection")]
    NotPerToken,
    /// A pair names a token or row outside the selection.
    #[error("sparse pairs: pair {index} = (token {token}, row {row}) is outside {tokens} tokens × {rows} rows")]
    PairOutOfRange {
        /// Position of the pair.
        index: usize,
        /// Its token.
        token: u32,
        /// Its row.
        row: u32,
        /// Tokens in the selection.
        tokens: usize,
        /// Rows in the working set.
        rows: usize,
    },
    /// `gates` does not hold one factor per pair.
    #[error("sparse pairs: {got} gate factors for {expected} pairs")]
    GateCount {
        /// Pairs in the selection.
        expected: usize,
        /// Factors given.
        got: usize,
    },
}

impl SparsePairs {
    /// Groups a per-token selection's pairs by token (stable within a token).
    ///
    /// `gates` holds one factor per pair of `sel.pairs` (same order), or is `None` for plain scores.
    pub fn from_selection(sel: &SparseSelection, gates: Option<&[f32]>) -> Result<Self, PairsError> {
        if sel.evaluation != Evaluation::PerToken {
            return Err(PairsError::NotPerToken);
        }
        if let Some(g) = gates.filter(|g| g.len() != sel.pairs.len()) {
            return Err(PairsError::GateCount { expected: sel.pairs.len(), got: g.len() });
        }
        let mut counts = vec![0u32; sel.tokens + 1];
        for (index, &(token, row)) in sel.pairs.iter().enumerate() {
            if token as usize >= sel.tokens || row as usize >= sel.rows() {
                let (tokens, rows) = (sel.tokens, sel.rows());
                return Err(PairsError::PairOutOfRange { index, token, row, tokens, rows });
            }
            counts[token as usize + 1] += 1;
        }
        for t in 0..sel.tokens {
            counts[t + 1] += counts[t];
        }
        let n = sel.pairs.len();
        let (mut pair_token, mut pair_row, mut pair_gate) = (vec![0; n], vec![0; n], vec![1.0; n]);
        let mut next = counts.clone();
        for (i, &(t, r)) in sel.pairs.iter().enumerate() {
            let at = next[t as usize] as usize;
            next[t as usize] += 1;
            pair_token[at] = t;
            pair_row[at] = r;
            if let Some(g) = gates {
                pair_gate[at] = g[i];
            }
        }
        Ok(Self { token_ptr: counts, pair_token, pair_row, pair_gate })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pair_row.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.pair_row.is_empty()
    }

    /// Number of tokens.
    pub fn tokens(&self) -> usize {
        self.token_ptr.len().saturating_sub(1)
    }
}

/// Writes staged row `i` into row `slots[i]` of `dst` (the device "place rows" kernel).
///
/// `staged` holds `slots.len()` rows; `dst` is a whole number of rows; slots must be in range.
pub fn place_rows_ref(staged: &[f32], row_len: usize, slots: &[u32], dst: &mut [f32]) -> Result<(), RowsError> {
    if row_len == 0 {
        return Err(RowsError::ZeroRowLen);
    }
    if staged.len() != slots.len() * row_len {
        let (expected, got) = (slots.len() * row_len, staged.len());
        return Err(RowsError::LengthMismatch { field: "staged", expected, got, row_len });
    }
    if !dst.len().is_multiple_of(row_len) {
        return Err(RowsError::NotWholeRows { field: "dst", len: dst.len(), row_len });
    }
    let n_rows = dst.len() / row_len;
    if let Some((position, &id)) = slots.iter().enumerate().find(|(_, s)| **s as usize >= n_rows) {
        return Err(RowsError::RowOutOfRange { position, id, n_rows });
    }
    for (i, &s) in slots.iter().enumerate() {
        let s = s as usize;
        dst[s * row_len..(s + 1) * row_len].copy_from_slice(&staged[i * row_len..(i + 1) * row_len]);
    }
    Ok(())
}

/// Forward of the pair kernels: returns `(y, kx)` with `y` `T×d` and `kx_p = k_{r_p}·x_t`.
///
/// `x` is `T×d`, `keys`/`values` hold at least `max(pair_row) + 1` rows of `d`. Callers validate
/// shapes (the device wrapper does); this reference indexes directly.
pub fn sparse_pairs_forward_ref(x: &[f32], keys: &[f32], values: &[f32], pairs: &SparsePairs, d: usize) -> (Vec<f32>, Vec<f32>) {
    let mut y = vec![0.0f32; pairs.tokens() * d];
    let mut kx = vec![0.0f32; pairs.len()];
    for (p, kx_p) in kx.iter_mut().enumerate() {
        let (t, r) = (pairs.pair_token[p] as usize, pairs.pair_row[p] as usize);
        let xt = &x[t * d..(t + 1) * d];
        let dot: f32 = keys[r * d..(r + 1) * d].iter().zip(xt).map(|(a, b)| a * b).sum();
        *kx_p = dot;
        let a = (dot * pairs.pair_gate[p]).max(0.0);
        for (yo, v) in y[t * d..(t + 1) * d].iter_mut().zip(&values[r * d..(r + 1) * d]) {
            *yo += a * v;
        }
    }
    (y, kx)
}

/// Gradients of the pair kernels' backward.
#[derive(Debug, Clone, PartialEq)]
pub struct SparsePairGrads {
    /// `∂L/∂x`, `T×d`.
    pub dx: Vec<f32>,
    /// `∂L/∂keys`, same rows as `keys`.
    pub dkeys: Vec<f32>,
    /// `∂L/∂values`, same rows as `values`.
    pub dvalues: Vec<f32>,
    /// `∂L/∂g_p` per pair (to be chained into the gate matrix by the caller).
    pub dgate: Vec<f32>,
}

/// Backward of the pair kernels given `dy` (`T×d`) and the forward's `kx`.
pub fn sparse_pairs_backward_ref(x: &[f32], keys: &[f32], values: &[f32], pairs: &SparsePairs, kx: &[f32], dy: &[f32], d: usize) -> SparsePairGrads {
    let mut g =
        SparsePairGrads { dx: vec![0.0; x.len()], dkeys: vec![0.0; keys.len()], dvalues: vec![0.0; values.len()], dgate: vec![0.0; pairs.len()] };
    for (p, &kx_p) in kx.iter().enumerate().take(pairs.len()) {
        let (t, r, gate) = (pairs.pair_token[p] as usize, pairs.pair_row[p] as usize, pairs.pair_gate[p]);
        let dyt = &dy[t * d..(t + 1) * d];
        let da: f32 = dyt.iter().zip(&values[r * d..(r + 1) * d]).map(|(a, b)| a * b).sum();
        let s = kx_p * gate;
        let ds = if s > 0.0 { da } else { 0.0 };
        g.dgate[p] = ds * kx_p;
        for j in 0..d {
            g.dkeys[r * d + j] += ds * gate * x[t * d + j];
            g.dx[t * d + j] += ds * gate * keys[r * d + j];
            g.dvalues[r * d + j] += s.max(0.0) * dyt[j];
        }
    }
    g
}

#[cfg(test)]
#[path = "kernels_ref_tests.rs"]
mod tests;
