//! The kernels on a CUDA device through cudarc (candle's re-export, one cudarc in the build).
//!
//! [`DeviceKernels`] owns a context, a compute stream, a transfer stream and the loaded PTX module.
//! The host-slice methods are what the device tests call; the `launch_*` methods work on device
//! buffers and are what the offload engine and the bandwidth benchmark use.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PinnedHostSlice, PushKernelArg};
use meft_core::rows::RowsError;

use crate::{KernelError, Result};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/meft.ptx"));
/// Threads per block; the reductions in `meft.cu` assume `MEFT_BLOCK` = 256.
const BLOCK: u32 = 256;
/// Grid cap for the grid-stride kernels.
const MAX_GRID: u32 = 4096;

/// Wraps a driver error with the operation that raised it.
pub(crate) fn drv(op: &'static str) -> impl FnOnce(DriverError) -> KernelError {
    move |e| KernelError::Driver { op, message: e.to_string() }
}

/// Launch shape for `n` elements handled by a grid-stride loop.
pub fn grid_for(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, MAX_GRID as usize) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 }
}

/// One block of [`BLOCK`] threads per item (token or pair).
pub fn per_item(n: usize) -> Result<LaunchConfig> {
    let blocks = u32::try_from(n.max(1)).map_err(|_| KernelError::Length { field: "items", expected: u32::MAX as usize, got: n })?;
    Ok(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (BLOCK, 1, 1), shared_mem_bytes: 0 })
}

fn u32_of(field: &'static str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| KernelError::Length { field, expected: u32::MAX as usize, got: n })
}

/// The loaded kernels and their streams.
#[derive(Debug)]
pub struct DeviceKernels {
    /// The CUDA context.
    pub ctx: Arc<CudaContext>,
    /// Stream the kernels run on.
    pub compute: Arc<CudaStream>,
    /// Dedicated stream for host↔device copies.
    pub transfer: Arc<CudaStream>,
    place_rows: CudaFunction,
    pack_rows: CudaFunction,
    sparse_fwd: CudaFunction,
    sparse_bwd_pairs: CudaFunction,
    sparse_bwd_x: CudaFunction,
    adamw: CudaFunction,
}

