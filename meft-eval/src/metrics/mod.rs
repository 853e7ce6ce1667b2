//! Metrics: the paper's substring EM, SQuAD-normalised EM / F1, final-answer accuracy for GSM8K
//! and MATH, and function-call matching plus API-set IoU for BFCL.
//!
//! Every function here is pure text processing on one prediction and its references; aggregation
//! over a dataset lives in [`crate::score`].

pub mod math;
pub mod qa;
pub mod tool;
pub mod value;
