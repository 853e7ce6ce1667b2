//! Model behaviour beyond the golden values: KV-cache inference against the full forward, fused
//! inference against the reference training forward, Mistral ≡ LLaMA when the window covers the
//! sequence, adapter gradients through every layer, whole-block layers against per-op layers,
//! sharded loading and scoring. (Decoding rules are meft-eval's and tested there.)
//!
//! Tolerance for equalities between our own paths: `|a − b| ≤ 1e-5·max(|b|, 1)` — both run in f32
//! and differ only in summation order.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use common::*;
use meft_core::{AdapterHook, LinearSite, NoAdapters};
use meft_models::{Architecture, KvCache, OpPath, hf};

#[test]
fn kv_cache_inference_equals_full_forward() {
    for case in CASES {
        let model = model(case, OpPath::Reference);
        let toks = tokens(case);
        let full = model.forward(&toks, &NoAdapters).unwrap();
        let mut cache = KvCache::new(model.layers.len());
        let mut chunks = Vec::new();
        for (start, len) in [(0, 5), (5, 1), (6, 6)] {
            let part = toks.narrow(1, start, len).unwrap();
            chunks.push(model.forward_cached(&part, &mut cache, &NoAdapters).unwrap());
        }
        assert_eq!(cache.len(), 12);
        let cached = Tensor::cat(&chunks, 1).unwrap();
        assert_rel_close(&format!("{case} cached vs full"), &cached, &full, 1e-5);
    }
}

#[test]
fn last_position_head_equals_last_row_of_full_logits() {
    for case in CASES {
        let model = model(case, OpPath::Fused);
        let toks = tokens(case);
        let (mut full_cache, mut last_cache) = (KvCache::new(model.layers.len()), KvCache::new(model.layers.len()));
        for (start, len) in [(0, 5), (5, 1)] {
            let part = toks.narrow(1, start, len).unwrap();
            let full = model.forward_cached(&part, &mut full_cache, &NoAdapters).unwrap();
            let last = model.forward_cached_last(&part, &mut last_cache, &NoAdapters).unwrap();
            let want = full.narrow(1, len - 1, 1).unwrap().squeeze(1).unwrap();
            assert_rel_close(&format!("{case} last-position head"), &last, &want, 1e-5);
        }
        assert_eq!(last_cache.len(), full_cache.len());
    }
}

#[test]
fn fused_inference_equals_reference_training_forward() {
    for case in CASES {
        let toks = tokens(case);
        let reference = model(case, OpPath::Reference).forward(&toks, &NoAdapters).unwrap();
        let fused = model(case, OpPath::Fused);
        let mut cache = KvCache::new(fused.layers.len());
        let inferred = fused.forward_cached(&toks, &mut cache, &NoAdapters).unwrap();
        assert_rel_close(&format!("{case} fused inference"), &inferred, &reference, 1e-5);
        let trained = fused.forward(&toks, &NoAdapters).unwrap();
        assert_rel_close(&format!("{case} fused training"), &trained, &reference, 1e-5);
    }
}

#[test]
fn mistral_with_covering_window_equals_llama() {
    let mut as_mistral = config("mistral_tiny");
    as_mistral.sliding_window = Some(12);
    let mut as_llama = as_mistral.clone();
    as_llama.architecture = Architecture::Llama;
    as_llama.sliding_window = None;
    let toks = tokens("mistral_tiny");
    let a = model_from(&as_mistral, raw_weights("mistral_tiny"), OpPath::Fused).forward(&toks, &NoAdapters).unwrap();
    let b = model_from(&as_llama, raw_weights("mistral_tiny"), OpPath::Fused).forward(&toks, &NoAdapters).unwrap();
    assert_rel_close("window 12 vs llama", &a, &b, 1e-6);
    let windowed = model("mistral_tiny", OpPath::Fused).forward(&toks, &NoAdapters).unwrap();
    let diff = (windowed - &b).unwrap().abs().unwrap().max_all().unwrap();
    assert!(scalar(&diff) > 1e-3, "the window 5 < 12 must change the logits");
}

/// A dense parallel adapter `relu(x·A)·B` beside every FFN and a LoRA-like term on every
/// projection, all trainable.
struct TestAdapters {
    ffn: Vec<(Var, Var)>,
    linear: HashMap<(usize, LinearSite), Var>,
}

