//! MEFT against dense references: the degenerate configuration equals the dense Parallel Adapter,
//! and per-token gated routing with P = N equals a dense masked adapter.

mod common;

use std::collections::BTreeMap;

use candle_core::{D, Device, Tensor, Var};
use common::*;
use meft_core::adapters::{Activation, DeviceAdamW, ParallelAdapter, ParallelAdapterLayer};
use meft_core::sparse::Evaluation;
use meft_offload::{MeftConfig, PrefetchMode};
use meft_router::Scoring;

/// One expert, K = M, C = M, plain scores, union mode, dense AdamW == dense ReLU Parallel Adapter:
/// same loss at every one of 5 steps and the same parameters after them (≤ 1e-5 relative).
#[test]
fn degenerate_meft_equals_dense_parallel_adapter() {
    let (d, m, layers) = (8, 16, [0usize, 2]);
    let mut rng = Rng(7);
    let toy = Toy::new(3, d, 0.3, &mut rng);
    let params = random_params(&layers, m, d, &mut rng);
    let cfg = MeftConfig { scoring: Scoring::Plain, evaluation: Evaluation::Union, ..config(d, m, 1, m, 1) };
    let mut meft = adapter(cfg.clone(), plan(&layers, m, 0, PrefetchMode::Worker), &params, cpu());
    let dense_layers: BTreeMap<usize, ParallelAdapterLayer> = params
        .iter()
        .map(|(l, k, v)| {
            let keys = Var::from_slice(k, (m, d), &Device::Cpu).unwrap();
            let values = Var::from_slice(v, (m, d), &Device::Cpu).unwrap();
            (*l, ParallelAdapterLayer { keys, values })
        })
        .collect();
    let dense = ParallelAdapter::from_layers(Activation::Relu, dense_layers);
    let vars: Vec<Var> = layers
        .iter()
        .flat_map(|l| {
            let p = dense.layer(*l).unwrap();
            [p.keys.clone(), p.values.clone()]
        })
        .collect();
    let mut opt = DeviceAdamW::new(cfg.adamw, vars).unwrap();
    for step in 0..5 {
        let x = tensor(&mut rng, (2, 3, d), 1.0);
        let target = tensor(&mut rng, (2, 3, d), 1.0);
        let meft_loss = micro_batch(&toy, &meft, &x, &target);
        meft.step().unwrap();
        let loss = toy.loss(&x, &target, &dense).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        let dense_loss = loss.to_scalar::<f32>().unwrap();
        assert!((meft_loss - dense_loss).abs() <= 1e-5 * dense_loss.abs(), "step {step}: {meft_loss} vs {dense_loss}");
    }
    for &l in &layers {
        let (k, v) = host_params(&meft, l);
        let p = dense.layer(l).unwrap();
        let dk = p.keys.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let dv = p.values.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_close(&k, &dk, 1e-5, "keys");
        assert_close(&v, &dv, 1e-5, "values");
    }
}

/// Per-token gated evaluation with P = N against a dense masked reference whose mask is computed
/// independently (per-token top-K of the gated scores over all M neurons, ties to the lower id):
/// same output, same row gradients, and the same gates after one AdamW step.
#[test]
fn per_token_gated_with_all_experts_equals_dense_masked_reference() {
    let (d, m, n, k, t) = (6, 24, 4, 5, 7);
    let mut rng = Rng(11);
    let params = random_params(&[0], m, d, &mut rng);
    let cfg = config(d, m, n, k, n);
    let mut meft = adapter(cfg.clone(), plan(&[0], m, 0, PrefetchMode::Worker), &params, cpu());
    let gates0 = meft.gates(0).unwrap().as_tensor().copy().unwrap();
    let x = tensor(&mut rng, (1, t, d), 1.0);
    let w = tensor(&mut rng, (1, t, d), 1.0);

    let y = meft_core::AdapterHook::ffn(&meft, 0, &x).unwrap().unwrap();
    let loss = (&y * &w).unwrap().sum_all().unwrap();
    meft.finish_backward(&loss.backward().unwrap()).unwrap();

    // Dense masked reference over all M neurons.
    let (keys, values) = (&params[0].1, &params[0].2);
    let kv = Var::from_slice(keys, (m, d), &Device::Cpu).unwrap();
    let vv = Var::from_slice(values, (m, d), &Device::Cpu).unwrap();
    let gv = Var::from_tensor(&gates0).unwrap();
    let x2 = x.reshape((t, d)).unwrap();
    let expert: Vec<u32> = (0..m as u32).map(|i| i / (m / n) as u32).collect();
    let expert = Tensor::from_vec(expert, m, &Device::Cpu).unwrap();
    let g = x2.matmul(&gv.as_tensor().t().unwrap()).unwrap().index_select(&expert, D::Minus1).unwrap();
    let s = (x2.matmul(&kv.as_tensor().t().unwrap()).unwrap() * g).unwrap();
    let mask = top_k_mask(&s.to_vec2::<f32>().unwrap(), k);
    let mask = Tensor::from_vec(mask, (t, m), &Device::Cpu).unwrap();
    let y_ref = (s.relu().unwrap() * mask).unwrap().matmul(vv.as_tensor()).unwrap();
    let loss_ref = (&y_ref * w.reshape((t, d)).unwrap()).unwrap().sum_all().unwrap();
    let grads = loss_ref.backward().unwrap();

    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_close(&flat(&y), &flat(&y_ref), 1e-5, "output");
    let arena = meft.store().layer(0).unwrap().read().unwrap();
    let (gk, gvals) = split(arena.grads(), d);
    drop(arena);
    assert_scaled_close(&gk, &flat(grads.get(kv.as_tensor()).unwrap()), 1e-5, "key grads");
    assert_scaled_close(&gvals, &flat(grads.get(vv.as_tensor()).unwrap()), 1e-5, "value grads");

    meft.step().unwrap();
    let mut opt = DeviceAdamW::new(cfg.adamw, [gv.clone()]).unwrap();
    opt.step(&grads).unwrap();
    assert_close(&flat(meft.gates(0).unwrap().as_tensor()), &flat(gv.as_tensor()), 1e-5, "gates after a step");
}

/// Per-token top-K mask of a `T×M` score matrix (ties → lower id).
fn top_k_mask(scores: &[Vec<f32>], k: usize) -> Vec<f32> {
    scores
        .iter()
        .flat_map(|row| {
            let mut ids: Vec<usize> = (0..row.len()).collect();
            ids.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let mut mask = vec![0f32; row.len()];
            ids[..k].iter().for_each(|&i| mask[i] = 1.0);
            mask
        })
        .collect()
}

/// Bundled `[k|v]` rows → (keys, values).
pub fn split(bundled: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut k, mut v) = (Vec::new(), Vec::new());
    for row in bundled.chunks_exact(2 * d) {
        k.extend_from_slice(&row[..d]);
        v.extend_from_slice(&row[d..]);
    }
    (k, v)
}
