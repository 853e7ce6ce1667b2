//! Bench (b): row gather and scatter-add bandwidth beside memcpy of the same bytes.
//!
//! A 65,536 × 1,152 store (the bundled `[k | v]` rows of one large layer); 8,192 sorted distinct
//! rows are gathered into a staging buffer and their gradients scatter-added back. GB/s counts
//! bytes read + written: gather moves 2 × rows × row_len × 4 bytes, scatter-add 3 × (reads the
//! accumulator row and the source row, writes the row). Memcpy of a staging-sized buffer is the
//! limit. `cargo bench -p meft-core --bench rows`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meft_core::rows::{gather_rows, gather_rows_slow, scatter_add_rows, scatter_add_rows_slow};
use rayon::prelude::*;

const ROWS: usize = 65_536;
const ROW_LEN: usize = 1_152;
const TOUCHED: usize = 8_192;

/// Every 8th row, shifted by a fixed pattern so rows are spread but not strided exactly.
fn touched_rows() -> Vec<u32> {
    (0..TOUCHED as u32).map(|i| i * 8 + (i * 5) % 8).collect()
}

fn bench_rows(c: &mut Criterion) {
    let store: Vec<f32> = (0..ROWS * ROW_LEN).map(|i| (i % 1013) as f32 * 0.001).collect();
    let mut acc = store.clone();
    let ids = touched_rows();
    let moved = (TOUCHED * ROW_LEN * 4) as u64;
    let mut staging = vec![0.0f32; TOUCHED * ROW_LEN];
    let src: Vec<f32> = vec![1e-3; TOUCHED * ROW_LEN];

    let mut group = c.benchmark_group("rows_8192_of_65536x1152");
    group.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Bytes(2 * moved));
    group.bench_function("gather", |b| b.iter(|| gather_rows(&store, ROW_LEN, black_box(&ids), &mut staging)));
    group.bench_function("gather_slow", |b| b.iter(|| gather_rows_slow(&store, ROW_LEN, black_box(&ids), &mut staging)));
    let copy_src = src.clone();
    group.bench_function("memcpy_1thread", |b| b.iter(|| staging.copy_from_slice(black_box(&copy_src))));
    group.bench_function("memcpy_rayon", |b| {
        b.iter(|| staging.par_chunks_mut(1 << 14).zip(black_box(&copy_src).par_chunks(1 << 14)).for_each(|(d, s)| d.copy_from_slice(s)))
    });
    group.throughput(Throughput::Bytes(3 * moved));
    group.bench_function("scatter_add", |b| b.iter(|| scatter_add_rows(&mut acc, ROW_LEN, black_box(&ids), &src)));
    group.bench_function("scatter_add_slow", |b| b.iter(|| scatter_add_rows_slow(&mut acc, ROW_LEN, black_box(&ids), &src)));
    group.finish();
}

criterion_group!(benches, bench_rows);
criterion_main!(benches);
