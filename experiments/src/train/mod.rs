//! The trainer: experiment configs, validated plans, adapters behind one trait, the loop,
//! checkpoints and the memory planner.
//!
//! - [`config`]: raw TOML + `key=value` overrides ([`RawConfig`]).
//! - [`plan`]: the validated [`TrainPlan`]; [`memory`]: device bytes by category, largest fit.
//! - [`adapter`]: [`TrainableAdapter`] over device adapters (PA, LoRA) and MEFT; [`build`]
//!   constructs model, device and adapter.
//! - [`ledger_table`]: the MEFT ledger as an HDF5 table (`ledger.h5` of every MEFT run).
//! - [`forward`]: the frozen-prefix cache and the head on selected rows only.
//! - [`data`], [`schedule`], [`state`] (safetensors, atomic writes), [`checkpoint`], [`trainer`].

pub mod adapter;
pub mod build;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod forward;
pub mod ledger_table;
pub mod memory;
pub mod plan;
pub mod schedule;
pub mod state;
pub mod trainer;

pub use adapter::TrainableAdapter;
pub use config::{ConfigError, RawConfig};
pub use plan::TrainPlan;
pub use trainer::{Evaluation, Inputs, Metrics, NonFiniteStep, Probe, ProbeScore, Summary, Trainer};
