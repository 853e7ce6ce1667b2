//! Dense Parallel Adapter, LoRA and the device AdamW.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use meft_core::adapters::{Activation, DeviceAdamW, LoraAdapter, LoraConfig, ParallelAdapter, ParallelAdapterLayer, Phase, Trainable};
use meft_core::optim::{AdamWBuffers, AdamWConfig, adamw_dense_slow};
use meft_core::{AdapterHook, LinearSite};

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * scale).collect()
}

#[test]
fn parallel_adapter_computes_act_of_keys_times_values() {
    let dev = Device::Cpu;
    let (m, d) = (3, 4);
    let keys = ramp(m * d, 0.1);
    let values = ramp(m * d, -0.2);
    let x = ramp(2 * d, 0.3);
    for act in [Activation::Relu, Activation::Silu] {
        let layer =
            ParallelAdapterLayer { keys: Var::from_slice(&keys, (m, d), &dev).unwrap(), values: Var::from_slice(&values, (m, d), &dev).unwrap() };
        let pa = ParallelAdapter::from_layers(act, BTreeMap::from([(1, layer)]));
        let xt = Tensor::from_slice(&x, (1, 2, d), &dev).unwrap();
        assert!(pa.ffn(0, &xt).unwrap().is_none());
        let y = pa.ffn(1, &xt).unwrap().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for t in 0..2 {
            for j in 0..d {
                let mut want = 0f32;
                for i in 0..m {
                    let s: f32 = (0..d).map(|c| x[t * d + c] * keys[i * d + c]).sum();
                    let a = match act {
                        Activation::Relu => s.max(0.0),
                        Activation::Silu => s / (1.0 + (-s).exp()),
                    };
                    want += a * values[i * d + j];
                }
                assert!((y[t * d + j] - want).abs() < 1e-5, "{act:?} t{t} j{j}: {} vs {want}", y[t * d + j]);
            }
        }
    }
}

