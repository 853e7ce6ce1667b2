//! MEFT offload engine: host store, device working set, transfer scheduler, ledger.
//!
//! The only crate that moves adapter data between host and device (spec §5). A training step with
//! the offloaded adapter:
//!
//! ```text
//! forward ──► AdapterHook::ffn(ℓ, x) ─► route on host ─► gather U rows ─► H2D working set ─► sparse adapter
//! loss.backward() ─► MeftAdapter::finish_backward(&grads) ─► D2H row grads ─► scatter-add into accumulators
//! MeftAdapter::step() ─► host AdamW over rows (dense | lazy) + device AdamW over gates ─► ledger record
//! ```
//!
//! - [`device`]: `Cpu`, `Cuda` (stub without the `cuda` feature) and the simulated device with
//!   per-category byte accounting and a budget.
//! - [`host`]: one arena per adapted layer of bundled `[k|v]` rows, moments, step counters,
//!   accumulators and the touched set.
//! - [`plan`]: [`MeftConfig`] and the validated, serialisable [`OffloadPlan`].
//! - [`adapter`]: the [`MeftAdapter`] (forward / `finish_backward` / `step`), with pre-look prefetch.
//! - [`full`]: the full-offload baseline ([`FullOffloadAdapter`]): every row down and every
//!   gradient up each step (ZeRO-Offload style), for traffic and speed comparisons.
//! - [`ledger`]: per step and layer bytes, times and device peaks.

pub mod adapter;
pub mod device;
pub mod error;
pub mod full;
pub mod host;
pub mod ledger;
pub mod plan;
mod resume;
mod routing;
mod step;

pub use adapter::MeftAdapter;
pub use device::{Category, CategoryBytes, DeviceKind, DriverInfo, MemoryReport, OffloadDevice};
pub use error::{OffloadError, Result};
pub use full::{FullOffloadAdapter, FullOffloadStep};
pub use host::{HostStore, LayerArena, random_arenas};
pub use ledger::{LayerRecord, Ledger, LinkModel, PhaseTimes, StepRecord, StepStatus, TimeSource};
pub use plan::{HostOptimizer, LayerPlan, MeftConfig, OffloadPlan, PrefetchMode};
