//! Routing configuration: probes P, kept neurons K, scoring mode, capacity C and input checking.

use crate::error::{Result, RouteError};
use crate::layout::ExpertLayout;

/// How candidate neurons are scored (spec §3 step 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scoring {
    /// s_i = (k_i·x)·g_{e(i)}: the authors' runs (default).
    #[default]
    Gated,
    /// s_i = k_i·x: the paper's Algorithm 1.
    Plain,
}

/// Device working-set capacity C in rows per layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Capacity {
    /// No limit: the union is never cut.
    #[default]
    Unlimited,
    /// At most this many distinct neurons per call; must be at least 1.
    Rows(usize),
}

/// How thoroughly the keys are checked for NaN and infinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FiniteCheck {
    /// Every key row is checked, scored or not (default; one extra pass over unscored experts).
    #[default]
    Full,
    /// Only key rows that were scored are checked (through their scores): no extra pass over memory.
    /// A non-finite key that no token probed goes unnoticed.
    Scored,
}

/// Configuration of one Key-Experts routing call. x, gates and gate scores are always fully checked.
///
/// ```
/// use meft_router::{Capacity, RouteConfig, Scoring};
/// let cfg = RouteConfig { scoring: Scoring::Plain, capacity: Capacity::Rows(4096), ..RouteConfig::new(8, 64) };
/// assert_eq!((cfg.top_p, cfg.top_k), (8, 64));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteConfig {
    /// Experts probed per token, P.
    pub top_p: usize,
    /// Neurons kept per token, K (a token keeps min(K, P·m)).
    pub top_k: usize,
    /// Candidate scoring mode.
    pub scoring: Scoring,
    /// Union capacity C.
    pub capacity: Capacity,
    /// Key finiteness checking.
    pub finite_check: FiniteCheck,
}

impl RouteConfig {
    /// `top_p` and `top_k` with the defaults for the rest (gated, unlimited, full check).
    pub fn new(top_p: usize, top_k: usize) -> Self {
        Self { top_p, top_k, scoring: Scoring::default(), capacity: Capacity::default(), finite_check: FiniteCheck::default() }
    }

    /// Neurons each token keeps under `layout`: min(K, P·m).
    pub fn width(&self, layout: &ExpertLayout) -> usize {
        self.top_k.min(self.top_p * layout.per_expert())
    }

    /// Rejects K = 0, P = 0, P > N and a zero capacity.
    pub fn validate(&self, layout: &ExpertLayout) -> Result<()> {
        if self.top_k == 0 {
            return Err(RouteError::ZeroTopK);
        }
        if self.top_p == 0 {
            return Err(RouteError::ZeroTopP);
        }
        if self.top_p > layout.experts() {
            return Err(RouteError::TooManyProbes { top_p: self.top_p, experts: layout.experts() });
        }
        if self.capacity == Capacity::Rows(0) {
            return Err(RouteError::ZeroCapacity);
        }
        Ok(())
    }
}

impl Default for RouteConfig {
    /// The paper's defaults: P = 8, K = 64, gated.
    fn default() -> Self {
        Self::new(8, 64)
    }
}

/// Configuration of the dense exact top-K over all M keys (the "w/o Key-Experts" oracle).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseConfig {
    /// Neurons kept per token (at most M).
    pub top_k: usize,
    /// Plain scores, or gated scores (each key's score times its expert's gate score).
    pub scoring: Scoring,
}
