//! Device micro-benchmark (feature `cuda`, runs on the GPU machine): achieved bandwidth of every
//! kernel against the measured device limit (a large device-to-device copy), plus host↔device
//! copy bandwidth pinned vs pageable. Prints a table and writes JSON to `$MEFT_BENCH_JSON`
//! (default `device_bw.json`). Exits 0 with a printed reason when no CUDA driver is present.

use std::time::Instant;

use candle_core::cuda_backend::cudarc::driver::{CudaEvent, CudaSlice, CudaStream, sys::CUevent_flags};
use meft_core::kernels_ref::SparsePairs;
use meft_core::optim::AdamWConfig;
use meft_core::sparse::{Evaluation, SparseSelection};
use meft_kernels::device::{AdamWCoeffs, DeviceGrads};
use meft_kernels::{DeviceKernels, KernelError, SparseInputs};

type R<T> = Result<T, Box<dyn std::error::Error>>;
const REPS: usize = 20;

fn ev(s: &CudaStream) -> R<CudaEvent> {
    Ok(s.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?)
}

/// Mean milliseconds of `f` over REPS runs on `s` (after one warm-up), timed with events.
fn time_ms(s: &CudaStream, mut f: impl FnMut() -> R<()>) -> R<f64> {
    f()?;
    let a = ev(s)?;
    for _ in 0..REPS {
        f()?;
    }
    let b = ev(s)?;
    b.synchronize()?;
    Ok(f64::from(a.elapsed_ms(&b)?) / REPS as f64)
}

struct Row {
    name: &'static str,
    bytes: f64,
    ms: f64,
}

