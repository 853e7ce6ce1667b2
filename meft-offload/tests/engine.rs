//! The offload engine end to end on a toy model: ledger arithmetic, budgets, bad input, the
//! non-finite policy, untouched rows, gradient accumulation and pre-look prefetch.

mod common;

use std::sync::Arc;

use candle_core::Tensor;
use common::*;
use meft_core::optim::{AdamWBuffers, FAST_VS_SLOW_REL_TOL, adamw_dense_slow};
use meft_offload::{Category, DeviceKind, HostOptimizer, Ledger, MeftConfig, OffloadDevice, OffloadError, OffloadPlan, PrefetchMode, StepStatus};

const D: usize = 8;
const M: usize = 64;
const N: usize = 8;

fn setup(seed: u64) -> (Rng, Toy, Params) {
    let mut rng = Rng(seed);
    let toy = Toy::new(4, D, 0.3, &mut rng);
    let params = random_params(&[1, 3], M, D, &mut rng);
    (rng, toy, params)
}

#[test]
fn ledger_counts_union_rows_both_ways_and_serialises() {
    let (mut rng, toy, params) = setup(1);
    let mut a = adapter(config(D, M, N, 4, 2), plan(&[1, 3], 20, 0, PrefetchMode::Worker), &params, cpu());
    for _ in 0..2 {
        let (x, y) = (tensor(&mut rng, (2, 5, D), 1.0), tensor(&mut rng, (2, 5, D), 1.0));
        micro_batch(&toy, &a, &x, &y);
    }
    assert_eq!(a.step().unwrap(), StepStatus::Applied);
    let rec = &a.ledger().steps[0];
    for l in &rec.layers {
        assert_eq!(l.micro_batches, 2);
        assert_eq!(l.tokens, 20);
        assert!(l.union_rows > 0 && l.union_rows <= 2 * 20, "capacity bounds |U|");
        assert_eq!(l.h2d_bytes, (l.union_rows * 2 * D * 4) as u64, "H2D = |U|·2d·4");
        assert_eq!(l.d2h_bytes, l.h2d_bytes);
        assert_eq!(l.route_input_bytes, 2 * (10 * D + 10 * N) as u64 * 4);
        assert_eq!(l.full_offload_bytes, (2 * M * 2 * D * 4) as u64);
        // Modelled link time: 3 transfers per micro-batch at 10 µs + bytes / 25 GB/s.
        let bytes = l.h2d_bytes + l.d2h_bytes + l.route_input_bytes;
        assert!((l.link_time_s - (6.0 * 10e-6 + bytes as f64 / 25e9)).abs() < 1e-12);
        assert!(l.host.route_ns > 0 && l.host.gather_ns > 0);
    }
    assert_eq!(rec.device.peak_by_category.working_sets, (2 * 20 * 2 * D * 4) as u64);
    assert!(rec.device.peak_by_category.activations > 0);
    let back: Ledger = serde_json::from_str(&a.ledger().to_json().unwrap()).unwrap();
    assert_eq!(&back, a.ledger());
    assert!(rec.table().contains("full offload"));
}

#[test]
fn simulated_budget_is_enforced_with_a_named_error() {
    let (mut rng, toy, params) = setup(2);
    let ws = (2 * 20 * 2 * D * 4) as u64;
    let gates = (2 * 3 * N * D * 4) as u64;
    // Too small for the frozen model.
    let tiny = OffloadDevice::new(DeviceKind::Simulated { budget_bytes: toy.weight_bytes() - 1 }).unwrap();
    let err = tiny.set_usage("model", Category::FrozenWeights, toy.weight_bytes()).unwrap_err();
    assert!(matches!(err, OffloadError::BudgetExceeded { .. }), "{err}");
    // Room for weights, working sets and gates but not for the adapter's activations.
    let budget = toy.weight_bytes() + ws + gates + 100;
    let dev = Arc::new(OffloadDevice::new(DeviceKind::Simulated { budget_bytes: budget }).unwrap());
    dev.set_usage("model", Category::FrozenWeights, toy.weight_bytes()).unwrap();
    let a = adapter(config(D, M, N, 4, 2), plan(&[1, 3], 20, 0, PrefetchMode::Worker), &params, dev.clone());
    let (x, y) = (tensor(&mut rng, (2, 5, D), 1.0), tensor(&mut rng, (2, 5, D), 1.0));
    let msg = toy.loss(&x, &y, &a).unwrap_err().to_string();
    assert!(msg.contains("device budget exceeded") && msg.contains("activations.meft.layer1"), "{msg}");
    assert!(dev.report().peak_total <= budget);
    // The working-set reservation itself can be refused at construction.
    let small = Arc::new(OffloadDevice::new(DeviceKind::Simulated { budget_bytes: ws / 2 }).unwrap());
    let arenas = params.iter().map(|(l, k, v)| (*l, meft_offload::LayerArena::new(D, k, v).unwrap())).collect();
    let r = meft_offload::MeftAdapter::from_arenas(config(D, M, N, 4, 2), plan(&[1, 3], 20, 0, PrefetchMode::Worker), small, arenas);
    assert!(matches!(r, Err(OffloadError::BudgetExceeded { .. })));
}

