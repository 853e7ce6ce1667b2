//! Dense Parallel Adapter, LoRA and the device AdamW.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use meft_core::adapters::{
    Activation, DeviceAdamW, LoraAdapter, LoraConfig, ParallelAdapter, ParallelAdapterLayer, Phase, Trainable,
};
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
        let layer = ParallelAdapterLayer {
            keys: Var::from_slice(&keys, (m, d), &dev).unwrap(),
            values: Var::from_slice(&values, (m, d), &dev).unwrap(),
        };
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
