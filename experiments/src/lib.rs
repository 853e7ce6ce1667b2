//! Trainer, experiment specs, plots and the meft CLI.
