//! Tokens/s of the inference forward and of forward + backward (frozen base, gradient to the
//! input activations only) for a SmolLM2-135M-shaped model at 1 × 256 on the CPU, and the same
//! two numbers from a PyTorch baseline (`benches/torch_llama.py`) when `python3` can import torch.
//!
//! Weights are random with the exact SmolLM2-135M shapes: timing does not depend on their values.
//! Run with `RAYON_NUM_THREADS=2 cargo bench -p meft-models` to match the 2-thread baseline.

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meft_core::NoAdapters;
use meft_models::{KvCache, Llama, ModelConfig, WeightMap};

const SEQ: usize = 256;

fn random_model(cfg: &ModelConfig) -> Llama {
    let dev = Device::Cpu;
    let (d, f, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let mat = |r: usize, c: usize| Tensor::randn(0f32, 1.0 / (c as f32).sqrt(), (r, c), &dev).unwrap();
    let mut w = HashMap::new();
    w.insert("model.embed_tokens.weight".to_string(), mat(cfg.vocab_size, d));
    w.insert("model.norm.weight".to_string(), Tensor::ones(d, DType::F32, &dev).unwrap());
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let kv = cfg.num_key_value_heads * hd;
        for (name, t) in [
            ("self_attn.q_proj", mat(cfg.num_attention_heads * hd, d)),
            ("self_attn.k_proj", mat(kv, d)),
            ("self_attn.v_proj", mat(kv, d)),
            ("self_attn.o_proj", mat(d, cfg.num_attention_heads * hd)),
            ("mlp.gate_proj", mat(f, d)),
            ("mlp.up_proj", mat(f, d)),
            ("mlp.down_proj", mat(d, f)),
            ("input_layernorm", Tensor::ones(d, DType::F32, &dev).unwrap()),
            ("post_attention_layernorm", Tensor::ones(d, DType::F32, &dev).unwrap()),
        ] {
            w.insert(format!("{p}.{name}.weight"), t);
        }
    }
    Llama::load(cfg, WeightMap::new(w, "random"), DType::F32, &dev).unwrap()
}

fn tokens(cfg: &ModelConfig) -> Tensor {
    let ids: Vec<u32> = (0..SEQ as u32).map(|i| (i * 7919 + 13) % cfg.vocab_size as u32).collect();
    Tensor::from_vec(ids, (1, SEQ), &Device::Cpu).unwrap()
}

fn infer(model: &Llama, toks: &Tensor) {
    let mut cache = KvCache::new(model.layers.len());
    model.forward_cached(toks, &mut cache, &NoAdapters).unwrap();
}

fn forward_backward(model: &Llama, toks: &Tensor) {
    let h = Var::from_tensor(&model.embed(toks).unwrap()).unwrap();
    let last = model.hidden_embeds(h.as_tensor(), &NoAdapters).unwrap();
    let grads = model.next_token_loss_of_hidden(&last, toks, None).unwrap().backward().unwrap();
    assert!(grads.get(h.as_tensor()).is_some());
}

/// Median tokens/s over a few timed runs (for the ratio against PyTorch).
fn tokens_per_s(f: impl Fn()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    SEQ as f64 / times[times.len() / 2]
}

fn torch_baseline() -> Result<serde_json::Value, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/torch_llama.py");
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "2".into());
    let out = Command::new("python3")
        .args([script, "--seq", &SEQ.to_string(), "--threads", &threads])
        .output()
        .map_err(|e| format!("python3 not runnable ({e})"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("torch baseline failed (is torch importable?): {}", err.lines().last().unwrap_or("")));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("unreadable baseline output: {e}"))
}

fn compare_with_torch(model: &Llama, toks: &Tensor) {
    let ours_inf = tokens_per_s(|| infer(model, toks));
    let ours_fb = tokens_per_s(|| forward_backward(model, toks));
    println!("meft-models: inference forward {ours_inf:.0} tok/s, forward+backward {ours_fb:.0} tok/s (1 x {SEQ})");
    match torch_baseline() {
        Ok(v) => {
            let (t_inf, t_fb) = (v["infer_tok_s"].as_f64().unwrap_or(f64::NAN), v["fwd_bwd_tok_s"].as_f64().unwrap_or(f64::NAN));
            println!("pytorch:     inference forward {t_inf:.0} tok/s, forward+backward {t_fb:.0} tok/s");
            println!("ratio (ours / pytorch): inference {:.2}x, forward+backward {:.2}x", ours_inf / t_inf, ours_fb / t_fb);
        }
        Err(why) => println!("pytorch comparison skipped: {why}"),
    }
}

fn bench(c: &mut Criterion) {
    let cfg = ModelConfig::smollm2_135m_shapes();
    let model = random_model(&cfg);
    let toks = tokens(&cfg);
    let mut group = c.benchmark_group("smollm2_135m_seq256");
    group.sample_size(10).throughput(Throughput::Elements(SEQ as u64));
    group.bench_function("inference_forward", |b| b.iter(|| infer(&model, &toks)));
    group.bench_function("forward_backward_frozen", |b| b.iter(|| forward_backward(&model, &toks)));
    group.finish();
    compare_with_torch(&model, &toks);
}

criterion_group!(benches, bench);
criterion_main!(benches);