#[test]
fn bad_configurations_are_typed_errors() {
    let cfg = config(D, M, N, 4, 2);
    let zero = OffloadPlan::uniform(&[1], 0, 0).validate(&cfg).unwrap_err();
    assert!(zero.to_string().contains("layers[0].capacity"), "{zero}");
    let big_k = MeftConfig { top_k: M + 1, ..cfg.clone() };
    let e = OffloadPlan::uniform(&[1], 8, 0).validate(&big_k).unwrap_err();
    assert!(e.to_string().contains("top_k"), "{e}");
    let e = OffloadPlan::uniform(&[3, 1], 8, 0).validate(&cfg).unwrap_err();
    assert!(e.to_string().contains("ascending"), "{e}");
    let bad_n = MeftConfig { experts: 7, ..cfg.clone() };
    let params = random_params(&[1], M, D, &mut Rng(3));
    let arenas = params.iter().map(|(l, k, v)| (*l, meft_offload::LayerArena::new(D, k, v).unwrap())).collect();
    let r = meft_offload::MeftAdapter::from_arenas(bad_n, OffloadPlan::uniform(&[1], 8, 0), cpu(), arenas);
    assert!(matches!(r, Err(OffloadError::Route(_))), "N must divide M");
    let fitted = OffloadPlan::fit(&cfg, &[1, 3], 10, 1 << 20, 0).unwrap();
    assert_eq!(fitted.layers[0].capacity, 40, "capped at T·K");
    let json = serde_json::to_string(&fitted).unwrap();
    assert_eq!(serde_json::from_str::<OffloadPlan>(&json).unwrap(), fitted);
}

#[test]
fn non_finite_gradient_skips_the_step_and_counts_it() {
    let (mut rng, toy, params) = setup(4);
    let mut a = adapter(config(D, M, N, 4, 2), plan(&[1, 3], 40, 0, PrefetchMode::Worker), &params, cpu());
    let before = host_params(&a, 1);
    let gates_before = a.gates(1).unwrap().as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let x = tensor(&mut rng, (1, 4, D), 1.0);
    let nan = Tensor::full(f32::NAN, (1, 4, D), &candle_core::Device::Cpu).unwrap();
    micro_batch(&toy, &a, &x, &nan);
    assert_eq!(a.step().unwrap(), StepStatus::SkippedNonFinite);
    assert_eq!(a.skipped_steps(), 1);
    assert_eq!(host_params(&a, 1), before, "no row moved");
    let gates_after = a.gates(1).unwrap().as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(gates_after, gates_before, "no gate moved");
    assert!(a.store().layer(1).unwrap().read().unwrap().grads().iter().all(|&g| g == 0.0));
    let y = tensor(&mut rng, (1, 4, D), 1.0);
    micro_batch(&toy, &a, &x, &y);
    assert_eq!(a.step().unwrap(), StepStatus::Applied);
    assert_ne!(host_params(&a, 1), before);
}

/// Rows outside every union get exactly zero gradient; lazy AdamW leaves them bit-identical and
/// dense AdamW moves them exactly as the reference torch-AdamW twin does.
#[test]
fn never_selected_rows() {
    for opt in [HostOptimizer::Lazy, HostOptimizer::Dense] {
        let (mut rng, toy, params) = setup(5);
        let cfg = MeftConfig { host_optimizer: opt, ..config(D, M, N, 2, 1) };
        let mut a = adapter(cfg.clone(), plan(&[1, 3], 3, 0, PrefetchMode::Worker), &params, cpu());
        // Warm the moments with one step so the dense rule has momentum to apply.
        let (x, y) = (tensor(&mut rng, (1, 3, D), 1.0), tensor(&mut rng, (1, 3, D), 1.0));
        micro_batch(&toy, &a, &x, &y);
        a.step().unwrap();
        let (x, y) = (tensor(&mut rng, (1, 3, D), 1.0), tensor(&mut rng, (1, 3, D), 1.0));
        micro_batch(&toy, &a, &x, &y);
        let arena = a.store().layer(1).unwrap().read().unwrap();
        let touched = arena.touched().to_vec();
        assert!(!touched.is_empty() && touched.len() <= 3, "capacity 3 bounds the touched rows");
        let row_len = arena.row_len();
        let grads = arena.grads().to_vec();
        for r in (0..M as u32).filter(|r| !touched.contains(r)) {
            let g = &grads[r as usize * row_len..(r as usize + 1) * row_len];
            assert!(g.iter().all(|&v| v == 0.0), "row {r} is untouched but has gradient");
        }
        let before = arena.params().to_vec();
        let (m0, v0) = (arena.moments().0.to_vec(), arena.moments().1.to_vec());
        drop(arena);
        a.step().unwrap();
        let after = a.store().layer(1).unwrap().read().unwrap().params().to_vec();
        match opt {
            HostOptimizer::Lazy => {
                for r in (0..M).filter(|r| !touched.contains(&(*r as u32))) {
                    let span = r * row_len..(r + 1) * row_len;
                    assert_eq!(after[span.clone()], before[span], "lazy: row {r} must be bit-identical");
                }
            }
            HostOptimizer::Dense => {
                // The scalar twin written from the PyTorch formulas, from the same state (step 2).
                let (mut p, mut m, mut v) = (before.clone(), m0, v0);
                let bufs = AdamWBuffers { params: &mut p, grads: &grads, m: &mut m, v: &mut v };
                let _ = adamw_dense_slow(&cfg.adamw, 2, bufs).unwrap();
                assert_close(&after, &p, FAST_VS_SLOW_REL_TOL, "dense step vs torch-formula twin");
                let moved = (0..M).filter(|r| !touched.contains(&(*r as u32)) && after[r * row_len] != before[r * row_len]);
                assert!(moved.count() > 0, "dense AdamW moves rows without gradient by momentum");
            }
        }
    }
}

