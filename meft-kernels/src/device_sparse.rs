//! Sparse adapter and AdamW kernels on the device.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, PushKernelArg};
use meft_core::kernels_ref::SparsePairGrads;
use meft_core::optim::{AdamWBuffers, AdamWConfig, OptimError};

use super::{DeviceKernels, drv, grid_for, per_item, u32_of};
use crate::{KernelError, Result, SparseInputs};

/// Device copies of the sparse adapter inputs.
pub struct DeviceSparse {
    /// `T×d`.
    pub x: CudaSlice<f32>,
    /// `U×d`.
    pub keys: CudaSlice<f32>,
    /// `U×d`.
    pub values: CudaSlice<f32>,
    /// CSR offsets, `T + 1`.
    pub token_ptr: CudaSlice<u32>,
    /// Token per pair.
    pub pair_token: CudaSlice<u32>,
    /// Row per pair.
    pub pair_row: CudaSlice<u32>,
    /// Gate factor per pair.
    pub pair_gate: CudaSlice<f32>,
    /// Tokens.
    pub tokens: usize,
    /// Pairs.
    pub n_pairs: usize,
    /// Hidden size.
    pub d: usize,
}

impl DeviceKernels {
    /// Uploads validated sparse inputs on the compute stream.
    pub fn upload_sparse(&self, i: SparseInputs<'_>) -> Result<DeviceSparse> {
        i.validate()?;
        let s = &self.compute;
        let up = |v: &[f32]| s.clone_htod(if v.is_empty() { &[0.0f32][..] } else { v }).map_err(drv("upload"));
        let up32 = |v: &[u32]| s.clone_htod(if v.is_empty() { &[0u32][..] } else { v }).map_err(drv("upload"));
        Ok(DeviceSparse {
            x: up(i.x)?,
            keys: up(i.keys)?,
            values: up(i.values)?,
            token_ptr: up32(&i.pairs.token_ptr)?,
            pair_token: up32(&i.pairs.pair_token)?,
            pair_row: up32(&i.pairs.pair_row)?,
            pair_gate: up(&i.pairs.pair_gate)?,
            tokens: i.pairs.tokens(),
            n_pairs: i.pairs.len(),
            d: i.d,
        })
    }

    /// Forward into `y` (`T×d`) and `kx` (per pair).
    pub fn launch_sparse_forward(&self, s: &DeviceSparse, y: &mut CudaSlice<f32>, kx: &mut CudaSlice<f32>) -> Result<()> {
        if s.tokens == 0 {
            return Ok(());
        }
        let d = u32_of("d", s.d)?;
        let mut b = self.compute.launch_builder(&self.sparse_fwd);
        b.arg(&s.x).arg(&s.keys).arg(&s.values).arg(&s.token_ptr).arg(&s.pair_row).arg(&s.pair_gate).arg(&d).arg(y).arg(kx);
        // SAFETY: argument list matches `meft_sparse_fwd`; `upload_sparse` validated every length.
        unsafe { b.launch(per_item(s.tokens)?) }.map_err(drv("meft_sparse_fwd"))?;
        Ok(())
    }

    /// Backward: fills `g` (`dx`, `dkeys`, `dvalues` zeroed by the caller, `dkx`, `dgate`).
    pub fn launch_sparse_backward(&self, s: &DeviceSparse, kx: &CudaSlice<f32>, dy: &CudaSlice<f32>, g: &mut DeviceGrads) -> Result<()> {
        let d = u32_of("d", s.d)?;
        if s.n_pairs > 0 {
            let mut b = self.compute.launch_builder(&self.sparse_bwd_pairs);
            b.arg(&s.x).arg(&s.values).arg(dy).arg(&s.pair_token).arg(&s.pair_row).arg(&s.pair_gate).arg(kx).arg(&d);
            b.arg(&mut g.dkx).arg(&mut g.dgate).arg(&mut g.dkeys).arg(&mut g.dvalues);
            // SAFETY: argument list matches `meft_sparse_bwd_pairs`; buffers sized by `DeviceGrads::new`.
            unsafe { b.launch(per_item(s.n_pairs)?) }.map_err(drv("meft_sparse_bwd_pairs"))?;
        }
        if s.tokens > 0 {
            let mut b = self.compute.launch_builder(&self.sparse_bwd_x);
            b.arg(&s.keys).arg(&s.token_ptr).arg(&s.pair_row).arg(&g.dkx).arg(&d).arg(&mut g.dx);
            // SAFETY: argument list matches `meft_sparse_bwd_x`; buffers sized by `DeviceGrads::new`.
            unsafe { b.launch(per_item(s.tokens)?) }.map_err(drv("meft_sparse_bwd_x"))?;
        }
        Ok(())
    }

    /// Sparse adapter forward through host slices; returns `(y, kx)`.
    pub fn sparse_forward(&self, i: SparseInputs<'_>) -> Result<(Vec<f32>, Vec<f32>)> {
        let s = self.upload_sparse(i)?;
        let mut y = self.compute.alloc_zeros::<f32>((s.tokens * s.d).max(1)).map_err(drv("alloc"))?;
        let mut kx = self.compute.alloc_zeros::<f32>(s.n_pairs.max(1)).map_err(drv("alloc"))?;
        self.launch_sparse_forward(&s, &mut y, &mut kx)?;
        let mut y = self.compute.clone_dtoh(&y).map_err(drv("download"))?;
        let mut kx = self.compute.clone_dtoh(&kx).map_err(drv("download"))?;
        y.truncate(s.tokens * s.d);
        kx.truncate(s.n_pairs);
        Ok((y, kx))
    }

