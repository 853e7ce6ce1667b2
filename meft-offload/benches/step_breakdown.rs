//! Bench (c): host-side time breakdown of one MEFT step at SmolLM2-135M size.
//!
//! d = 576, M = 16384 neurons per layer, N = 4·√M = 512 experts, K = 64, P = 8, T = 512 tokens
//! (random activations), capacity C = M (no drops). One layer's arena (bundled rows, moments,
//! accumulator: 4 × 75.5 MB) is built and each phase is measured on it; the 30-layer step is the
//! per-layer time × 30 (30 arenas would need 9 GB of host memory, more than this bench should take
//! on a shared machine). Phases: route (Key-Experts on the host, gate scores given), gather (U rows
//! into the staging buffer), H2D (staging → device working set; a real copy into a candle tensor on
//! the CPU, the link itself is modelled in the ledger), D2H (working-set gradient → host vector),
//! scatter (scatter-add into the accumulator), AdamW dense (all M rows) and lazy (touched rows).

use std::hint::black_box;
use std::time::Instant;

use candle_core::{Device, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use meft_core::optim::AdamWConfig;
use meft_offload::{HostOptimizer, LayerArena};
use meft_router::{Capacity, ExpertLayout, FiniteCheck, GateSource, RouteConfig, RouteInputs, RouteScratch, Rows, Scoring, route};

const D: usize = 576;
const M: usize = 16384;
const K: usize = 64;
const P: usize = 8;
const T: usize = 512;
const LAYERS: usize = 30;

struct Setup {
    arena: LayerArena,
    layout: ExpertLayout,
    cfg: RouteConfig,
    x: Vec<f32>,
    gate_scores: Vec<f32>,
    union: Vec<u32>,
    staging: Vec<f32>,
    grads: Vec<f32>,
}

fn lcg_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

fn setup() -> Setup {
    let layout = ExpertLayout::with_default_factor(M).expect("layout");
    let keys = lcg_vec(M * D, 1, 0.07);
    let arena = LayerArena::new(D, &keys, &vec![0.0; M * D]).expect("arena");
    let cfg = RouteConfig { top_p: P, top_k: K, scoring: Scoring::Gated, capacity: Capacity::Rows(M), finite_check: FiniteCheck::Scored };
    let x = lcg_vec(T * D, 2, 2.0);
    let gate_scores = lcg_vec(T * layout.experts(), 3, 2.0);
    let mut setup = Setup { arena, layout, cfg, x, gate_scores, union: Vec::new(), staging: Vec::new(), grads: Vec::new() };
    setup.union = do_route(&setup, &mut RouteScratch::default()).union().to_vec();
    setup.staging = vec![0.0; setup.union.len() * 2 * D];
    setup.grads = lcg_vec(setup.union.len() * 2 * D, 4, 1e-3);
    setup
}

fn do_route(s: &Setup, scratch: &mut RouteScratch) -> meft_router::Routing {
    let inputs = RouteInputs {
        x: Rows::new(&s.x, T, D).expect("x"),
        keys: s.arena.keys().expect("keys"),
        gates: GateSource::Scores(Rows::new(&s.gate_scores, T, s.layout.experts()).expect("scores")),
    };
    route(&inputs, &s.layout, &s.cfg, scratch).expect("route")
}

/// Runs `f` `reps` times after one warm-up; mean seconds.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    start.elapsed().as_secs_f64() / reps as f64
}

fn summary(s: &mut Setup) {
    let mut scratch = RouteScratch::default();
    let u = s.union.len();
    let adamw = AdamWConfig::default();
    let route_s = time(5, || {
        black_box(do_route(s, &mut scratch));
    });
    let gather_s = time(20, || s.arena.gather(&s.union, &mut s.staging).expect("gather"));
    let h2d_s = time(20, || {
        black_box(Tensor::from_slice(&s.staging, (u, 2 * D), &Device::Cpu).expect("h2d"));
    });
    let dev_grads = Tensor::from_slice(&s.grads, (u, 2 * D), &Device::Cpu).expect("grads");
    let d2h_s = time(20, || {
        black_box(dev_grads.flatten_all().and_then(|g| g.to_vec1::<f32>()).expect("d2h"));
    });
    let scatter_s = time(20, || s.arena.accumulate(&s.union, &s.grads).expect("scatter"));
    let dense_s = time(5, || {
        s.arena.accumulate(&s.union, &s.grads).expect("scatter");
        s.arena.step(&adamw, HostOptimizer::Dense).expect("dense");
    }) - scatter_s;
    let lazy_s = time(5, || {
        s.arena.accumulate(&s.union, &s.grads).expect("scatter");
        s.arena.step(&adamw, HostOptimizer::Lazy).expect("lazy");
    }) - scatter_s;
    let row_mb = (u * 2 * D * 4) as f64 / 1e6;
    println!("\nMEFT host step breakdown (d={D}, M={M}, N={}, K={K}, P={P}, T={T}, |U|={u}, rows {row_mb:.1} MB/layer)", s.layout.experts());
    println!("phase            per layer ms   x{LAYERS} layers ms   GB/s");
    let rows = [
        ("route", route_s, 0.0),
        ("gather", gather_s, 2.0 * row_mb / 1e3),
        ("h2d copy", h2d_s, 2.0 * row_mb / 1e3),
        ("d2h copy", d2h_s, 2.0 * row_mb / 1e3),
        ("scatter-add", scatter_s, 3.0 * row_mb / 1e3),
        ("adamw dense", dense_s, (M * 2 * D * 28) as f64 / 1e9),
        ("adamw lazy", lazy_s, (u * 2 * D * 28) as f64 / 1e9),
    ];
    for (name, secs, gb) in rows {
        let bw = if gb > 0.0 { format!("{:.1}", gb / secs) } else { "-".into() };
        println!("{name:<16} {:>12.2} {:>17.1} {bw:>7}", secs * 1e3, secs * 1e3 * LAYERS as f64);
    }
    let total = route_s + gather_s + h2d_s + d2h_s + scatter_s;
    println!(
        "step total (dense AdamW): {:.1} ms per layer, {:.0} ms for {LAYERS} layers; (lazy): {:.0} ms",
        (total + dense_s) * 1e3,
        (total + dense_s) * 1e3 * LAYERS as f64,
        (total + lazy_s) * 1e3 * LAYERS as f64
    );
}

fn breakdown(c: &mut Criterion) {
    let mut s = setup();
    summary(&mut s);
    let mut g = c.benchmark_group("meft_step_layer");
    g.sample_size(10);
    let mut scratch = RouteScratch::default();
    g.bench_function("route", |b| b.iter(|| black_box(do_route(&s, &mut scratch))));
    g.bench_function("gather", |b| b.iter(|| s.arena.gather(&s.union, &mut s.staging).expect("gather")));
    g.bench_function("scatter_add", |b| b.iter(|| s.arena.accumulate(&s.union, &s.grads).expect("scatter")));
    g.finish();
}

criterion_group!(benches, breakdown);
criterion_main!(benches);