impl AdapterHook for TestAdapters {
    fn ffn(&self, layer: usize, x: &Tensor) -> Result<Option<Tensor>> {
        let (a, b) = &self.ffn[layer];
        Ok(Some(x.broadcast_matmul(a.as_tensor())?.relu()?.broadcast_matmul(b.as_tensor())?))
    }

    fn linear(&self, layer: usize, site: LinearSite, x: &Tensor) -> Result<Option<Tensor>> {
        let w = &self.linear[&(layer, site)];
        let out = w.dim(1)?;
        // A cheap additive term with the right output width: mean over inputs times a vector.
        Ok(Some(x.mean_keepdim(2)?.broadcast_mul(&w.as_tensor().reshape((1, 1, out))?)?))
    }
}

#[test]
fn every_adapter_parameter_gets_a_gradient_through_all_layers() {
    let sites = [LinearSite::Query, LinearSite::Key, LinearSite::Value, LinearSite::Output, LinearSite::Gate, LinearSite::Up, LinearSite::Down];
    for path in [OpPath::Fused, OpPath::Reference] {
        let model = model("llama_tiny", path);
        let cfg = &model.config;
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        let widths = |s: LinearSite| match s {
            LinearSite::Query | LinearSite::Output => d,
            LinearSite::Key | LinearSite::Value => cfg.num_key_value_heads * cfg.head_dim,
            LinearSite::Gate | LinearSite::Up => f,
            LinearSite::Down => d,
        };
        let randn = |shape: &[usize]| Var::from_tensor(&Tensor::randn(0f32, 0.1, shape, &Device::Cpu).unwrap()).unwrap();
        let hook = TestAdapters {
            ffn: (0..cfg.num_hidden_layers).map(|_| (randn(&[d, 8]), randn(&[8, d]))).collect(),
            linear: (0..cfg.num_hidden_layers).flat_map(|l| sites.map(|s| ((l, s), randn(&[1, widths(s)])))).collect(),
        };
        let toks = tokens("llama_tiny");
        let logits = model.forward(&toks, &hook).unwrap();
        let grads = model.next_token_loss(&logits, &toks, None).unwrap().backward().unwrap();
        let params = hook.ffn.iter().flat_map(|(a, b)| [a, b]).chain(hook.linear.values());
        for (i, p) in params.enumerate() {
            let g = grads.get(p.as_tensor()).unwrap_or_else(|| panic!("{path:?}: adapter param {i} has no gradient"));
            let norm = scalar(&g.sqr().unwrap().sum_all().unwrap());
            assert!(norm > 0.0, "{path:?}: adapter param {i} has a zero gradient");
        }
    }
}

/// A dense parallel adapter beside every FFN; `per_op` makes the model take the per-op layer
/// path (the hook then claims it may adapt projections) instead of the whole-block ops.
struct FfnOnly {
    ffn: Vec<(Var, Var)>,
    per_op: bool,
}

impl AdapterHook for FfnOnly {
    fn ffn(&self, layer: usize, x: &Tensor) -> Result<Option<Tensor>> {
        let (a, b) = &self.ffn[layer];
        Ok(Some(x.broadcast_matmul(a.as_tensor())?.relu()?.broadcast_matmul(b.as_tensor())?))
    }

