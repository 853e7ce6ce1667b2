//! Typed errors of the offload engine; each names the field or consumer at fault and the fix.

use crate::device::Category;

/// Errors raised by `meft-offload`.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    /// An allocation would exceed the simulated device's byte budget.
    #[error(
        "device budget exceeded: `{label}` ({category}) needs {requested} B but only {free} B of the {budget} B budget \
         are free; largest consumers: {largest}; knobs: lower the working-set capacity C (`plan.layers[].capacity`), \
         adapt fewer layers, shorten the micro-batch (T = batch × sequence), or raise the device budget"
    )]
    BudgetExceeded {
        /// The consumer that asked for memory.
        label: String,
        /// Its category.
        category: Category,
        /// Bytes it asked for (beyond what it already held).
        requested: u64,
        /// Bytes still free.
        free: u64,
        /// The device budget.
        budget: u64,
        /// The largest current consumers, formatted `name (category): bytes`.
        largest: String,
    },
    /// An offload plan or adapter configuration field is invalid.
    #[error("offload plan: `{field}` {problem}; {fix}")]
    InvalidPlan {
        /// The offending field.
        field: String,
        /// What is wrong with it.
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// `finish_backward` or `step` was called out of order.
    #[error("MEFT adapter: {0}")]
    Sequence(String),
    /// The router rejected its input.
    #[error(transparent)]
    Route(#[from] meft_router::RouteError),
    /// A core operation failed (e.g. CUDA requested in a CPU build).
    #[error(transparent)]
    Core(#[from] meft_core::Error),
    /// A row gather/scatter rejected its buffers.
    #[error(transparent)]
    Rows(#[from] meft_core::rows::RowsError),
    /// The host optimizer rejected its input.
    #[error(transparent)]
    Optim(#[from] meft_core::optim::OptimError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl OffloadError {
    /// Shorthand for [`OffloadError::InvalidPlan`].
    pub(crate) fn plan(field: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::InvalidPlan { field: field.into(), problem: problem.into(), fix: fix.into() }
    }
}

/// Shorthand for results carrying [`OffloadError`].
pub type Result<T> = std::result::Result<T, OffloadError>;
