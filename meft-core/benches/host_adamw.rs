//! Bench (a): host AdamW throughput beside memcpy bandwidth and PyTorch.
//!
//! Dense: 16 M and 64 M parameters; params/s and effective GB/s at 28 bytes per parameter (read
//! p, g, m, v; write p, m, v). Memcpy of the same footprint is measured in the same run (GB/s
//! counts bytes read + written). Lazy: 8,192 touched rows of a 65,536 × 1,152 store against an
//! in-place row loop with the same memory traffic and no sqrt/divide (the reference cost).
//! PyTorch (`torch.optim.AdamW` fused and foreach; gather → update → scatter for lazy) runs from
//! `benches/torch_adamw.py` in the same run when `python3` can import torch, with 2 threads.
//!
//! `cargo bench -p meft-core --bench host_adamw` (about a minute and 2.5 GB of memory).
//! Set `MEFT_BENCH_SIZES=16` (millions, comma-separated) to change the dense sizes.

use std::hint::black_box;
use std::process::Command;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use meft_core::optim::{AdamWBuffers, AdamWConfig, FiniteCheck, StepOutcome, adamw_dense, adamw_dense_slow, adamw_lazy_rows};
use rayon::prelude::*;

const ROWS: usize = 65_536;
const ROW_LEN: usize = 1_152;
const TOUCHED: usize = 8_192;

/// Deterministic pseudo-random values in [-scale, scale).
fn lcg_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Parameters, gradients and moments of `n` elements.
struct Store {
    p: Vec<f32>,
    g: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Store {
    fn new(n: usize) -> Self {
        Self { p: lcg_vec(n, 1, 1.0), g: lcg_vec(n, 2, 0.01), m: vec![0.0; n], v: vec![0.0; n] }
    }

    fn bufs(&mut self) -> AdamWBuffers<'_> {
        AdamWBuffers { params: &mut self.p, grads: &self.g, m: &mut self.m, v: &mut self.v }
    }
}

fn dense_sizes() -> Vec<usize> {
    let spec = std::env::var("MEFT_BENCH_SIZES").unwrap_or_else(|_| "16,64".into());
    spec.split(',').filter_map(|s| s.trim().parse::<usize>().ok()).map(|m| m << 20).collect()
}

fn bench_dense(c: &mut Criterion) {
    let mut group = c.benchmark_group("dense");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for n in dense_sizes() {
        let label = format!("{}M", n >> 20);
        let mut st = Store::new(n);
        group.throughput(Throughput::Bytes(28 * n as u64));
        for (name, check) in [("fast_scan", FiniteCheck::Scan), ("fast_trusted", FiniteCheck::Trusted)] {
            let cfg = AdamWConfig { lr: 1e-3, weight_decay: 0.01, finite_check: check, ..Default::default() };
            let mut step = 0;
            group.bench_function(BenchmarkId::new(name, &label), |b| {
                b.iter(|| {
                    step += 1;
                    assert_eq!(adamw_dense(&cfg, step, st.bufs()), Ok(StepOutcome::Applied));
                })
            });
        }
        if n <= 16 << 20 {
            let cfg = AdamWConfig { lr: 1e-3, weight_decay: 0.01, ..Default::default() };
            group.bench_function(BenchmarkId::new("slow", &label), |b| {
                b.iter(|| assert_eq!(adamw_dense_slow(&cfg, 1, st.bufs()), Ok(StepOutcome::Applied)))
            });
        }
        drop(st);
        bench_memcpy(&mut group, n, &label);
    }
    group.finish();
}

/// Copies 16 bytes per parameter (the footprint AdamW reads), serial and on rayon.
fn bench_memcpy(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, n: usize, label: &str) {
    let src = lcg_vec(4 * n, 3, 1.0);
    let mut dst = vec![0.0f32; 4 * n];
    group.throughput(Throughput::Bytes(2 * 16 * n as u64));
    group.bench_function(BenchmarkId::new("memcpy_1thread", label), |b| b.iter(|| dst.copy_from_slice(black_box(&src))));
    group.bench_function(BenchmarkId::new("memcpy_rayon", label), |b| {
        b.iter(|| dst.par_chunks_mut(1 << 16).zip(black_box(&src).par_chunks(1 << 16)).for_each(|(d, s)| d.copy_from_slice(s)))
    });
}