#[test]
fn accumulating_micro_batches_equals_one_batch() {
    let (mut rng, toy, _) = setup(6);
    // Moderate keys: gates are 50 × the mean key, so large keys make gradients ~1e9 and f32
    // summation-order differences (one T×U matmul vs two) exceed 1e-5 relative.
    let params: Params = [1, 3].iter().map(|&l| (l, rng.vec(M * D, 0.1), rng.vec(M * D, 0.1))).collect();
    let cfg = config(D, M, N, 4, 2);
    let x = tensor(&mut rng, (4, 3, D), 1.0);
    let y = tensor(&mut rng, (4, 3, D), 1.0);
    let mut big = adapter(cfg.clone(), plan(&[1, 3], M, 0, PrefetchMode::Worker), &params, cpu());
    let mut small = adapter(cfg, plan(&[1, 3], M, 0, PrefetchMode::Worker), &params, cpu());
    let whole = micro_batch(&toy, &big, &x, &y);
    let mut parts = 0.0;
    for i in 0..2 {
        let xs = x.narrow(0, 2 * i, 2).unwrap();
        let ys = y.narrow(0, 2 * i, 2).unwrap();
        parts += micro_batch(&toy, &small, &xs, &ys);
    }
    assert!((whole - parts).abs() <= 1e-5 * whole);
    for l in [1, 3] {
        let gb = big.store().layer(l).unwrap().read().unwrap().grads().to_vec();
        let gs = small.store().layer(l).unwrap().read().unwrap().grads().to_vec();
        assert_close(&gs, &gb, 1e-5, "accumulated row gradients");
    }
    big.step().unwrap();
    small.step().unwrap();
    for l in [1, 3] {
        let (kb, vb) = host_params(&big, l);
        let (ks, vs) = host_params(&small, l);
        assert_close(&ks, &kb, 1e-5, "keys after the step");
        assert_close(&vs, &vb, 1e-5, "values after the step");
        let gb = big.gates(l).unwrap().as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gs = small.gates(l).unwrap().as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_close(&gs, &gb, 1e-5, "gates after the step");
    }
}

/// Runs three steps and returns (losses, final keys of layer 3, ledger).
fn run(pre_look: usize, prefetch: PrefetchMode, layers: &[usize], toy: &Toy, params: &Params) -> (Vec<f32>, Vec<f32>, Ledger) {
    let mut rng = Rng(99);
    let mut a = adapter(config(D, M, N, 4, 2), plan(layers, 24, pre_look, prefetch), params, cpu());
    let mut losses = Vec::new();
    for _ in 0..3 {
        let (x, y) = (tensor(&mut rng, (2, 4, D), 1.0), tensor(&mut rng, (2, 4, D), 1.0));
        losses.push(micro_batch(toy, &a, &x, &y));
        a.step().unwrap();
    }
    (losses, host_params(&a, 3).0, a.ledger().clone())
}

#[test]
fn prefetch_worker_equals_inline_routing_and_records_overlap() {
    let (_, toy, params) = setup(7);
    let (lw, kw, ledger) = run(2, PrefetchMode::Worker, &[1, 3], &toy, &params);
    let (li, ki, _) = run(2, PrefetchMode::Inline, &[1, 3], &toy, &params);
    assert_eq!(lw, li, "losses must be bit-identical");
    assert_eq!(kw, ki, "parameters must be bit-identical");
    let l3 = &ledger.steps[0].layers[1];
    assert!(l3.host.route_ns > 0, "worker routing time is recorded");
}

#[test]
fn pre_look_routes_from_the_earlier_layer_input() {
    // Layers 1 and 2 compute nothing (zero weights, not adapted), so layer 3's FFN input equals
    // layer 1's: routing layer 3 with p = 2 from layer 1's input must give exactly the p = 0 result.
    let (_, mut toy, params) = setup(8);
    for l in [1, 2] {
        toy.weights[l] = toy.weights[l].zeros_like().unwrap();
    }
    let params = vec![params[1].clone()];
    let (l0, k0, _) = run(0, PrefetchMode::Inline, &[3], &toy, &params);
    let (l2, k2, _) = run(2, PrefetchMode::Worker, &[3], &toy, &params);
    assert_eq!(l0, l2);
    assert_eq!(k0, k2);
}
