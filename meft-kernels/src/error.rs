//! Errors of the device kernels.

use meft_core::kernels_ref::PairsError;
use meft_core::optim::OptimError;
use meft_core::rows::RowsError;

/// Errors raised by [`crate::DeviceKernels`].
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// From meft-core; `NotCompiledWithCuda` in builds without the `cuda` feature.
    #[error(transparent)]
    Core(#[from] meft_core::Error),
    /// The CUDA driver library (`libcuda.so.1`) could not be loaded.
    #[error("no CUDA driver: libcuda.so.1 not found; run on the GPU machine through tools/gpu/run.sh, which sets LD_LIBRARY_PATH")]
    NoDriver,
    /// A CUDA driver call failed.
    #[error("CUDA {op} failed: {message}")]
    Driver {
        /// The operation.
        op: &'static str,
        /// The driver's message.
        message: String,
    },
    /// Bad row layout or slot ids.
    #[error(transparent)]
    Rows(#[from] RowsError),
    /// Bad sparse pair list.
    #[error(transparent)]
    Pairs(#[from] PairsError),
    /// Bad AdamW config or buffers.
    #[error(transparent)]
    Optim(#[from] OptimError),
    /// A buffer has the wrong length.
    #[error("kernels: `{field}` has {got} elements, expected {expected}")]
    Length {
        /// Which buffer.
        field: &'static str,
        /// Required length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
}
