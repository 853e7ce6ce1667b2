//! The error type shared by the MEFT library crates.

/// Errors raised by `meft-core` and the crates built on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CUDA code path was requested in a build without the `cuda` feature.
    #[error("{op}: this build has no CUDA support; rebuild with `--features cuda` (see `cargo xtask gpu-bundle`)")]
    NotCompiledWithCuda {
        /// The operation that needed CUDA.
        op: &'static str,
    },
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Shorthand for results carrying [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