    /// Sparse adapter backward through host slices.
    pub fn sparse_backward(&self, i: SparseInputs<'_>, kx: &[f32], dy: &[f32]) -> Result<SparsePairGrads> {
        let check = |field, expected: usize, got: usize| if expected == got { Ok(()) } else { Err(KernelError::Length { field, expected, got }) };
        check("kx", i.pairs.len(), kx.len())?;
        check("dy", i.x.len(), dy.len())?;
        let s = self.upload_sparse(i)?;
        let kx = self.compute.clone_htod(if kx.is_empty() { &[0.0f32][..] } else { kx }).map_err(drv("upload"))?;
        let dy = self.compute.clone_htod(if dy.is_empty() { &[0.0f32][..] } else { dy }).map_err(drv("upload"))?;
        let mut g = DeviceGrads::new(self, &s)?;
        self.launch_sparse_backward(&s, &kx, &dy, &mut g)?;
        let down = |v: &CudaSlice<f32>, n: usize| -> Result<Vec<f32>> {
            let mut h = self.compute.clone_dtoh(v).map_err(drv("download"))?;
            h.truncate(n);
            Ok(h)
        };
        let u = i.keys.len();
        Ok(SparsePairGrads {
            dx: down(&g.dx, i.x.len())?,
            dkeys: down(&g.dkeys, u)?,
            dvalues: down(&g.dvalues, u)?,
            dgate: down(&g.dgate, s.n_pairs)?,
        })
    }

    /// AdamW step `n` elements on device buffers (the gate matrices), PyTorch formulas.
    pub fn launch_adamw(
        &self,
        coeffs: &AdamWCoeffs,
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        m: &mut CudaSlice<f32>,
        v: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        let n64 = n as u64;
        let c = coeffs;
        let mut b = self.compute.launch_builder(&self.adamw);
        b.arg(p).arg(g).arg(m).arg(v).arg(&n64);
        b.arg(&c.lr).arg(&c.beta1).arg(&c.beta2).arg(&c.eps).arg(&c.wd).arg(&c.bc1).arg(&c.sqrt_bc2);
        // SAFETY: argument list matches `meft_adamw`; the four buffers hold at least `n` floats.
        unsafe { b.launch(grid_for(n)) }.map_err(drv("meft_adamw"))?;
        Ok(())
    }

    /// One AdamW step through host slices (uploads, steps on device, downloads in place).
    pub fn adamw(&self, cfg: &AdamWConfig, step: u64, bufs: AdamWBuffers<'_>) -> Result<()> {
        let c = AdamWCoeffs::new(cfg, step)?;
        let n = bufs.params.len();
        for (field, got) in [("grads", bufs.grads.len()), ("m", bufs.m.len()), ("v", bufs.v.len())] {
            if got != n {
                return Err(OptimError::LengthMismatch { field, expected: n, got }.into());
            }
        }
        if n == 0 {
            return Ok(());
        }
        let s = &self.compute;
        let mut p = s.clone_htod(&*bufs.params).map_err(drv("upload"))?;
        let g = s.clone_htod(bufs.grads).map_err(drv("upload"))?;
        let mut m = s.clone_htod(&*bufs.m).map_err(drv("upload"))?;
        let mut v = s.clone_htod(&*bufs.v).map_err(drv("upload"))?;
        self.launch_adamw(&c, &mut p, &g, &mut m, &mut v, n)?;
        s.memcpy_dtoh(&p, bufs.params).map_err(drv("download"))?;
        s.memcpy_dtoh(&m, bufs.m).map_err(drv("download"))?;
        s.memcpy_dtoh(&v, bufs.v).map_err(drv("download"))?;
        s.synchronize().map_err(drv("synchronize"))
    }
}

/// Device gradient buffers of the sparse adapter.
pub struct DeviceGrads {
    /// `T×d`.
    pub dx: CudaSlice<f32>,
    /// `U×d` (zeroed; accumulated atomically).
    pub dkeys: CudaSlice<f32>,
    /// `U×d` (zeroed; accumulated atomically).
    pub dvalues: CudaSlice<f32>,
    /// Per pair: gradient of the key·x dot product.
    pub dkx: CudaSlice<f32>,
    /// Per pair: gradient of the gate factor.
    pub dgate: CudaSlice<f32>,
}

impl DeviceGrads {
    /// Zeroed gradient buffers for `s`.
    pub fn new(k: &DeviceKernels, s: &DeviceSparse) -> Result<Self> {
        let z = |n: usize| k.compute.alloc_zeros::<f32>(n.max(1)).map_err(drv("alloc"));
        let rows = s.keys.len();
        Ok(Self { dx: z(s.tokens * s.d)?, dkeys: z(rows)?, dvalues: z(rows)?, dkx: z(s.n_pairs)?, dgate: z(s.n_pairs)? })
    }
}

/// Scalar arguments of the AdamW kernel for one step.
#[derive(Debug, Clone, Copy)]
pub struct AdamWCoeffs {
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    wd: f32,
    bc1: f32,
    sqrt_bc2: f32,
}

impl AdamWCoeffs {
    /// Validates `cfg` and computes the bias corrections for `step` (≥ 1).
    pub fn new(cfg: &AdamWConfig, step: u64) -> Result<Self> {
        cfg.validate()?;
        if step == 0 {
            return Err(OptimError::StepZero.into());
        }
        let t = i32::try_from(step).unwrap_or(i32::MAX);
        Ok(Self {
            lr: cfg.lr as f32,
            beta1: cfg.beta1 as f32,
            beta2: cfg.beta2 as f32,
            eps: cfg.eps as f32,
            wd: cfg.weight_decay as f32,
            bc1: (1.0 - cfg.beta1.powi(t)) as f32,
            sqrt_bc2: (1.0 - cfg.beta2.powi(t)).sqrt() as f32,
        })
    }
}
