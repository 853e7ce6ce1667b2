//! The kernel API in builds without the `cuda` feature: every call is `NotCompiledWithCuda`.

use crate::{KernelError, Result, SparseInputs};
use meft_core::kernels_ref::SparsePairGrads;
use meft_core::optim::{AdamWBuffers, AdamWConfig};

fn off(op: &'static str) -> KernelError {
    meft_core::Error::NotCompiledWithCuda { op }.into()
}

/// The device kernels; cannot be created without the `cuda` feature.
#[derive(Debug)]
pub struct DeviceKernels {
    never: std::convert::Infallible,
}

impl DeviceKernels {
    /// Always `NotCompiledWithCuda` in this build.
    pub fn new(_ordinal: usize) -> Result<Self> {
        Err(off("DeviceKernels::new"))
    }

    /// The device's name.
    pub fn device_name(&self) -> Result<String> {
        match self.never {}
    }

    /// See the `cuda` build: places staged rows into `dst_rows` device slots and returns them.
    pub fn place_rows(&self, _staged: &[f32], _row_len: usize, _slots: &[u32], _dst_rows: usize) -> Result<Vec<f32>> {
        match self.never {}
    }

    /// See the `cuda` build: packs rows `slots` of `src` contiguously.
    pub fn pack_rows(&self, _src: &[f32], _row_len: usize, _slots: &[u32]) -> Result<Vec<f32>> {
        match self.never {}
    }

    /// See the `cuda` build: sparse adapter forward, returns `(y, kx)`.
    pub fn sparse_forward(&self, _inputs: SparseInputs<'_>) -> Result<(Vec<f32>, Vec<f32>)> {
        match self.never {}
    }

    /// See the `cuda` build: sparse adapter backward.
    pub fn sparse_backward(&self, _inputs: SparseInputs<'_>, _kx: &[f32], _dy: &[f32]) -> Result<SparsePairGrads> {
        match self.never {}
    }

    /// See the `cuda` build: one AdamW step on device.
    pub fn adamw(&self, _cfg: &AdamWConfig, _step: u64, _bufs: AdamWBuffers<'_>) -> Result<()> {
        match self.never {}
    }
}
