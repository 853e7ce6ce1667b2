//! Frozen projections in f32 (the gemm crate, column-split) against bf16 (AMX tiles where the
//! CPU has them) at SmolLM2-135M shapes: forward `x·Wᵀ` and input gradient `g·W`, for the
//! row counts of a training micro-batch (8 × 48 tokens) and of decoding (one row).
//!
//! `cargo bench -p meft-models --bench frozen_bf16`; prints GFLOP/s beside criterion's times.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use criterion::{Criterion, criterion_group, criterion_main};
use meft_models::ops::{self, Bf16Weight};

/// (name, out, in) of SmolLM2-135M's frozen products.
const SHAPES: [(&str, usize, usize); 4] = [("qkv", 960, 576), ("gate_up", 3072, 576), ("down", 576, 1536), ("head", 49152, 576)];

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("frozen_linear");
    group.sample_size(10);
    for rows in [384usize, 1] {
        for (name, out, inp) in SHAPES {
            let w = Tensor::randn(0f32, 0.02, (out, inp), &dev).expect("weight");
            let bf16 = Arc::new(Bf16Weight::new(&w).expect("bf16"));
            // A variable input makes `linear` take the frozen-linear op (and keep its backward).
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, inp), &dev).expect("x")).expect("var");
            for (label, companion) in [("f32", None), ("bf16", Some(&bf16))] {
                let id = format!("{name}/{rows}rows/{label}");
                group.bench_function(&id, |b| {
                    b.iter(|| {
                        let y = ops::linear_with(x.as_tensor(), &w, companion).expect("fwd");
                        y.sum_all().expect("sum").backward().expect("bwd")
                    })
                });
                let start = Instant::now();
                let n = if rows == 1 { 20 } else { 5 };
                for _ in 0..n {
                    let y = ops::linear_with(x.as_tensor(), &w, companion).expect("fwd");
                    y.sum_all().expect("sum").backward().expect("bwd");
                }
                let secs = start.elapsed().as_secs_f64() / n as f64;
                println!("{id}: forward+input-grad {:.2} ms, {:.0} GFLOP/s", secs * 1e3, 4.0 * (rows * out * inp) as f64 / secs / 1e9);
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
