//! Key-Experts vs dense top-K (issue 3), beside the flop ratio and each path's roofline bound.
//!
//! T = 512, P = 8, K = 64, N = 4·√M, d ∈ {576, 4096}, M ∈ {4096, …, 262144}, f32 keys (contiguous).
//! The f32 GEMM rate (`gemm` crate, the CPU matmul of candle) and the read bandwidth are measured in the
//! same run. Sizes whose key matrix would exceed `MEFT_BENCH_MAX_GIB` (default 6) are skipped with a
//! printed reason; `MEFT_BENCH_SIZES=small` keeps M ≤ 65536. When `python3 -c "import torch"` works,
//! `benches/torch_peer.py` times PyTorch (2 threads) on the M = 65536 sizes.

use criterion::{Criterion, criterion_group, criterion_main};
use meft_router::*;
use rayon::prelude::*;
use std::hint::black_box;
use std::time::{Duration, Instant};

const T: usize = 512;
const P: usize = 8;
const K: usize = 64;

fn fill(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut v = vec![0.0f32; len];
    v.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
        let mut s = (seed ^ (c as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
        for x in chunk {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *x = (((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5) * scale;
        }
    });
    v
}

fn best_of<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// f32 GEMM rate (FLOP/s) of the `gemm` crate on a 512×4096 · 4096×4096 product.
fn gemm_rate() -> f64 {
    let (m, k, n) = (512, 4096, 4096);
    let a = fill(m * k, 1, 1.0);
    let b = fill(k * n, 2, 1.0);
    let mut c = vec![0.0f32; m * n];
    let threads = rayon::current_num_threads();
    let secs = best_of(3, || {
        // SAFETY: a is m×k, b is k×n and c is m×n, all row-major with the strides given.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            );
        }
        black_box(&c);
    });
    2.0 * (m * n * k) as f64 / secs
}

/// Read bandwidth (bytes/s): a parallel sum over 1 GiB.
fn bandwidth() -> f64 {
    let buf = fill(1 << 28, 3, 1.0);
    let secs = best_of(3, || {
        let s: f32 = buf.par_chunks(1 << 16).map(|c| c.iter().sum::<f32>()).sum();
        black_box(s);
    });
    (buf.len() * 4) as f64 / secs
}

fn torch_peer(d: usize, m: usize) -> Option<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/torch_peer.py");
    let ok = std::process::Command::new("python3").args(["-c", "import torch"]).output();
    if !ok.map(|o| o.status.success()).unwrap_or(false) {
        return Some("skipped: python3 cannot import torch".into());
    }
    let out = std::process::Command::new("python3")
        .args([script, &d.to_string(), &m.to_string(), &T.to_string(), &P.to_string(), &K.to_string(), "3"])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string() + &String::from_utf8_lossy(&out.stderr))
}

struct Row {
    d: usize,
    m: usize,
    ke_ms: f64,
    dense_ms: f64,
    ke_bound_ms: f64,
    dense_bound_ms: f64,
    dense_gflops: f64,
    flop_ratio: f64,
    recall: f64,
    torch: String,
}