    fn linear(&self, _layer: usize, _site: LinearSite, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    fn adapts_projections(&self, _layer: usize) -> bool {
        self.per_op
    }
}

#[test]
fn whole_block_layers_match_per_op_layers() {
    for case in CASES {
        let model = model(case, OpPath::Fused);
        let cfg = &model.config;
        let d = cfg.hidden_size;
        let randn = |shape: &[usize]| Tensor::randn(0f32, 0.2, shape, &Device::Cpu).unwrap();
        let ffn: Vec<(Tensor, Tensor)> = (0..cfg.num_hidden_layers).map(|_| (randn(&[d, 8]), randn(&[8, d]))).collect();
        let toks = tokens(case);
        let run = |per_op: bool| {
            let vars = |t: &Tensor| Var::from_tensor(t).unwrap();
            let hook = FfnOnly { ffn: ffn.iter().map(|(a, b)| (vars(a), vars(b))).collect(), per_op };
            let h = Var::from_tensor(&model.embed(&toks).unwrap()).unwrap();
            let logits = model.forward_embeds(h.as_tensor(), &hook).unwrap();
            let grads = model.next_token_loss(&logits, &toks, None).unwrap().backward().unwrap();
            let mut g = vec![grads.get(h.as_tensor()).expect("input gradient").clone()];
            g.extend(hook.ffn.iter().flat_map(|(a, b)| [a, b]).map(|v| grads.get(v.as_tensor()).expect("adapter gradient").clone()));
            (logits, g)
        };
        let (blocks, g_blocks) = run(false);
        let (per_op, g_per_op) = run(true);
        assert_rel_close(&format!("{case} whole-block logits"), &blocks, &per_op, 1e-5);
        for (i, (a, b)) in g_blocks.iter().zip(&g_per_op).enumerate() {
            assert_norm_close(&format!("{case} whole-block gradient {i}"), a, b, 1e-4);
        }
    }
}

/// bf16 frozen products: close to the PyTorch f32 logits (bf16 rounding, ~2⁻⁸ relative per
/// input), the same on the whole-block, per-op and KV-cached paths (they share the bf16
/// kernels), with gradients reaching the adapter; switching back to f32 restores f32 exactly.
#[test]
fn bf16_frozen_products_track_f32_and_agree_across_paths() {
    use meft_models::ops::FrozenPrecision;
    for case in CASES {
        let mut model = model(case, OpPath::Fused);
        let f32_logits = model.forward(&tokens(case), &NoAdapters).unwrap();
        model.set_frozen_precision(FrozenPrecision::Bf16).unwrap();
        assert_eq!(model.frozen_precision(), FrozenPrecision::Bf16);
        let cfg = &model.config;
        let d = cfg.hidden_size;
        let randn = |shape: &[usize]| Tensor::randn(0f32, 0.2, shape, &Device::Cpu).unwrap();
        let ffn: Vec<(Tensor, Tensor)> = (0..cfg.num_hidden_layers).map(|_| (randn(&[d, 8]), randn(&[8, d]))).collect();
        let toks = tokens(case);
        let run = |per_op: bool| {
            let vars = |t: &Tensor| Var::from_tensor(t).unwrap();
            let hook = FfnOnly { ffn: ffn.iter().map(|(a, b)| (vars(a), vars(b))).collect(), per_op };
            let logits = model.forward(&toks, &hook).unwrap();
            let grads = model.next_token_loss(&logits, &toks, None).unwrap().backward().unwrap();
            let g: Vec<Tensor> =
                hook.ffn.iter().flat_map(|(a, b)| [a, b]).map(|v| grads.get(v.as_tensor()).expect("adapter gradient").clone()).collect();
            (logits, g)
        };
        let (blocks, g_blocks) = run(false);
        let (per_op, g_per_op) = run(true);
        // The two paths round the same inputs to bf16 except where an input differs by an ulp
        // (a value computed in another order), and then one element moves by up to 2⁻⁸.
        assert_norm_close(&format!("{case} bf16 whole-block logits"), &blocks, &per_op, 1e-4);
        for (i, (a, b)) in g_blocks.iter().zip(&g_per_op).enumerate() {
            assert_norm_close(&format!("{case} bf16 whole-block gradient {i}"), a, b, 2e-3);
        }
        let plain = model.forward(&toks, &NoAdapters).unwrap();
        assert_norm_close(&format!("{case} bf16 vs PyTorch f32 logits"), &plain, &expected(case)["logits"], 3e-2);
        let mut cache = KvCache::new(model.layers.len());
        let cached = model.forward_cached(&toks, &mut cache, &NoAdapters).unwrap();
        assert_norm_close(&format!("{case} bf16 cached"), &cached, &plain, 1e-4);
        let diff = scalar(&(&plain - &f32_logits).unwrap().abs().unwrap().max_all().unwrap());
        assert!(diff > 0.0, "{case}: bf16 logits equal f32 bit for bit: the bf16 path did not run");
        model.set_frozen_precision(FrozenPrecision::F32).unwrap();
        let back = model.forward(&toks, &NoAdapters).unwrap();
        assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), f32_logits.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
}

/// Full fine-tuning as a zero update `ΔW` on a frozen projection gets exactly the gradient a
/// trainable weight gets (so AdamW on `ΔW` is AdamW on `W`).
#[test]
fn full_delta_gradient_equals_trainable_weight_gradient() {
    use meft_core::adapters::{FullDelta, Trainable};
    for case in CASES {
        let frozen = model(case, OpPath::Fused);
        let cfg = frozen.config.clone();
        let toks = tokens(case);
        let (d, q) = (cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim);
        let dims = |s: LinearSite| match s {
            LinearSite::Query => (d, q),
            LinearSite::Down => (cfg.intermediate_size, d),
            _ => unreachable!("only q and down are adapted here"),
        };
        let delta = FullDelta::new(&[1], &[LinearSite::Query, LinearSite::Down], &dims, DType::F32, &Device::Cpu).unwrap();
        let loss = frozen.next_token_loss(&frozen.forward(&toks, &delta).unwrap(), &toks, None).unwrap();
        let g_delta = loss.backward().unwrap();
        let mut trainable = model(case, OpPath::Fused);
        let wq = Var::from_tensor(&trainable.layers[1].self_attn.q_proj).unwrap();
        let wd = Var::from_tensor(&trainable.layers[1].mlp.down_proj).unwrap();
        trainable.layers[1].self_attn.q_proj = wq.as_tensor().clone();
        trainable.layers[1].mlp.down_proj = wd.as_tensor().clone();
        let loss_w = trainable.next_token_loss(&trainable.forward(&toks, &NoAdapters).unwrap(), &toks, None).unwrap();
        let g_w = loss_w.backward().unwrap();
        assert_rel_close(&format!("{case} loss"), &loss, &loss_w, 1e-6);
        let vars = delta.vars();
        for (name, w) in [("layers.1.query.delta", &wq), ("layers.1.down.delta", &wd)] {
            let dv = &vars.iter().find(|(n, _)| n == name).unwrap().1;
            assert_norm_close(&format!("{case} {name}"), g_delta.get(dv.as_tensor()).unwrap(), g_w.get(w.as_tensor()).unwrap(), 1e-5);
        }
    }
}

/// AdapterH (serial, after the FFN) gives the same logits and adapter gradients on the fused
/// path as on the reference op path, and every layer's adapter receives a gradient.
#[test]
fn adapter_h_runs_on_both_paths_and_trains_every_layer() {
    use meft_core::adapters::{HoulsbyAdapter, Trainable};
    for case in CASES {
        let cfg = config(case);
        let layers: Vec<usize> = (0..cfg.num_hidden_layers).collect();
        let a = HoulsbyAdapter::new(&layers, 3, cfg.hidden_size, DType::F32, &Device::Cpu).unwrap();
        for (_, v) in a.vars() {
            v.set(&Tensor::randn(0f32, 0.3, v.shape(), &Device::Cpu).unwrap()).unwrap();
        }
        let toks = tokens(case);
        let run = |path: OpPath| {
            let m = model(case, path);
            let logits = m.forward(&toks, &a).unwrap();
            let grads = m.next_token_loss(&logits, &toks, None).unwrap().backward().unwrap();
            let g: Vec<Tensor> =
                a.vars().iter().map(|(n, v)| grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{n}: no gradient")).clone()).collect();
            (logits, g)
        };
        let (fused, g_fused) = run(OpPath::Fused);
        let (reference, g_ref) = run(OpPath::Reference);
        assert_rel_close(&format!("{case} AdapterH logits"), &fused, &reference, 1e-5);
        for (i, (a, b)) in g_fused.iter().zip(&g_ref).enumerate() {
            assert_norm_close(&format!("{case} AdapterH gradient {i}"), a, b, 1e-4);
            assert!(scalar(&a.abs().unwrap().sum_all().unwrap()) > 0.0, "{case}: AdapterH parameter {i} has a zero gradient");
        }
    }
}

#[test]
fn masked_loss_counts_only_selected_targets() {
    let model = model("llama_tiny", OpPath::Fused);
    let toks = tokens("llama_tiny");
    let logits = model.forward(&toks, &NoAdapters).unwrap();
    let ones = Tensor::ones(toks.dims(), DType::F32, &Device::Cpu).unwrap();
    let all = model.next_token_loss(&logits, &toks, None).unwrap();
    let masked = model.next_token_loss(&logits, &toks, Some(&ones)).unwrap();
    assert!((scalar(&all) - scalar(&masked)).abs() < 1e-6);
    let zeros = ones.zeros_like().unwrap();
    assert!(model.next_token_loss(&logits, &toks, Some(&zeros)).is_err());
}

/// The loss from the last hidden states (head and loss fused) equals the loss of the logits, with
/// and without a mask, and so do the gradients reaching the embeddings.
#[test]
fn loss_of_hidden_states_equals_loss_of_logits() {
    for name in ["llama_tiny", "mistral_tiny"] {
        let model = model(name, OpPath::Fused);
        let toks = tokens(name);
        let mask =
            Tensor::from_vec((0..toks.elem_count()).map(|i| (i % 3 != 1) as u8 as f32).collect::<Vec<f32>>(), toks.dims(), &Device::Cpu).unwrap();
        for m in [None, Some(&mask)] {
            let run = |fused: bool| {
                let h = Var::from_tensor(&model.embed(&toks).unwrap()).unwrap();
                let loss = if fused {
                    let last = model.hidden_embeds(h.as_tensor(), &NoAdapters).unwrap();
                    model.next_token_loss_of_hidden(&last, &toks, m).unwrap()
                } else {
                    model.next_token_loss(&model.forward_embeds(h.as_tensor(), &NoAdapters).unwrap(), &toks, m).unwrap()
                };
                let grad = loss.backward().unwrap().get(h.as_tensor()).expect("embedding gradient").clone();
                (scalar(&loss), grad.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            };
            let ((l1, g1), (l2, g2)) = (run(true), run(false));
            assert!((l1 - l2).abs() < 1e-6 * l2.abs().max(1.0), "{name}: loss {l1} vs {l2}");
            for (a, b) in g1.iter().zip(&g2) {
                assert!((a - b).abs() <= 1e-6 + 1e-4 * b.abs(), "{name}: gradient {a} vs {b}");
            }
        }
        let short = toks.narrow(1, 0, 1).unwrap();
        assert!(model.next_token_loss_of_hidden(&model.embed(&short).unwrap(), &short, None).is_err());
    }
}

#[test]
fn score_equals_mean_loss_of_forward() {
    let model = model("mistral_tiny", OpPath::Reference);
    let toks = tokens("mistral_tiny").narrow(0, 0, 1).unwrap();
    let ids: Vec<u32> = toks.flatten_all().unwrap().to_vec1().unwrap();
    let score = model.score(&ids).unwrap();
    let logits = model.forward(&toks, &NoAdapters).unwrap();
    let loss = scalar(&model.next_token_loss(&logits, &toks, None).unwrap());
    assert_eq!(score.tokens, ids.len());
    assert!((score.mean_nll - loss).abs() < 1e-5, "{} vs {loss}", score.mean_nll);
    assert!(model.score(&ids[..1]).is_err());
}

#[test]
fn sharded_checkpoint_loads_like_single_file() {
    let dir = std::env::temp_dir().join(format!("meft-models-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let weights = raw_weights("llama_tiny");
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut index = serde_json::Map::new();
    for (i, (name, t)) in weights.iter().enumerate() {
        let (shard, file) = if i % 2 == 0 { (&mut a, "model-00001-of-00002.safetensors") } else { (&mut b, "model-00002-of-00002.safetensors") };
        shard.insert(name.clone(), t.clone());
        index.insert(name.clone(), file.into());
    }
    candle_core::safetensors::save(&a, dir.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, dir.join("model-00002-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": index });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let sharded = hf::load_safetensors(&dir, DType::F32, &Device::Cpu).unwrap();
    let single = hf::load_safetensors(&fixture("llama_tiny"), DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(sharded.names(), single.names());
    let m = meft_models::Llama::load(&config("llama_tiny"), sharded, DType::F32, &Device::Cpu).unwrap();
    let logits = m.forward(&tokens("llama_tiny"), &NoAdapters).unwrap();
    assert_rel_close("sharded logits", &logits, &expected("llama_tiny")["logits"], 1e-4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bf16_model_runs_close_to_f32() {
    let weights = hf::load_safetensors(&fixture("llama_tiny"), DType::BF16, &Device::Cpu).unwrap();
    let m = meft_models::Llama::load(&config("llama_tiny"), weights, DType::BF16, &Device::Cpu).unwrap();
    let logits = m.forward(&tokens("llama_tiny"), &NoAdapters).unwrap().to_dtype(DType::F32).unwrap();
    let want = &expected("llama_tiny")["logits"];
    let err = scalar(&(logits - want).unwrap().abs().unwrap().max_all().unwrap());
    assert!(err < 0.25, "bf16 logits drift {err}");
}

/// `forward_step_batch` over sequences of different cached lengths gives each sequence the
/// logits and cache length of stepping it alone with `forward_cached_last` (f32: elementwise
/// 1e-5; bf16: 1e-2 of the norm, room for one-ulp bf16 rounding flips), with no adapters and
/// with adapters on every projection and FFN (row-independent hooks).
#[test]
fn batched_decoding_step_equals_each_sequence_stepped_alone() {
    use meft_models::ops::FrozenPrecision;
    for case in CASES {
        for precision in [FrozenPrecision::F32, FrozenPrecision::Bf16] {
            let mut model = model(case, OpPath::Fused);
            model.set_frozen_precision(precision).unwrap();
            let cfg = &model.config;
            let (d, f, kv) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * cfg.head_dim);
            let randn = |shape: &[usize]| Var::from_tensor(&Tensor::randn(0f32, 0.1, shape, &Device::Cpu).unwrap()).unwrap();
            let sites = [
                (LinearSite::Query, d),
                (LinearSite::Key, kv),
                (LinearSite::Value, kv),
                (LinearSite::Output, d),
                (LinearSite::Gate, f),
                (LinearSite::Up, f),
                (LinearSite::Down, d),
            ];
            let adapters = TestAdapters {
                ffn: (0..cfg.num_hidden_layers).map(|_| (randn(&[d, 8]), randn(&[8, d]))).collect(),
                linear: (0..cfg.num_hidden_layers).flat_map(|l| sites.map(|(s, w)| ((l, s), randn(&[1, w])))).collect(),
            };
            let hooks: [&dyn AdapterHook; 2] = [&NoAdapters, &adapters];
            let toks: Vec<u32> = tokens(case).get(0).unwrap().to_vec1().unwrap();
            for hook in hooks {
                let prefill = |len: usize| {
                    let mut cache = KvCache::new(model.layers.len());
                    let ids = Tensor::from_slice(&toks[..len], (1, len), &Device::Cpu).unwrap();
                    model.forward_cached_last(&ids, &mut cache, hook).unwrap();
                    cache
                };
                let lens = [2usize, 5, 3];
                let mut alone: Vec<KvCache> = lens.iter().map(|&l| prefill(l)).collect();
                let mut together: Vec<KvCache> = lens.iter().map(|&l| prefill(l)).collect();
                for step in 0..2 {
                    let next: Vec<u32> = lens.iter().map(|&l| toks[l + step]).collect();
                    let mut refs: Vec<&mut KvCache> = together.iter_mut().collect();
                    let batched = model.forward_step_batch(&next, &mut refs, hook).unwrap();
                    for (i, cache) in alone.iter_mut().enumerate() {
                        let ids = Tensor::from_slice(&next[i..=i], (1, 1), &Device::Cpu).unwrap();
                        let want = model.forward_cached_last(&ids, cache, hook).unwrap();
                        let got = batched.narrow(0, i, 1).unwrap();
                        let what = format!("{case} {precision:?} step {step} sequence {i}");
                        match precision {
                            FrozenPrecision::F32 => assert_rel_close(&what, &got, &want, 1e-5),
                            // A matmul input an f32 ulp apart (another row blocking) may round to a
                            // bf16 one ulp (2⁻⁸) apart, which moves the logits by about 3e-3 of
                            // their norm; a wrong row would move them by O(1).
                            FrozenPrecision::Bf16 => assert_norm_close(&what, &got, &want, 1e-2),
                        }
                        assert_eq!(together[i].len(), cache.len(), "{case}: sequence {i} cache length");
                    }
                }
            }
        }
    }
}

#[test]
fn batched_decoding_step_rejects_mismatched_tokens_and_caches() {
    let model = model("llama_tiny", OpPath::Fused);
    let mut a = KvCache::new(model.layers.len());
    let mut wrong = KvCache::new(model.layers.len() + 1);
    let err = model.forward_step_batch(&[1, 2], &mut [&mut a], &NoAdapters).unwrap_err();
    assert!(err.to_string().contains("2 tokens for 1 caches"), "{err}");
    let err = model.forward_step_batch(&[], &mut [], &NoAdapters).unwrap_err();
    assert!(err.to_string().contains("at least one"), "{err}");
    let err = model.forward_step_batch(&[1], &mut [&mut wrong], &NoAdapters).unwrap_err();
    assert!(err.to_string().contains("layers"), "{err}");
}
