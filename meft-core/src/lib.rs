//! Math, adapter hook, sparse adapter ops and CPU AdamW for MEFT.
//!
//! `meft-core` sits at the bottom of the workspace: every other crate may depend on it and it depends
//! on none of them. It owns the [`AdapterHook`] trait through which models accept adapters (dense
//! Parallel Adapter, LoRA, the offloaded MEFT adapter) without knowing which method is in use.

pub mod adapter;
pub mod adapters;
pub mod bf16;
pub mod error;
pub mod kernels_ref;
pub mod optim;
pub mod rows;
pub mod sparse;
pub mod sparse_fused;

pub use adapter::{AdapterHook, LinearSite, NoAdapters};
pub use error::{Error, Result};
