//! End to end: SmolLM2-135M training steps with MEFT adapters on the CPU under a simulated device
//! budget, the ledger printed.
//!
//! Uses the real SmolLM2-135M-Instruct GGUF when it is in the asset cache; otherwise (assets
//! offline) random weights of the same shapes, and says so — memory and traffic do not depend on
//! the weight values.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use meft_core::optim::AdamWConfig;
use meft_core::sparse::Evaluation;
use meft_models::gguf::GgufFile;
use meft_models::{Llama, ModelConfig, WeightMap};
use meft_offload::{Category, DeviceKind, HostOptimizer, MeftAdapter, MeftConfig, OffloadDevice, OffloadPlan, StepStatus};
use meft_router::Scoring;

/// Random weights with SmolLM2's names and shapes.
fn random_weights(c: &ModelConfig) -> WeightMap {
    let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let kv = c.num_key_value_heads * c.head_dim;
    let mut t = HashMap::new();
    let mut put = |name: String, shape: &[usize], std: f32| {
        let w = if shape.len() == 1 { Tensor::ones(shape, DType::F32, &Device::Cpu) } else { Tensor::randn(0f32, std, shape, &Device::Cpu) };
        t.insert(name, w.expect("random tensor"));
    };
    put("model.embed_tokens.weight".into(), &[v, d], 0.02);
    put("model.norm.weight".into(), &[d], 0.0);
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (n, shape) in [
            ("self_attn.q_proj", [d, d]),
            ("self_attn.k_proj", [kv, d]),
            ("self_attn.v_proj", [kv, d]),
            ("self_attn.o_proj", [d, d]),
            ("mlp.gate_proj", [f, d]),
            ("mlp.up_proj", [f, d]),
            ("mlp.down_proj", [d, f]),
        ] {
            put(format!("{p}.{n}.weight"), &shape, 0.02);
        }
        put(format!("{p}.input_layernorm.weight"), &[d], 0.0);
        put(format!("{p}.post_attention_layernorm.weight"), &[d], 0.0);
    }
    WeightMap::new(t, "random SmolLM2-135M shapes")
}

fn load() -> (Llama, &'static str) {
    match meft_assets::require_model("smollm2-135m-instruct") {
        Some(path) => {
            let gguf = GgufFile::open(&path).expect("open GGUF");
            let cfg = gguf.config().expect("config");
            let weights = gguf.weights(DType::F32).expect("dequantise");
            (Llama::load(&cfg, weights, DType::F32, &Device::Cpu).expect("model"), "real SmolLM2-135M-Instruct GGUF")
        }
        None => {
            let cfg = ModelConfig::smollm2_135m_shapes();
            let w = random_weights(&cfg);
            (Llama::load(&cfg, w, DType::F32, &Device::Cpu).expect("model"), "random weights, SmolLM2 shapes (asset offline)")
        }
    }
}

#[test]
fn smollm2_trains_with_meft_under_a_simulated_budget() {
    let (model, what) = load();
    println!("model: {what}");
    let c = &model.config;
    let weight_bytes: u64 = 4 * (c.vocab_size * c.hidden_size) as u64
        + model.layers.len() as u64
            * 4
            * (2 * c.hidden_size * c.hidden_size + 2 * c.hidden_size * c.num_key_value_heads * c.head_dim + 3 * c.hidden_size * c.intermediate_size)
                as u64;
    let (batch, seq) = (1, 16);
    let cfg = MeftConfig {
        hidden: c.hidden_size,
        neurons: 1024,
        experts: 32,
        top_k: 16,
        top_p: 4,
        scoring: Scoring::Gated,
        evaluation: Evaluation::PerToken,
        host_optimizer: HostOptimizer::Lazy,
        adamw: AdamWConfig { lr: 1e-3, ..AdamWConfig::default() },
    };
    let layers: Vec<usize> = (20..30).collect();
    let plan = OffloadPlan::fit(&cfg, &layers, batch * seq, 4 << 20, 2).expect("plan");
    // Budget: frozen weights + 64 MiB for activations, working sets and gates.
    let budget = weight_bytes + (64 << 20);
    let device = Arc::new(OffloadDevice::new(DeviceKind::Simulated { budget_bytes: budget }).expect("device"));
    device.set_usage("model.weights", Category::FrozenWeights, weight_bytes).expect("weights fit");
    let mut meft = MeftAdapter::init(cfg, plan.clone(), device.clone(), 0).expect("adapter");
    println!("plan: {}", serde_json::to_string(&plan).expect("plan json"));

    let tokens: Vec<u32> = (0..seq as u32).map(|i| 100 + 37 * i).collect();
    let tokens = Tensor::from_vec(tokens, (batch, seq), &Device::Cpu).expect("tokens");
    let mut losses = Vec::new();
    for _ in 0..3 {
        let logits = model.forward(&tokens, &meft).expect("forward");
        let loss = model.next_token_loss(&logits, &tokens, None).expect("loss");
        // The frozen model's activations are charged as one consumer (logits dominate at this size).
        device.set_usage("model.activations", Category::Activations, 4 * logits.elem_count() as u64 * 3).expect("fits");
        meft.finish_backward(&loss.backward().expect("backward")).expect("finish_backward");
        assert_eq!(meft.step().expect("step"), StepStatus::Applied);
        losses.push(loss.to_scalar::<f32>().expect("scalar"));
    }
    println!("losses: {losses:?}");
    let last = meft.ledger().steps.last().expect("a step");
    println!("{}", last.table());
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(last.device.peak_total <= budget);
    assert!(last.device.at_peak.working_sets > 0 && last.device.at_peak.frozen_weights == weight_bytes);
    for l in &last.layers {
        assert_eq!(l.h2d_bytes, (l.union_rows * 2 * c.hidden_size * 4) as u64);
        assert!(l.union_rows > 0 && l.d2h_bytes == l.h2d_bytes);
    }
    // Values start at zero, so the first step moves only values; the loss must respond by step 3.
    assert_ne!(losses[0], losses[2], "MEFT adapters must change the model's loss");
    assert!(last.full_offload_bytes() > last.moved_bytes());
}
