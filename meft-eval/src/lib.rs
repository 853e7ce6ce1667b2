//! Datasets, prompts, metrics and generation-based evaluation.
