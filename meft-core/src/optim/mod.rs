//! Host AdamW over adapter rows: the optimizer step of MEFT (spec §5 step 7).
//!
//! The adapter's parameters and both AdamW moments live in host memory as flat `f32` slices; the
//! step updates them in place with no allocation.
//!
//! * [`adamw_dense`] is exactly `torch.optim.AdamW` (no AMSGrad) over every element: decoupled
//!   weight decay `p -= lr·wd·p`, moments, bias corrections from the shared 1-based `step`. Elements
//!   whose gradient is zero still move by momentum, which is what the paper's code does.
//! * [`adamw_lazy_rows`] updates only the listed rows; each row keeps its own step counter and its
//!   bias correction uses that count. Rows not listed are left bit-identical (no decay, no momentum).
//!
//! Both have a plain scalar twin ([`adamw_dense_slow`], [`adamw_lazy_rows_slow`]) written directly
//! from the PyTorch formulas. The fast paths agree with them to within a few ulp per step (see
//! [`FAST_VS_SLOW_REL_TOL`]).
//!
//! # Non-finite gradients
//! With [`FiniteCheck::Scan`] (the default) the step first scans the gradients it will read. If any
//! is NaN or ±inf, nothing is written (parameters, moments and row steps stay bit-identical) and the
//! step returns [`StepOutcome::SkippedNonFinite`] so the caller can skip and count it, like PyTorch's
//! `GradScaler`. A caller that steps several layers and wants all-or-nothing across them checks every
//! layer first with [`first_non_finite`] and then steps with [`FiniteCheck::Trusted`], which saves
//! one read of the gradients (4 of the 28 bytes per parameter).

mod dense;
mod kernel;
mod lazy;

pub use dense::{adamw_dense, adamw_dense_slow};
pub use kernel::first_non_finite;
pub use lazy::{adamw_lazy_rows, adamw_lazy_rows_slow};

use crate::rows::RowsError;

/// Largest relative difference (per element, `|fast − slow| ≤ tol·|slow| + tol·1e-3`) between the
/// fast and the slow AdamW after one step. Both compute the same formulas in `f32`; the fast path
/// multiplies by `1/√(1−β₂ᵗ)` where PyTorch divides by `√(1−β₂ᵗ)`, a difference of about one ulp.
pub const FAST_VS_SLOW_REL_TOL: f32 = 2e-6;

/// Hyperparameters of AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// Learning rate (`lr`), ≥ 0.
    pub lr: f64,
    /// Decay rate of the first moment (`betas[0]`), in `[0, 1)`.
    pub beta1: f64,
    /// Decay rate of the second moment (`betas[1]`), in `[0, 1)`.
    pub beta2: f64,
    /// Term added to the denominator (`eps`), > 0.
    pub eps: f64,
    /// Decoupled weight decay (`weight_decay`), ≥ 0; each step multiplies parameters by `1 − lr·wd`.
    pub weight_decay: f64,
    /// What to do about non-finite gradients (see the module docs).
    #[serde(default)]
    pub finite_check: FiniteCheck,
}

impl Default for AdamWConfig {
    /// The paper's settings (spec §8): lr 1e-4, β (0.9, 0.999), eps 1e-8, no weight decay.
    fn default() -> Self {
        Self { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, finite_check: FiniteCheck::Scan }
    }
}

impl AdamWConfig {
    /// Checks every field; the error names the first bad field, its value and the accepted range.
    pub fn validate(&self) -> Result<(), OptimError> {
        let bad = |field: &'static str, value: f64, expected: &'static str| Err(OptimError::InvalidConfig { field, value, expected });
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("lr", self.lr, "a finite value >= 0");
        }
        for (field, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(beta.is_finite() && (0.0..1.0).contains(&beta)) {
                return bad(field, beta, "a value in [0, 1)");
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps", self.eps, "a finite value > 0");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", self.weight_decay, "a finite value >= 0");
        }
        Ok(())
    }
}

/// Whether an AdamW step scans its gradients for NaN/inf before writing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FiniteCheck {
    /// Scan first; on a non-finite gradient write nothing and return
    /// [`StepOutcome::SkippedNonFinite`].
    #[default]
    Scan,
    /// The caller has already checked (e.g. with [`first_non_finite`] over every layer); a
    /// non-finite gradient then propagates into the parameters as it would in PyTorch.
    Trusted,
}

