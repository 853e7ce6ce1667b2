//! Trainer, experiment specs, plots and the meft CLI.

pub mod cli;
pub mod gpu_bench;
pub mod repro;
pub mod train;
