//! The full-offload baseline against its slow reference, a dense `ParallelAdapter` with the same
//! weights kept on the device: forward values, row gradients, one AdamW step, the bytes it moves,
//! and a `bf16` model at the hook boundary.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use common::{Rng, Toy};
use meft_core::AdapterHook;
use meft_core::adapters::{Activation, DeviceAdamW, ParallelAdapter, ParallelAdapterLayer, Trainable};
use meft_core::optim::AdamWConfig;
use meft_offload::{DeviceKind, FullOffloadAdapter, LayerArena, OffloadDevice, StepStatus};

const D: usize = 8;
const M: usize = 12;
const LAYERS: [usize; 2] = [0, 2];
/// abs + rel·|ref| (llm.c `validate_result`); both sides do the same f32 math in another order.
const TOL: f32 = 1e-5;

struct Pair {
    full: FullOffloadAdapter,
    dense: ParallelAdapter,
    toy: Toy,
    x: Tensor,
}

fn adamw() -> AdamWConfig {
    AdamWConfig { lr: 1e-2, weight_decay: 0.01, ..AdamWConfig::default() }
}

/// The same keys and (non-zero, so gradients reach the keys) values in both adapters.
fn pair(seed: u64) -> Pair {
    let mut rng = Rng(seed);
    let mut arenas = Vec::new();
    let mut layers = BTreeMap::new();
    for &l in &LAYERS {
        let (k, v) = (rng.vec(M * D, 0.5), rng.vec(M * D, 0.5));
        arenas.push((l, LayerArena::new(D, &k, &v).unwrap()));
        let var = |data: Vec<f32>| Var::from_tensor(&Tensor::from_vec(data, (M, D), &Device::Cpu).unwrap()).unwrap();
        layers.insert(l, ParallelAdapterLayer { keys: var(k), values: var(v) });
    }
    let device = Arc::new(OffloadDevice::new(DeviceKind::Simulated { budget_bytes: 1 << 30 }).unwrap());
    let full = FullOffloadAdapter::new(D, Activation::Relu, adamw(), arenas, device).unwrap();
    let dense = ParallelAdapter::from_layers(Activation::Relu, layers);
    let toy = Toy::new(3, D, 0.4, &mut rng);
    let x = Tensor::from_vec(rng.vec(2 * 5 * D, 1.0), (2, 5, D), &Device::Cpu).unwrap();
    Pair { full, dense, toy, x }
}

fn loss(toy: &Toy, x: &Tensor, hook: &dyn AdapterHook) -> Tensor {
    toy.forward(x, hook).unwrap().sqr().unwrap().mean_all().unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= TOL + TOL * w.abs(), "{what}[{i}]: {g} vs {w}");
    }
}

fn bundled(dense: &ParallelAdapter, layer: usize) -> Vec<f32> {
    let l = dense.layer(layer).unwrap();
    Tensor::cat(&[l.keys.as_tensor(), l.values.as_tensor()], 1).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn forward_and_row_gradients_match_the_dense_parallel_adapter() {
    let p = pair(7);
    let got = p.toy.forward(&p.x, &p.full).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    p.full.discard_forward();
    let want = p.toy.forward(&p.x, &p.dense).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_close("forward", &got, &want);

    p.full.finish_backward(&loss(&p.toy, &p.x, &p.full).backward().unwrap()).unwrap();
    let dense_grads = loss(&p.toy, &p.x, &p.dense).backward().unwrap();
    for &l in &LAYERS {
        let layer = p.dense.layer(l).unwrap();
        let g = |v: &Var| dense_grads.get(v.as_tensor()).unwrap().clone();
        let want = Tensor::cat(&[g(&layer.keys), g(&layer.values)], 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(want.iter().any(|&w| w != 0.0), "layer {l}: the reference gradient is zero");
        let arena = p.full.store().layer(l).unwrap().read().unwrap();
        assert_close(&format!("layer {l} row gradients"), arena.grads(), &want);
    }
}

#[test]
fn one_step_matches_dense_adamw_and_counts_every_row_both_ways() {
    let mut p = pair(11);
    p.full.finish_backward(&loss(&p.toy, &p.x, &p.full).backward().unwrap()).unwrap();
    let moved = p.full.step().unwrap();
    let vars = p.dense.vars().into_iter().map(|(_, v)| v);
    let mut opt = DeviceAdamW::new(adamw(), vars).unwrap();
    opt.step(&loss(&p.toy, &p.x, &p.dense).backward().unwrap()).unwrap();
    for &l in &LAYERS {
        let arena = p.full.store().layer(l).unwrap().read().unwrap();
        assert_close(&format!("layer {l} rows after one step"), arena.params(), &bundled(&p.dense, l));
    }
    let per_layer = (M * 2 * D * 4) as u64;
    assert_eq!(moved.h2d_bytes, per_layer * LAYERS.len() as u64);
    assert_eq!(moved.d2h_bytes, per_layer * LAYERS.len() as u64);
    assert_eq!(moved.status, StepStatus::Applied);
    assert_eq!(p.full.step().unwrap().h2d_bytes, 0, "the counters restart after a step");
}

#[test]
fn a_bf16_model_gets_bf16_output_and_f32_gradients() {
    let p = pair(13);
    let x = p.x.to_dtype(DType::BF16).unwrap();
    let y = p.full.ffn(0, &x).unwrap().unwrap();
    assert_eq!((y.dtype(), y.dims()), (DType::BF16, x.dims()));
    let want = p.dense.ffn(0, &x).unwrap().unwrap();
    assert_eq!(want.dtype(), DType::BF16, "the dense adapter casts at the boundary too");
    let diff = (y.to_dtype(DType::F32).unwrap() - want.to_dtype(DType::F32).unwrap()).unwrap().abs().unwrap();
    assert!(diff.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-2);
    let grads = y.to_dtype(DType::F32).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
    p.full.finish_backward(&grads).unwrap();
    let arena = p.full.store().layer(0).unwrap().read().unwrap();
    assert!(arena.grads().iter().any(|&g| g != 0.0 && g.is_finite()));
}

#[test]
fn a_non_finite_gradient_skips_the_step() {
    let mut p = pair(17);
    let before = p.full.store().layer(0).unwrap().read().unwrap().params().to_vec();
    let y = p.full.ffn(0, &p.x).unwrap().unwrap();
    let grads = (y.sum_all().unwrap() * f64::NAN).unwrap().backward().unwrap();
    p.full.finish_backward(&grads).unwrap();
    assert_eq!(p.full.step().unwrap().status, StepStatus::SkippedNonFinite);
    assert_eq!(p.full.skipped_steps(), 1);
    assert_eq!(p.full.store().layer(0).unwrap().read().unwrap().params(), &before[..]);
}

#[test]
fn forward_twice_without_backward_is_a_sequence_error() {
    let p = pair(19);
    p.full.ffn(0, &p.x).unwrap();
    let err = p.full.ffn(0, &p.x).unwrap_err().to_string();
    assert!(err.contains("finish_backward"), "{err}");
}
