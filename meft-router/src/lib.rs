//! Key-Experts router: MoE-like top-K neuron retrieval on the host (MEFT spec §3).
//!
//! Pure math: CPU slices in, plain data out; this crate never moves data between devices.
//!
//! - [`ExpertLayout`]: M neurons in N contiguous experts of m (N must divide M).
//! - [`init_gates`]: gate j = 50 × mean of expert j's keys.
//! - [`route`] (fast) and [`route_slow`] (reference): per token the top-P experts by gate score, then
//!   the top-K of their P·m neurons by gated or plain score; the batch union U; the capacity cut.
//! - [`dense_top_k`] / [`dense_top_k_slow`]: the exact top-K over all M keys; [`recall_at_k`].
//!
//! Every score is one canonical dot product (see `kernel`), so all paths agree bit for bit and ties
//! always go to the lower id.

mod config;
mod dense;
mod error;
mod inputs;
mod kernel;
mod layout;
mod output;
mod route;
mod slow;
mod topk;
mod union;

pub use config::{Capacity, DenseConfig, FiniteCheck, RouteConfig, Scoring};
pub use dense::dense_top_k;
pub use error::{Operand, Result, RouteError};
pub use inputs::{GateSource, KeyElems, KeysView, RouteInputs, Rows};
pub use kernel::kernel_name;
pub use layout::{DEFAULT_EXPERT_FACTOR, ExpertLayout, GATE_INIT_SCALE, init_gates};
pub use output::{DROPPED, RouteStats, Routing, TopK, recall_at_k};
pub use route::{RouteScratch, route, route_into};
pub use slow::{dense_top_k_slow, route_slow};