#[test]
fn lora_starts_at_zero_and_trains_both_factors() {
    let dev = Device::Cpu;
    let cfg = LoraConfig::paper(2, vec![0]);
    let lora = LoraAdapter::new(cfg, &|_| (4, 6), DType::F32, &dev).unwrap();
    assert_eq!(lora.vars().len(), 4);
    let x = Tensor::from_slice(&ramp(8, 0.5), (1, 2, 4), &dev).unwrap();
    lora.set_phase(Phase::Eval);
    let y = lora.linear(0, LinearSite::Query, &x).unwrap().unwrap();
    assert_eq!(y.dims(), &[1, 2, 6]);
    assert_eq!(y.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    assert!(lora.linear(0, LinearSite::Up, &x).unwrap().is_none());
    let mut opt = DeviceAdamW::new(AdamWConfig { lr: 1e-2, ..AdamWConfig::default() }, lora.vars().into_iter().map(|v| v.1)).unwrap();
    for _ in 0..2 {
        let y = lora.linear(0, LinearSite::Value, &x).unwrap().unwrap();
        let loss = (y - 1.0).unwrap().sqr().unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    let y = lora.linear(0, LinearSite::Value, &x).unwrap().unwrap();
    assert!(y.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    assert!(LoraAdapter::new(LoraConfig::paper(0, vec![0]), &|_| (4, 6), DType::F32, &dev).is_err());
}

#[test]
fn device_adamw_matches_the_host_reference() {
    let dev = Device::Cpu;
    let cfg = AdamWConfig { lr: 1e-2, weight_decay: 0.1, ..AdamWConfig::default() };
    let init = ramp(12, 0.3);
    let var = Var::from_slice(&init, 12, &dev).unwrap();
    let mut opt = DeviceAdamW::new(cfg, [var.clone()]).unwrap();
    let (mut p, mut m, mut v) = (init.clone(), vec![0f32; 12], vec![0f32; 12]);
    for step in 1..=5u64 {
        let g: Vec<f32> = ramp(12, 0.1 * step as f32).iter().map(|x| x + 0.05).collect();
        let target = Tensor::from_slice(&g, 12, &dev).unwrap();
        let loss = (var.as_tensor() * target).unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        let bufs = AdamWBuffers { params: &mut p, grads: &g, m: &mut m, v: &mut v };
        let _ = adamw_dense_slow(&cfg, step, bufs).unwrap();
    }
    let got = var.as_tensor().to_vec1::<f32>().unwrap();
    for (a, b) in got.iter().zip(&p) {
        // Both are f32 torch-AdamW; candle divides where the reference multiplies: ≤ a few ulp per step.
        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

/// f32 values of a tensor as f64.
fn f64s(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect()
}

#[test]
fn adapter_h_matches_the_loop_reference_and_starts_at_zero() {
    use meft_core::adapters::{HoulsbyAdapter, HoulsbyLayer, houlsby_forward_slow};
    let dev = Device::Cpu;
    let (d, r, t) = (5, 3, 4);
    let var = |v: Vec<f32>, shape: &[usize]| Var::from_vec(v, shape, &dev).unwrap();
    let layer = HoulsbyLayer {
        down: var(ramp(r * d, 0.2), &[r, d]),
        down_bias: var(ramp(r, 0.1), &[r]),
        up: var(ramp(d * r, -0.3), &[d, r]),
        up_bias: var(ramp(d, 0.05), &[d]),
    };
    let a = HoulsbyAdapter::from_layers(BTreeMap::from([(2, layer.clone())]));
    assert!(a.adapts_ffn_output(2) && !a.adapts_ffn_output(1) && !a.adapts_projections(2));
    let y = Tensor::from_slice(&ramp(t * d, 0.4), (1, t, d), &dev).unwrap();
    let got = f64s(&a.ffn_output(2, &y).unwrap().unwrap());
    let want = houlsby_forward_slow(
        &f64s(&y),
        &f64s(layer.down.as_tensor()),
        &f64s(layer.down_bias.as_tensor()),
        &f64s(layer.up.as_tensor()),
        &f64s(layer.up_bias.as_tensor()),
        d,
    );
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{g} vs {w}");
    }
    assert!(a.ffn_output(1, &y).unwrap().is_none());
    let fresh = HoulsbyAdapter::new(&[0], r, d, DType::F32, &dev).unwrap();
    assert_eq!(fresh.vars().len(), 4);
    assert_eq!(fresh.param_count(), HoulsbyAdapter::params_per_layer(r, d));
    let zero = fresh.ffn_output(0, &y).unwrap().unwrap();
    assert_eq!(zero.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    assert!(HoulsbyAdapter::new(&[0], 0, d, DType::F32, &dev).is_err());
}

/// Central differences of the AdapterH term's weighted sum against candle's gradients, for every
/// parameter (f32, step 1e-2 on values of order 1: agreement to 2e-3).
#[test]
fn adapter_h_gradients_match_finite_differences() {
    use meft_core::adapters::{HoulsbyAdapter, HoulsbyLayer};
    let dev = Device::Cpu;
    let (d, r, t) = (4, 2, 3);
    let var = |v: Vec<f32>, shape: &[usize]| Var::from_vec(v, shape, &dev).unwrap();
    let layer = HoulsbyLayer {
        down: var(ramp(r * d, 0.2), &[r, d]),
        down_bias: var(ramp(r, 0.1), &[r]),
        up: var(ramp(d * r, -0.3), &[d, r]),
        up_bias: var(ramp(d, 0.05), &[d]),
    };
    let a = HoulsbyAdapter::from_layers(BTreeMap::from([(0, layer)]));
    let y = Tensor::from_slice(&ramp(t * d, 0.4), (t, d), &dev).unwrap();
    let w = Tensor::from_slice(&ramp(t * d, -0.7), (t, d), &dev).unwrap();
    let loss = |a: &HoulsbyAdapter| (a.ffn_output(0, &y).unwrap().unwrap() * &w).unwrap().sum_all().unwrap();
    let grads = loss(&a).backward().unwrap();
    for (name, v) in a.vars() {
        let g = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let base = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for i in 0..base.len() {
            let at = |delta: f32| {
                let mut p = base.clone();
                p[i] += delta;
                v.set(&Tensor::from_vec(p, v.shape(), &dev).unwrap()).unwrap();
                loss(&a).to_scalar::<f32>().unwrap()
            };
            let numeric = (at(1e-2) - at(-1e-2)) / 2e-2;
            v.set(&Tensor::from_vec(base.clone(), v.shape(), &dev).unwrap()).unwrap();
            assert!((numeric - g[i]).abs() < 2e-3, "{name}[{i}]: numeric {numeric} vs autograd {}", g[i]);
        }
    }
}

#[test]
fn full_delta_adds_x_times_delta_transposed_and_starts_at_zero() {
    use meft_core::adapters::FullDelta;
    let dev = Device::Cpu;
    let dims = |s: LinearSite| if s == LinearSite::Up { (4, 6) } else { (4, 4) };
    let full = FullDelta::new(&[1], &[LinearSite::Query, LinearSite::Up], &dims, DType::F32, &dev).unwrap();
    assert!(full.adapts_projections(1) && !full.adapts_projections(0));
    assert_eq!(full.param_count(), 16 + 24);
    let x = Tensor::from_slice(&ramp(8, 0.5), (1, 2, 4), &dev).unwrap();
    let zero = full.linear(1, LinearSite::Up, &x).unwrap().unwrap();
    assert_eq!(zero.dims(), &[1, 2, 6]);
    assert_eq!(zero.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    assert!(full.linear(1, LinearSite::Down, &x).unwrap().is_none());
    let (_, dw) = full.vars().into_iter().find(|(n, _)| n == "layers.1.up.delta").unwrap();
    let delta = ramp(24, 0.1);
    dw.set(&Tensor::from_slice(&delta, (6, 4), &dev).unwrap()).unwrap();
    let y = full.linear(1, LinearSite::Up, &x).unwrap().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let xs = ramp(8, 0.5);
    for t in 0..2 {
        for o in 0..6 {
            let want: f32 = (0..4).map(|i| xs[t * 4 + i] * delta[o * 4 + i]).sum();
            assert!((y[t * 6 + o] - want).abs() < 1e-5);
        }
    }
    assert!(FullDelta::new(&[0], &[], &dims, DType::F32, &dev).is_err());
}

/// The bf16 update products (forward, input gradient, update gradient) agree with the f32 path
/// to bf16 rounding (relative 2^-7 of the magnitudes involved).
#[test]
fn full_delta_bf16_products_match_the_f32_path() {
    use meft_core::adapters::FullDelta;
    use meft_core::bf16::FrozenPrecision;
    let dev = Device::Cpu;
    let dims = |_: LinearSite| (40, 24);
    let run = |precision: FrozenPrecision| {
        let full = FullDelta::new(&[0], &[LinearSite::Up], &dims, DType::F32, &dev).unwrap().with_precision(precision);
        let (_, dw) = full.vars().into_iter().next().unwrap();
        let delta: Vec<f32> = (0..24 * 40).map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.1).collect();
        dw.set(&Tensor::from_slice(&delta, (24, 40), &dev).unwrap()).unwrap();
        let xs: Vec<f32> = (0..3 * 5 * 40).map(|i| (i * 53 % 97) as f32 / 48.0 - 1.0).collect();
        let x = Var::from_slice(&xs, (3, 5, 40), &dev).unwrap();
        let y = full.linear(0, LinearSite::Up, x.as_tensor()).unwrap().unwrap();
        let weights = Tensor::from_vec((0..3 * 5 * 24).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<f32>>(), (3, 5, 24), &dev).unwrap();
        let grads = (&y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        [y, grads.get(x.as_tensor()).unwrap().clone(), grads.get(dw.as_tensor()).unwrap().clone()].map(|t| f64s(&t))
    };
    let (f32s, bf16s) = (run(FrozenPrecision::F32), run(FrozenPrecision::Bf16));
    assert_ne!(f32s[0], bf16s[0], "the bf16 path rounds, so it cannot equal the f32 path bit for bit");
    for (name, (want, got)) in ["y", "dx", "d delta"].iter().zip(f32s.iter().zip(&bf16s)) {
        assert_eq!(want.len(), got.len());
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (i, (w, g)) in want.iter().zip(got).enumerate() {
            assert!((w - g).abs() <= 2e-2 * scale, "{name}[{i}]: f32 {w} vs bf16 {g} (scale {scale})");
        }
    }
}

/// In evaluation the updates are frozen: the products equal the training ones (both precisions)
/// and no gradient reaches `ΔW`, so a decoded token's graph holds no copy of it.
#[test]
fn full_delta_eval_phase_matches_train_outputs_without_gradients_to_the_delta() {
    use meft_core::adapters::{FullDelta, Phase};
    use meft_core::bf16::FrozenPrecision;
    let dev = Device::Cpu;
    let dims = |_: LinearSite| (40, 24);
    for precision in [FrozenPrecision::F32, FrozenPrecision::Bf16] {
        let full = FullDelta::new(&[0], &[LinearSite::Up], &dims, DType::F32, &dev).unwrap().with_precision(precision);
        let (_, dw) = full.vars().into_iter().next().unwrap();
        let delta: Vec<f32> = (0..24 * 40).map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.1).collect();
        dw.set(&Tensor::from_slice(&delta, (24, 40), &dev).unwrap()).unwrap();
        let x = Tensor::from_vec((0..2 * 40).map(|i| (i * 53 % 97) as f32 / 48.0 - 1.0).collect::<Vec<f32>>(), (2, 40), &dev).unwrap();
        let train = full.linear(0, LinearSite::Up, &x).unwrap().unwrap();
        full.set_phase(Phase::Eval);
        let eval = full.linear(0, LinearSite::Up, &x).unwrap().unwrap();
        assert_eq!(f64s(&train), f64s(&eval), "{precision:?}");
        let grads = eval.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(dw.as_tensor()).is_none(), "{precision:?}: evaluation must not track ΔW");
        dw.set(&Tensor::zeros((24, 40), DType::F32, &dev).unwrap()).unwrap();
        full.set_phase(Phase::Train);
        let grads = full.linear(0, LinearSite::Up, &x).unwrap().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(dw.as_tensor()).is_some(), "{precision:?}: training tracks ΔW again");
    }
}