/// What an AdamW step did.
#[must_use = "a skipped step should be counted by the caller"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Parameters, moments (and row steps) were updated.
    Applied,
    /// A gradient was NaN or infinite; nothing was written.
    SkippedNonFinite {
        /// Flat index into the gradient slice of the first non-finite value found.
        first_bad_index: usize,
    },
}

/// The four equally long slices one AdamW step reads and writes.
#[derive(Debug)]
pub struct AdamWBuffers<'a> {
    /// Parameters, updated in place.
    pub params: &'a mut [f32],
    /// Gradients (read only; the caller zeroes its accumulators after the step).
    pub grads: &'a [f32],
    /// First moment (`exp_avg`), updated in place.
    pub m: &'a mut [f32],
    /// Second moment (`exp_avg_sq`), updated in place.
    pub v: &'a mut [f32],
}

impl AdamWBuffers<'_> {
    /// Checks that `grads`, `m` and `v` are as long as `params`; returns that length.
    fn checked_len(&self) -> Result<usize, OptimError> {
        let n = self.params.len();
        for (field, got) in [("grads", self.grads.len()), ("m", self.m.len()), ("v", self.v.len())] {
            if got != n {
                return Err(OptimError::LengthMismatch { field, expected: n, got });
            }
        }
        Ok(n)
    }
}

/// Errors of the host optimizer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptimError {
    /// A hyperparameter is out of range.
    #[error("AdamW config: `{field}` = {value} is invalid; use {expected}")]
    InvalidConfig {
        /// The field name as written in the config.
        field: &'static str,
        /// The rejected value.
        value: f64,
        /// The accepted range.
        expected: &'static str,
    },
    /// A buffer does not have the length of `params` (or `row_steps` not one entry per row).
    #[error("AdamW: `{field}` has {got} elements but {expected} were expected; allocate it with the parameter layout")]
    LengthMismatch {
        /// Which buffer.
        field: &'static str,
        /// The required length.
        expected: usize,
        /// The actual length.
        got: usize,
    },
    /// The dense step counter must start at 1 (PyTorch increments before the first update).
    #[error("AdamW: step must be >= 1 (1-based, incremented before each update), got 0")]
    StepZero,
    /// A row-id or row-layout problem in the lazy step.
    #[error(transparent)]
    Rows(#[from] RowsError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_matches_paper() {
        let c = AdamWConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!((c.lr, c.beta1, c.beta2, c.eps, c.weight_decay), (1e-4, 0.9, 0.999, 1e-8, 0.0));
    }

    #[test]
    fn validate_names_the_bad_field() {
        let base = AdamWConfig::default();
        let cases = [
            ("lr", AdamWConfig { lr: -1e-3, ..base }),
            ("lr", AdamWConfig { lr: f64::NAN, ..base }),
            ("beta1", AdamWConfig { beta1: 1.0, ..base }),
            ("beta1", AdamWConfig { beta1: -0.1, ..base }),
            ("beta2", AdamWConfig { beta2: 1.5, ..base }),
            ("beta2", AdamWConfig { beta2: f64::INFINITY, ..base }),
            ("eps", AdamWConfig { eps: 0.0, ..base }),
            ("eps", AdamWConfig { eps: -1e-8, ..base }),
            ("weight_decay", AdamWConfig { weight_decay: -0.01, ..base }),
            ("weight_decay", AdamWConfig { weight_decay: f64::NAN, ..base }),
        ];
        for (want, cfg) in cases {
            match cfg.validate() {
                Err(OptimError::InvalidConfig { field, .. }) => assert_eq!(field, want),
                other => panic!("{want}: expected InvalidConfig, got {other:?}"),
            }
            let msg = cfg.validate().unwrap_err().to_string();
            assert!(msg.contains(want), "{msg}");
        }
        assert_eq!(AdamWConfig { beta1: 0.0, beta2: 0.0, lr: 0.0, ..base }.validate(), Ok(()));
    }

    #[test]
    fn config_serde_round_trip_and_default_check() {
        let c = AdamWConfig { weight_decay: 0.01, finite_check: FiniteCheck::Trusted, ..Default::default() };
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains("\"trusted\""), "{s}");
        assert_eq!(serde_json::from_str::<AdamWConfig>(&s).unwrap(), c);
        let no_check = r#"{"lr":0.001,"beta1":0.9,"beta2":0.999,"eps":1e-8,"weight_decay":0.0}"#;
        assert_eq!(serde_json::from_str::<AdamWConfig>(no_check).unwrap().finite_check, FiniteCheck::Scan);
    }
}