fn main() -> R<()> {
    let k = match DeviceKernels::new(0) {
        Ok(k) => k,
        Err(KernelError::NoDriver) => {
            println!("device_bw skipped: no CUDA driver (libcuda.so.1) on this machine");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let s = k.compute.clone();
    let mut rows = Vec::new();
    // Device limit: 1 GiB device-to-device copy (read + write).
    let n = 1 << 28;
    let src = s.alloc_zeros::<f32>(n)?;
    let mut dst = s.alloc_zeros::<f32>(n)?;
    rows.push(Row { name: "limit: dtod copy", bytes: 8.0 * n as f64, ms: time_ms(&s, || Ok(s.memcpy_dtod(&src, &mut dst)?))? });
    drop((src, dst));
    copies(&k, &mut rows)?;
    kernels(&k, &mut rows)?;
    report(&k, &rows)
}

/// Host↔device copies of 256 MiB, pinned vs pageable, on the transfer stream.
fn copies(k: &DeviceKernels, rows: &mut Vec<Row>) -> R<()> {
    let t = k.transfer.clone();
    let n = 1 << 26;
    let bytes = 4.0 * n as f64;
    let pageable = vec![1.0f32; n];
    let mut pinned = k.pinned_from(&pageable)?;
    let mut dev = t.alloc_zeros::<f32>(n)?;
    rows.push(Row { name: "h2d pinned", bytes, ms: time_ms(&t, || Ok(t.memcpy_htod(&pinned, &mut dev)?))? });
    let mut pageable_out = vec![0.0f32; n];
    rows.push(Row { name: "d2h pinned", bytes, ms: time_ms(&t, || Ok(t.memcpy_dtoh(&dev, &mut pinned)?))? });
    // Pageable copies are synchronous with respect to the host: time them with the wall clock.
    let wall = |f: &mut dyn FnMut() -> R<()>| -> R<f64> {
        f()?;
        t.synchronize()?;
        let start = Instant::now();
        for _ in 0..REPS {
            f()?;
        }
        t.synchronize()?;
        Ok(start.elapsed().as_secs_f64() * 1e3 / REPS as f64)
    };
    rows.push(Row { name: "h2d pageable", bytes, ms: wall(&mut || Ok(t.memcpy_htod(&pageable, &mut dev)?))? });
    rows.push(Row { name: "d2h pageable", bytes, ms: wall(&mut || Ok(t.memcpy_dtoh(&dev, &mut pageable_out)?))? });
    Ok(())
}

/// The MEFT kernels at 7B-like sizes: d = 4096, rows [k|v] = 8192 floats.
fn kernels(k: &DeviceKernels, rows: &mut Vec<Row>) -> R<()> {
    let s = k.compute.clone();
    let (row_len, n_rows, cap) = (8192usize, 4096usize, 8192usize);
    let slots: Vec<u32> = (0..n_rows as u32).map(|i| (i * 2 + 1) % cap as u32).collect();
    let dslots = s.clone_htod(&slots)?;
    let staged = s.alloc_zeros::<f32>(n_rows * row_len)?;
    let mut work = s.alloc_zeros::<f32>(cap * row_len)?;
    let mut packed = s.alloc_zeros::<f32>(n_rows * row_len)?;
    let moved = 8.0 * (n_rows * row_len) as f64;
    rows.push(Row { name: "place_rows", bytes: moved, ms: time_ms(&s, || Ok(k.launch_place_rows(&staged, &dslots, n_rows, row_len, &mut work)?))? });
    rows.push(Row { name: "pack_rows", bytes: moved, ms: time_ms(&s, || Ok(k.launch_pack_rows(&work, &dslots, n_rows, row_len, &mut packed)?))? });
    drop((work, packed, staged));
    sparse(k, rows)?;
    let n = 32 * 4096 * 64; // gate matrices of 32 layers, N = 64 experts, d = 4096
    let (mut p, g, mut m, mut v): (CudaSlice<f32>, _, _, _) = (s.alloc_zeros(n)?, s.alloc_zeros(n)?, s.alloc_zeros(n)?, s.alloc_zeros(n)?);
    let c = AdamWCoeffs::new(&AdamWConfig::default(), 1)?;
    rows.push(Row { name: "adamw (gates)", bytes: 28.0 * n as f64, ms: time_ms(&s, || Ok(k.launch_adamw(&c, &mut p, &g, &mut m, &mut v, n)?))? });
    Ok(())
}

/// Sparse forward/backward: T = 512 tokens (2 × 256), K = 64 pairs per token, U = 4096, d = 4096.
fn sparse(k: &DeviceKernels, rows: &mut Vec<Row>) -> R<()> {
    let s = k.compute.clone();
    let (t, kk, u, d) = (512usize, 64u32, 4096usize, 4096usize);
    let pairs = (0..t as u32).flat_map(|tk| (0..kk).map(move |j| (tk, (tk * 61 + j * 67) % u as u32))).collect();
    let sel = SparseSelection { tokens: t, row_expert: vec![0; u], pairs, evaluation: Evaluation::PerToken };
    let pairs = SparsePairs::from_selection(&sel, None)?;
    let (x, keys) = (vec![0.5f32; t * d], vec![0.01f32; u * d]);
    let ds = k.upload_sparse(SparseInputs { x: &x, keys: &keys, values: &keys, pairs: &pairs, d })?;
    let (mut y, mut kx) = (s.alloc_zeros::<f32>(t * d)?, s.alloc_zeros::<f32>(pairs.len())?);
    // Per pair the forward reads one key row and one value row; x and y once per token.
    let fwd_bytes = 4.0 * (2 * pairs.len() * d + 2 * t * d) as f64;
    rows.push(Row { name: "sparse fwd", bytes: fwd_bytes, ms: time_ms(&s, || Ok(k.launch_sparse_forward(&ds, &mut y, &mut kx)?))? });
    let mut g = DeviceGrads::new(k, &ds)?;
    // Backward: pairs read x, dy, v and update dk, dv (read + write); dx reads one key row per pair.
    let bwd_bytes = 4.0 * (7 * pairs.len() * d + 2 * t * d) as f64;
    rows.push(Row { name: "sparse bwd", bytes: bwd_bytes, ms: time_ms(&s, || Ok(k.launch_sparse_backward(&ds, &kx, &y, &mut g)?))? });
    Ok(())
}

fn report(k: &DeviceKernels, rows: &[Row]) -> R<()> {
    let limit = rows[0].bytes / rows[0].ms / 1e6;
    let name = k.device_name()?;
    println!("device: {name}; limit (dtod copy) {limit:.1} GB/s");
    let mut json = Vec::new();
    for r in rows {
        let gbs = r.bytes / r.ms / 1e6;
        println!("{:<18} {:>10.3} ms {:>9.1} GB/s {:>6.1} % of limit", r.name, r.ms, gbs, 100.0 * gbs / limit);
        json.push(serde_json::json!({ "name": r.name, "bytes": r.bytes, "ms": r.ms, "gb_per_s": gbs, "fraction_of_limit": gbs / limit }));
    }
    let path = std::env::var("MEFT_BENCH_JSON").unwrap_or_else(|_| "device_bw.json".into());
    let doc = serde_json::json!({ "device": name, "limit_gb_per_s": limit, "rows": json });
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    println!("wrote {path}");
    Ok(())
}