fn bench_size(c: &mut Criterion, d: usize, m: usize, rate: f64, bw: f64) -> Row {
    let layout = ExpertLayout::with_default_factor(m).expect("bench sizes are valid");
    let (n, pm) = (layout.experts(), layout.per_expert());
    let keys = fill(m * d, 11, 0.04);
    let x = fill(T * d, 12, 2.0);
    let view = KeysView::f32(&keys, m, d, d).expect("shape");
    let gates = init_gates(&view, &layout).expect("gates");
    let inputs = RouteInputs { x: Rows::new(&x, T, d).expect("x"), keys: view, gates: GateSource::Gates(Rows::new(&gates, n, d).expect("gates")) };
    let cfg = RouteConfig { finite_check: FiniteCheck::Scored, ..RouteConfig::new(P, K) };
    let dcfg = DenseConfig { top_k: K, scoring: Scoring::Plain };
    let mut scratch = RouteScratch::default();
    let mut out = Routing::default();
    let mut group = c.benchmark_group(format!("route_d{d}_m{m}"));
    let big = m * d >= 1 << 26;
    group.sample_size(10).warm_up_time(Duration::from_millis(if big { 1 } else { 500 }));
    group.measurement_time(Duration::from_secs(if big { 1 } else { 3 }));
    let mut ke_best = f64::INFINITY;
    group.bench_function("key_experts", |b| {
        b.iter_custom(|iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                let t1 = Instant::now();
                route_into(&inputs, &layout, &cfg, &mut scratch, &mut out).expect("route");
                ke_best = ke_best.min(t1.elapsed().as_secs_f64());
            }
            t0.elapsed()
        })
    });
    let mut dense_best = f64::INFINITY;
    let mut dense = None;
    group.bench_function("dense", |b| {
        b.iter_custom(|iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                let t1 = Instant::now();
                dense = Some(dense_top_k(&inputs, &layout, &dcfg).expect("dense"));
                dense_best = dense_best.min(t1.elapsed().as_secs_f64());
            }
            t0.elapsed()
        })
    });
    group.finish();
    let probed: std::collections::BTreeSet<u32> = (0..T).flat_map(|t| out.token_experts(t).to_vec()).collect();
    let ke_flops = 2.0 * (T * d * (n + P * pm)) as f64;
    let ke_bytes = 4.0 * ((probed.len() * pm + n) * d) as f64;
    let dense_flops = 2.0 * (T * d * m) as f64;
    let dense_bytes = 4.0 * (m * d) as f64;
    let torch = if m == 65536 { torch_peer(d, m).unwrap_or_else(|| "torch run failed".into()) } else { "-".into() };
    Row {
        d,
        m,
        ke_ms: ke_best * 1e3,
        dense_ms: dense_best * 1e3,
        ke_bound_ms: (ke_flops / rate).max(ke_bytes / bw) * 1e3,
        dense_bound_ms: (dense_flops / rate).max(dense_bytes / bw) * 1e3,
        dense_gflops: dense_flops / dense_best / 1e9,
        flop_ratio: m as f64 / (n + P * pm) as f64,
        recall: recall_at_k(&out, dense.as_ref().expect("dense ran")),
        torch,
    }
}

fn routing(c: &mut Criterion) {
    let max_gib: f64 = std::env::var("MEFT_BENCH_MAX_GIB").ok().and_then(|v| v.parse().ok()).unwrap_or(6.0);
    let small = std::env::var("MEFT_BENCH_SIZES").is_ok_and(|v| v == "small");
    println!("kernel: {}, rayon threads: {}", kernel_name(), rayon::current_num_threads());
    let rate = gemm_rate();
    let bw = bandwidth();
    println!("measured f32 GEMM rate (gemm crate, 512x4096x4096): {:.1} GFLOP/s", rate / 1e9);
    println!("measured read bandwidth (parallel sum over 1 GiB): {:.1} GB/s", bw / 1e9);
    let mut rows = Vec::new();
    for d in [576, 4096] {
        for m in [4096, 16384, 65536, 262144] {
            let gib = (m * d * 4) as f64 / (1u64 << 30) as f64;
            if gib > max_gib || (small && m > 65536) {
                println!("skip d={d} M={m}: keys {gib:.1} GiB (limit {max_gib} GiB, MEFT_BENCH_SIZES={})", if small { "small" } else { "all" });
                continue;
            }
            rows.push(bench_size(c, d, m, rate, bw));
        }
    }
    println!(
        "\n| d | M | KE ms | KE bound ms | KE/bound | dense ms | dense bound ms | dense GFLOP/s (% GEMM) | speed-up | flop ratio | recall@K | PyTorch |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.0} ({:.0}%) | {:.1}x | {:.1} | {:.3} | {} |",
            r.d,
            r.m,
            r.ke_ms,
            r.ke_bound_ms,
            r.ke_ms / r.ke_bound_ms,
            r.dense_ms,
            r.dense_bound_ms,
            r.dense_gflops,
            100.0 * r.dense_gflops * 1e9 / rate,
            r.dense_ms / r.ke_ms,
            r.flop_ratio,
            r.recall,
            r.torch
        );
    }
}

criterion_group!(benches, routing);
criterion_main!(benches);
