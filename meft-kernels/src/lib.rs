//! CUDA kernels for MEFT (feature `cuda`); CPU builds expose the same names returning
//! [`meft_core::Error::NotCompiledWithCuda`] (wrapped in [`KernelError::Core`]).
//!
//! # Kernels (`kernels/meft.cu`)
//! | kernel | what | CPU reference (meft-core) |
//! |---|---|---|
//! | `meft_place_rows` | staged working-set rows (pinned host buffer → device copy) into device slots | `kernels_ref::place_rows_ref` |
//! | `meft_sparse_fwd` | per-token sparse adapter: `y_t = Σ ReLU((k_r·x_t)·g_p)·v_r` over CSR pairs | `kernels_ref::sparse_pairs_forward_ref` |
//! | `meft_sparse_bwd_pairs`, `meft_sparse_bwd_x` | its backward (`dk`, `dv`, per-pair gate grad, `dx`) | `kernels_ref::sparse_pairs_backward_ref` |
//! | `meft_pack_rows` | slot rows (gradients) packed contiguously for the pinned device→host copy | `rows::gather_rows` |
//! | `meft_adamw` | AdamW of the gate matrices on device | `optim::adamw_dense_slow` |
//!
//! With `cuda` the build script compiles the `.cu` file to PTX (`compute_90`) with the pinned
//! CUDA 13.0 nvcc (never probing for a GPU); [`DeviceKernels::new`] loads it through cudarc, the one
//! candle re-exports (`candle_core::cuda_backend::cudarc`, dynamic-loading in the bundle build), after
//! checking `is_culib_present()` so a machine without a driver gets [`KernelError::NoDriver`].
//! Transfers go through page-locked staging buffers on a dedicated transfer stream; an event orders
//! the kernel on the compute stream after the copy.
//!
//! # Tests and benchmarks
//! - `cargo test -p meft-kernels` (CPU): the kernel source compiles to PTX with the pinned nvcc when
//!   it is installed (`.venv-cuda`, or `$MEFT_NVCC`), else the test prints why it skipped; the stub
//!   API returns `NotCompiledWithCuda`. The CPU references are tested in meft-core (`kernels_ref`).
//! - `tests/device.rs` and `benches/device_bw.rs` need `--features cuda`; they run on the GPU machine.
//!   The device tests skip with a printed reason when no driver is present.
//!
//! # Running on a lent GPU
//! 1. Here: `cargo xtask gpu-bundle` (installs the pinned CUDA 13.0 pip pieces into `.venv-cuda`,
//!    builds with `target-cuda`, packs `out/gpu-bundle/meft-gpu-bundle.tar.xz` with `tools/gpu/run.sh`).
//! 2. The `device` tool's `run` with `carry: ["out/gpu-bundle"]` and the command
//!    `tar xJf out/gpu-bundle/meft-gpu-bundle.tar.xz -C /tmp && /tmp/meft-gpu-bundle/run.sh all`
//!    (`run.sh --check` lists the CUDA libraries found; `all` runs the device tests then the
//!    bandwidth benchmark, writing logs and `device_bw.json` under `$OUT`).

mod error;
pub use error::KernelError;

#[cfg(feature = "cuda")]
pub mod device;
#[cfg(not(feature = "cuda"))]
mod stub;

#[cfg(feature = "cuda")]
pub use device::DeviceKernels;
#[cfg(not(feature = "cuda"))]
pub use stub::DeviceKernels;

/// The CUDA C source of every kernel (compiled to PTX by the build script with `cuda`).
pub const KERNEL_SOURCE: &str = include_str!("../kernels/meft.cu");

/// Entry points that [`KERNEL_SOURCE`] defines and the PTX must export.
pub const KERNEL_NAMES: [&str; 6] =
    ["meft_place_rows", "meft_pack_rows", "meft_sparse_fwd", "meft_sparse_bwd_pairs", "meft_sparse_bwd_x", "meft_adamw"];

/// Inputs of the sparse adapter kernels (host slices, row-major).
#[derive(Debug, Clone, Copy)]
pub struct SparseInputs<'a> {
    /// Token inputs, `T×d`.
    pub x: &'a [f32],
    /// Working-set keys, `U×d`.
    pub keys: &'a [f32],
    /// Working-set values, `U×d`.
    pub values: &'a [f32],
    /// The `(token, row)` pairs grouped by token, with gate factors.
    pub pairs: &'a meft_core::kernels_ref::SparsePairs,
    /// Hidden size.
    pub d: usize,
}

impl SparseInputs<'_> {
    /// Checks every length against `pairs` and `d`.
    pub fn validate(&self) -> Result<()> {
        let (t, d) = (self.pairs.tokens(), self.d);
        let u = self.keys.len().checked_div(d).unwrap_or(0);
        let check = |field, expected: usize, got: usize| {
            if expected == got { Ok(()) } else { Err(KernelError::Length { field, expected, got }) }
        };
        check("x", t * d, self.x.len())?;
        check("keys", u * d, self.keys.len())?;
        check("values", u * d, self.values.len())?;
        check("pair_gate", self.pairs.len(), self.pairs.pair_gate.len())?;
        if let Some((index, &row)) = self.pairs.pair_row.iter().enumerate().find(|(_, r)| **r as usize >= u) {
            let token = self.pairs.pair_token[index];
            let e = meft_core::kernels_ref::PairsError::PairOutOfRange { index, token, row, tokens: t, rows: u };
            return Err(e.into());
        }
        Ok(())
    }
}

/// Result of a kernel call.
pub type Result<T> = std::result::Result<T, KernelError>;
