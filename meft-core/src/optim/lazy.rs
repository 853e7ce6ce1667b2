//! Lazy AdamW: only touched rows step, each with its own step count (spec §5 step 7, `lazy`).

use rayon::prelude::*;

use super::dense::reference_update;
use super::kernel::{Coeffs, SimdLevel, first_non_finite, update_span};
use super::{AdamWBuffers, AdamWConfig, FiniteCheck, OptimError, StepOutcome};
use crate::rows::{self, SplitRows, for_disjoint_rows};

/// Validates the layout and, under [`FiniteCheck::Scan`], scans the touched gradient rows.
fn prepare(
    cfg: &AdamWConfig,
    row_len: usize,
    touched: &[u32],
    bufs: &AdamWBuffers<'_>,
    row_steps: &[u64],
) -> Result<Option<StepOutcome>, OptimError> {
    cfg.validate()?;
    let n_rows = rows::n_rows("params", bufs.checked_len()?, row_len)?;
    if row_steps.len() != n_rows {
        return Err(OptimError::LengthMismatch { field: "row_steps", expected: n_rows, got: row_steps.len() });
    }
    rows::check_increasing(touched, n_rows)?;
    if cfg.finite_check == FiniteCheck::Scan {
        let bad = touched.par_iter().with_min_len(64).find_map_first(|&id| {
            let start = id as usize * row_len;
            first_non_finite(&bufs.grads[start..start + row_len]).map(|offset| start + offset)
        });
        if let Some(first_bad_index) = bad {
            return Ok(Some(StepOutcome::SkippedNonFinite { first_bad_index }));
        }
    }
    Ok(None)
}

/// The store buffers from some row onwards, split together at row boundaries.
struct LazyView<'a> {
    p: &'a mut [f32],
    g: &'a [f32],
    m: &'a mut [f32],
    v: &'a mut [f32],
    steps: &'a mut [u64],
    row_len: usize,
}

impl SplitRows for LazyView<'_> {
    fn split(self, rows: usize, _pos: usize) -> (Self, Self) {
        let at = rows * self.row_len;
        let (p0, p1) = self.p.split_at_mut(at);
        let (g0, g1) = self.g.split_at(at);
        let (m0, m1) = self.m.split_at_mut(at);
        let (v0, v1) = self.v.split_at_mut(at);
        let (s0, s1) = self.steps.split_at_mut(rows);
        let row_len = self.row_len;
        (Self { p: p0, g: g0, m: m0, v: v0, steps: s0, row_len }, Self { p: p1, g: g1, m: m1, v: v1, steps: s1, row_len })
    }
}

/// One lazy AdamW step over the rows `touched` of a store of `row_len`-element rows, in place.
///
/// For each touched row `r`: `row_steps[r] += 1`, then the [`super::adamw_dense`] update with
/// bias corrections from that row's new count. Untouched rows (parameters, moments, steps) are not
/// read or written. `touched` must be strictly increasing (the sorted, unique `U` accumulated since
/// the last step). Parallel over disjoint row ranges; allocates nothing.
///
/// # Errors
/// Invalid config, buffers of different lengths, a store that is not whole rows, `row_steps` not one
/// entry per row, or ids out of range / not strictly increasing. Non-finite gradients in touched
/// rows give [`StepOutcome::SkippedNonFinite`] under [`FiniteCheck::Scan`].
pub fn adamw_lazy_rows(
    cfg: &AdamWConfig,
    row_len: usize,
    touched: &[u32],
    bufs: AdamWBuffers<'_>,
    row_steps: &mut [u64],
) -> Result<StepOutcome, OptimError> {
    if let Some(skipped) = prepare(cfg, row_len, touched, &bufs, row_steps)? {
        return Ok(skipped);
    }
    let level = SimdLevel::detect();
    let AdamWBuffers { params, grads, m, v } = bufs;
    let view = LazyView { p: params, g: grads, m, v, steps: row_steps, row_len };
    let leaf = |ids: &[u32], first_row: usize, view: LazyView<'_>| {
        for &id in ids {
            let row = id as usize - first_row;
            let span = row * row_len..(row + 1) * row_len;
            view.steps[row] += 1;
            let c = Coeffs::new(cfg, view.steps[row]);
            let (p, g) = (&mut view.p[span.clone()], &view.g[span.clone()]);
            update_span(level, &c, p, g, &mut view.m[span.clone()], &mut view.v[span]);
        }
    };
    for_disjoint_rows(touched, 0, row_len, view, &leaf);
    Ok(StepOutcome::Applied)
}

/// Serial scalar reference for [`adamw_lazy_rows`] (same checks and outcome rules).
pub fn adamw_lazy_rows_slow(
    cfg: &AdamWConfig,
    row_len: usize,
    touched: &[u32],
    bufs: AdamWBuffers<'_>,
    row_steps: &mut [u64],
) -> Result<StepOutcome, OptimError> {
    if let Some(skipped) = prepare(cfg, row_len, touched, &bufs, row_steps)? {
        return Ok(skipped);
    }
    let AdamWBuffers { params, grads, m, v } = bufs;
    for &id in touched {
        let r = id as usize;
        let span = r * row_len..(r + 1) * row_len;
        row_steps[r] += 1;
        let (p, g) = (&mut params[span.clone()], &grads[span.clone()]);
        reference_update(cfg, row_steps[r], p, g, &mut m[span.clone()], &mut v[span]);
    }
    Ok(StepOutcome::Applied)
}