impl DeviceKernels {
    /// Opens device `ordinal` and loads the kernels; [`KernelError::NoDriver`] without libcuda.
    pub fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: only tries to dlopen the driver library and reports whether that worked.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(KernelError::NoDriver);
        }
        let ctx = CudaContext::new(ordinal).map_err(drv("context creation"))?;
        let compute = ctx.new_stream().map_err(drv("compute stream"))?;
        let transfer = ctx.new_stream().map_err(drv("transfer stream"))?;
        let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(PTX)).map_err(drv("PTX load"))?;
        let f = |name: &str| module.load_function(name).map_err(drv("kernel lookup"));
        Ok(Self {
            place_rows: f("meft_place_rows")?,
            pack_rows: f("meft_pack_rows")?,
            sparse_fwd: f("meft_sparse_fwd")?,
            sparse_bwd_pairs: f("meft_sparse_bwd_pairs")?,
            sparse_bwd_x: f("meft_sparse_bwd_x")?,
            adamw: f("meft_adamw")?,
            ctx,
            compute,
            transfer,
        })
    }

    /// The device's name.
    pub fn device_name(&self) -> Result<String> {
        self.ctx.name().map_err(drv("device name"))
    }

    /// Page-locked host buffer holding a copy of `data` (the staging buffer of spec §5).
    pub fn pinned_from<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Copy>(&self, data: &[T]) -> Result<PinnedHostSlice<T>> {
        // SAFETY: the buffer is fully written by `copy_from_slice` before anything reads it.
        let mut buf = unsafe { self.ctx.alloc_pinned::<T>(data.len().max(1)) }.map_err(drv("pinned alloc"))?;
        buf.as_mut_slice().map_err(drv("pinned map"))?[..data.len()].copy_from_slice(data);
        Ok(buf)
    }

    /// Copies a pinned staging buffer to the device on the transfer stream and makes the compute
    /// stream wait for it (an event, so host work and other compute keep overlapping the copy).
    pub fn stage_to_device(&self, staged: &PinnedHostSlice<f32>, dst: &mut CudaSlice<f32>) -> Result<()> {
        self.transfer.memcpy_htod(staged, dst).map_err(drv("host→device copy"))?;
        let done = self.transfer.record_event(None).map_err(drv("event record"))?;
        self.compute.wait(&done).map_err(drv("stream wait"))
    }

    /// `dst[slots[i]] = staged[i]` for `n` rows of `row_len` on the compute stream.
    pub fn launch_place_rows(
        &self,
        staged: &CudaSlice<f32>,
        slots: &CudaSlice<u32>,
        n: usize,
        row_len: usize,
        dst: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (n32, rl) = (u32_of("slots", n)?, u32_of("row_len", row_len)?);
        let mut b = self.compute.launch_builder(&self.place_rows);
        b.arg(staged).arg(slots).arg(&n32).arg(&rl).arg(dst);
        // SAFETY: argument list matches `meft_place_rows`; callers checked lengths and slot range.
        unsafe { b.launch(grid_for(n * row_len)) }.map_err(drv("meft_place_rows"))?;
        Ok(())
    }

    /// `out[i] = src[slots[i]]` for `n` rows of `row_len` on the compute stream.
    pub fn launch_pack_rows(&self, src: &CudaSlice<f32>, slots: &CudaSlice<u32>, n: usize, row_len: usize, out: &mut CudaSlice<f32>) -> Result<()> {
        let (n32, rl) = (u32_of("slots", n)?, u32_of("row_len", row_len)?);
        let mut b = self.compute.launch_builder(&self.pack_rows);
        b.arg(src).arg(slots).arg(&n32).arg(&rl).arg(out);
        // SAFETY: argument list matches `meft_pack_rows`; callers checked lengths and slot range.
        unsafe { b.launch(grid_for(n * row_len)) }.map_err(drv("meft_pack_rows"))?;
        Ok(())
    }

    /// Places `staged` (`slots.len()` rows) into a zeroed device buffer of `dst_rows` rows through
    /// a pinned staging buffer, and returns the device rows.
    pub fn place_rows(&self, staged: &[f32], row_len: usize, slots: &[u32], dst_rows: usize) -> Result<Vec<f32>> {
        check_place(staged, row_len, slots, dst_rows)?;
        let pinned = self.pinned_from(staged)?;
        let mut dev_staged = self.transfer.alloc_zeros::<f32>(staged.len().max(1)).map_err(drv("alloc"))?;
        self.stage_to_device(&pinned, &mut dev_staged)?;
        let dev_slots = self.compute.clone_htod(slots).map_err(drv("slots upload"))?;
        let mut dst = self.compute.alloc_zeros::<f32>((dst_rows * row_len).max(1)).map_err(drv("alloc"))?;
        self.launch_place_rows(&dev_staged, &dev_slots, slots.len(), row_len, &mut dst)?;
        let mut out = self.compute.clone_dtoh(&dst).map_err(drv("device→host copy"))?;
        out.truncate(dst_rows * row_len);
        Ok(out)
    }

    /// Packs rows `slots` of `src` on the device and brings them back through a pinned buffer.
    pub fn pack_rows(&self, src: &[f32], row_len: usize, slots: &[u32]) -> Result<Vec<f32>> {
        let mut expected = vec![0.0f32; slots.len() * row_len];
        // Same checks as the CPU path (row layout, slot range) before anything reaches the device.
        meft_core::rows::gather_rows(src, row_len, slots, &mut expected)?;
        let dev_src = self.compute.clone_htod(src).map_err(drv("upload"))?;
        let dev_slots = self.compute.clone_htod(slots).map_err(drv("slots upload"))?;
        let n = slots.len() * row_len;
        let mut packed = self.compute.alloc_zeros::<f32>(n.max(1)).map_err(drv("alloc"))?;
        self.launch_pack_rows(&dev_src, &dev_slots, slots.len(), row_len, &mut packed)?;
        let ready = self.compute.record_event(None).map_err(drv("event record"))?;
        self.transfer.wait(&ready).map_err(drv("stream wait"))?;
        let mut pinned = self.pinned_from(&vec![0.0f32; n])?;
        self.transfer.memcpy_dtoh(&packed, &mut pinned).map_err(drv("device→host copy"))?;
        let out = pinned.as_slice().map_err(drv("pinned map"))?[..n].to_vec();
        Ok(out)
    }
}

/// Validates a place-rows call with the same checks and errors as the CPU reference.
fn check_place(staged: &[f32], row_len: usize, slots: &[u32], dst_rows: usize) -> Result<()> {
    if row_len == 0 {
        return Err(RowsError::ZeroRowLen.into());
    }
    if staged.len() != slots.len() * row_len {
        let (expected, got) = (slots.len() * row_len, staged.len());
        return Err(RowsError::LengthMismatch { field: "staged", expected, got, row_len }.into());
    }
    if let Some((position, &id)) = slots.iter().enumerate().find(|(_, s)| **s as usize >= dst_rows) {
        return Err(RowsError::RowOutOfRange { position, id, n_rows: dst_rows }.into());
    }
    Ok(())
}

#[path = "device_sparse.rs"]
mod sparse;
pub use sparse::{AdamWCoeffs, DeviceGrads, DeviceSparse};