/// 8,192 sorted distinct row ids spread over the store (fixed seed).
fn touched_rows() -> Vec<u32> {
    let mut ids: Vec<u32> = lcg_vec(3 * TOUCHED, 9, 1.0).iter().map(|x| ((x + 1.0) * 0.5 * ROWS as f32) as u32).collect();
    ids.iter_mut().for_each(|i| *i = (*i).min(ROWS as u32 - 1));
    ids.sort_unstable();
    ids.dedup();
    let stride = ids.len() as f64 / TOUCHED as f64;
    (0..TOUCHED).map(|i| ids[(i as f64 * stride) as usize]).collect()
}

/// The reference cost: an in-place loop over the touched rows with AdamW's memory traffic (read
/// p, g, m, v; write p, m, v) and no sqrt or divide, on the same rayon pool.
fn inplace_rows(st: &mut Store, ids: &[u32]) {
    let (p, m, v, g) = (st.p.as_mut_ptr() as usize, st.m.as_mut_ptr() as usize, st.v.as_mut_ptr() as usize, &st.g);
    ids.par_iter().with_min_len(16).for_each(|&id| {
        let span = id as usize * ROW_LEN..(id as usize + 1) * ROW_LEN;
        // SAFETY: ids are distinct, so each task writes a disjoint row of p, m and v; the three
        // buffers outlive the loop and nothing else touches them meanwhile.
        let (p, m, v) = unsafe {
            let row = |base: usize| std::slice::from_raw_parts_mut((base as *mut f32).add(span.start), ROW_LEN);
            (row(p), row(m), row(v))
        };
        for (i, &gi) in g[span].iter().enumerate() {
            m[i] = 0.9 * m[i] + 0.1 * gi;
            v[i] = 0.999 * v[i] + 0.001 * gi * gi;
            p[i] -= 1e-3 * m[i];
        }
    });
}

fn bench_lazy(c: &mut Criterion) {
    let mut group = c.benchmark_group("lazy_8192_of_65536x1152");
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Bytes(28 * (TOUCHED * ROW_LEN) as u64));
    let mut st = Store::new(ROWS * ROW_LEN);
    let ids = touched_rows();
    let mut row_steps = vec![0u64; ROWS];
    group.bench_function("inplace_baseline", |b| b.iter(|| inplace_rows(&mut st, black_box(&ids))));
    for (name, check) in [("lazy_scan", FiniteCheck::Scan), ("lazy_trusted", FiniteCheck::Trusted)] {
        let cfg = AdamWConfig { lr: 1e-3, weight_decay: 0.01, finite_check: check, ..Default::default() };
        group.bench_function(name, |b| {
            b.iter(|| {
                let out = adamw_lazy_rows(&cfg, ROW_LEN, black_box(&ids), st.bufs(), &mut row_steps);
                assert_eq!(out, Ok(StepOutcome::Applied));
            })
        });
    }
    group.finish();
}

/// Runs the PyTorch comparison script and prints its table, or says why it was skipped.
fn torch_comparison(_: &mut Criterion) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/torch_adamw.py");
    let sizes: Vec<String> = dense_sizes().iter().map(|n| (n >> 20).to_string()).collect();
    let args = [script, "--sizes", &sizes.join(","), "--rows", "65536", "--row-len", "1152", "--touched", "8192"];
    match Command::new("python3").args(args).env("OMP_NUM_THREADS", "2").output() {
        Ok(out) if out.status.success() => println!("\n{}", String::from_utf8_lossy(&out.stdout)),
        Ok(out) => println!("\nPyTorch comparison skipped: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => println!("\nPyTorch comparison skipped: cannot run python3 ({e})"),
    }
}

criterion_group!(benches, bench_dense, bench_lazy, torch_comparison);
criterion_main!(benches);
