//! Trainer, experiment specs, plots and the meft CLI.

pub mod cli;
pub mod repro;
pub mod train;
