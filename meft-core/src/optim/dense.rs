//! Dense AdamW: every element steps with the shared step count (PyTorch `torch.optim.AdamW`).

use rayon::prelude::*;

use super::kernel::{Coeffs, STREAM_CHUNK, SimdLevel, first_non_finite, update_span};
use super::{AdamWBuffers, AdamWConfig, FiniteCheck, OptimError, StepOutcome};

/// Validates and, under [`FiniteCheck::Scan`], scans the gradients. `Some(outcome)` means stop.
fn prepare(cfg: &AdamWConfig, step: u64, bufs: &AdamWBuffers<'_>) -> Result<Option<StepOutcome>, OptimError> {
    cfg.validate()?;
    if step == 0 {
        return Err(OptimError::StepZero);
    }
    bufs.checked_len()?;
    if cfg.finite_check == FiniteCheck::Scan
        && let Some(first_bad_index) = first_non_finite(bufs.grads)
    {
        return Ok(Some(StepOutcome::SkippedNonFinite { first_bad_index }));
    }
    Ok(None)
}

/// One AdamW step over every element, in place; `step` is the 1-based count after incrementing.
///
/// Exactly `torch.optim.AdamW` (`amsgrad = False`, `maximize = False`) up to `f32` rounding:
/// `p ← p·(1−lr·wd)`, `m ← m + (1−β₁)(g−m)`, `v ← β₂v + (1−β₂)g²`,
/// `p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + eps)`. Zero gradients still move by momentum.
/// Runs on the rayon pool in 32 Ki-element chunks with the best SIMD level of the CPU; allocates
/// nothing.
///
/// # Errors
/// Invalid config, `step == 0`, or buffers of different lengths. A non-finite gradient is not an
/// error: see [`StepOutcome::SkippedNonFinite`] and [`FiniteCheck`].
pub fn adamw_dense(cfg: &AdamWConfig, step: u64, bufs: AdamWBuffers<'_>) -> Result<StepOutcome, OptimError> {
    if let Some(skipped) = prepare(cfg, step, &bufs)? {
        return Ok(skipped);
    }
    let c = Coeffs::new(cfg, step);
    let level = SimdLevel::detect();
    let AdamWBuffers { params, grads, m, v } = bufs;
    if params.len() < 2 * STREAM_CHUNK {
        update_span(level, &c, params, grads, m, v);
    } else {
        params
            .par_chunks_mut(STREAM_CHUNK)
            .zip(grads.par_chunks(STREAM_CHUNK))
            .zip(m.par_chunks_mut(STREAM_CHUNK))
            .zip(v.par_chunks_mut(STREAM_CHUNK))
            .for_each(|(((p, g), m), v)| update_span(level, &c, p, g, m, v));
    }
    Ok(StepOutcome::Applied)
}

/// Scalar reference for [`adamw_dense`], written from PyTorch's `_single_tensor_adamw` formulas.
///
/// Same checks and outcome rules; results agree with the fast path to
/// [`super::FAST_VS_SLOW_REL_TOL`] per step.
pub fn adamw_dense_slow(cfg: &AdamWConfig, step: u64, bufs: AdamWBuffers<'_>) -> Result<StepOutcome, OptimError> {
    if let Some(skipped) = prepare(cfg, step, &bufs)? {
        return Ok(skipped);
    }
    let AdamWBuffers { params, grads, m, v } = bufs;
    reference_update(cfg, step, params, grads, m, v);
    Ok(StepOutcome::Applied)
}

/// The plain PyTorch sequence of tensor ops, element by element (shared with the lazy reference).
pub(super) fn reference_update(cfg: &AdamWConfig, step: u64, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    let bias_correction1 = 1.0 - cfg.beta1.powf(step as f64);
    let bias_correction2 = 1.0 - cfg.beta2.powf(step as f64);
    let step_size = (cfg.lr / bias_correction1) as f32;
    let bias_correction2_sqrt = bias_correction2.sqrt() as f32;
    let decay = (1.0 - cfg.lr * cfg.weight_decay) as f32;
    let weight = (1.0 - cfg.beta1) as f32;
    for i in 0..p.len() {
        p[i] *= decay;
        m[i] += weight * (g[i] - m[i]);
        v[i] = v[i] * cfg.beta2 as f32 + (1.0 - cfg.beta2) as f32 * g[i] * g[i];
        let denom = v[i].sqrt() / bias_correction2_sqrt + cfg.eps as f32;
        p[i] += -step_size * (m[i] / denom);
    }
}
