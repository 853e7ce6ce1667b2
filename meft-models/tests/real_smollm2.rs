//! The real SmolLM2-135M-Instruct GGUF (spec §11) against independent references.
//!
//! References come from `tools/golden/smollm2_reference.py` (the `gguf` Python package for
//! dequantisation, `transformers` for tokenisation, a float64 NumPy forward), committed as
//! `tests/fixtures/smollm2_reference.json`. The asset is fetched into the cache by the test
//! command (`cargo xtask test`) or, failing that, by `meft_assets::require_model` here; when assets
//! are marked offline the tests print the reason and return.

use std::sync::{Mutex, OnceLock};

use candle_core::{DType, Device, Tensor, Var};
use meft_core::{AdapterHook, LinearSite};
use meft_models::gguf::GgufFile;
use meft_models::{Architecture, Llama, Tokenizer};
use serde_json::Value;

const MODEL: &str = "smollm2-135m-instruct";

struct Real {
    gguf: GgufFile,
    model: Llama,
    tokenizer: Tokenizer,
}

fn reference() -> Value {
    let text = include_str!("fixtures/smollm2_reference.json");
    serde_json::from_str(text).expect("valid reference JSON")
}

/// The loaded model, shared by the tests of this binary; `None` when assets are offline.
fn real() -> Option<&'static Real> {
    static REAL: OnceLock<Option<Real>> = OnceLock::new();
    REAL.get_or_init(|| {
        let path = meft_assets::require_model(MODEL)?;
        let gguf = GgufFile::open(&path).expect("open SmolLM2 GGUF");
        let config = gguf.config().expect("config");
        let tokenizer = Tokenizer::from_gguf(&gguf, &config).expect("tokenizer");
        let weights = gguf.weights(DType::F32).expect("dequantise");
        let model = Llama::load(&config, weights, DType::F32, &Device::Cpu).expect("build model");
        Some(Real { gguf, model, tokenizer })
    })
    .as_ref()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("id array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

#[test]
fn config_matches_spec() {
    let Some(r) = real() else { return };
    let c = &r.model.config;
    assert_eq!((c.num_hidden_layers, c.hidden_size, c.intermediate_size), (30, 576, 1536));
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (9, 3, 64));
    assert_eq!((c.vocab_size, c.rope_theta, c.tie_word_embeddings), (49_152, 100_000.0, true));
    assert!((c.rms_norm_eps - 1e-5).abs() < 1e-9);
    assert_eq!((c.bos_token_id, c.eos_token_id, c.add_bos_token), (Some(1), Some(2), false));
}

#[test]
fn tokenizer_matches_reference() {
    let Some(r) = real() else { return };
    for case in reference()["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(r.tokenizer.encode(text).unwrap(), ids(&case["ids"]), "{text:?}");
        assert_eq!(r.tokenizer.decode(&ids(&case["ids"])).unwrap(), text);
    }
    assert_eq!(r.tokenizer.encode("<|im_start|>user").unwrap()[0], 1);
}

#[test]
fn dequantisation_matches_reference_and_slow_path() {
    let Some(r) = real() else { return };
    let refs = reference();
    for (name, expected) in refs["tensors"].as_object().unwrap() {
        let info = r.gguf.tensor_info(name).unwrap();
        let fast = r.gguf.dequantize(info, DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let slow = r.gguf.dequantize_slow(info).unwrap();
        assert_eq!(fast, slow, "{name}: fast and slow dequantisers differ");
        for (i, (got, want)) in fast.iter().zip(expected["first"].as_array().unwrap()).enumerate() {
            let (got, want) = (f64::from(*got), want.as_f64().unwrap());
            assert!((got - want).abs() <= 1e-7 * (1.0 + want.abs()), "{name}[{i}]: {got} vs {want}");
        }
        let sum: f64 = fast.iter().map(|&x| f64::from(x)).sum();
        let want = expected["sum"].as_f64().unwrap();
        assert!((sum - want).abs() <= 1e-6 * (1.0 + expected["abs_sum"].as_f64().unwrap()), "{name}: sum {sum} vs {want}");
    }
}

#[test]
fn mean_nll_matches_numpy_reference() {
    let Some(r) = real() else { return };
    let refs = reference();
    let tokens = r.tokenizer.encode(refs["sentence"].as_str().unwrap()).unwrap();
    assert_eq!(tokens, ids(&refs["sentence_ids"]));
    let score = r.model.score(&tokens).unwrap();
    let want = refs["mean_nll"].as_f64().unwrap();
    println!("mean NLL: meft {:.6}, NumPy reference {want:.6}, |diff| {:.2e}", score.mean_nll, (score.mean_nll - want).abs());
    assert!((score.mean_nll - want).abs() < 1e-3, "meft {} vs reference {want}", score.mean_nll);
}

#[test]
fn greedy_capital_of_france_is_paris() {
    let Some(r) = real() else { return };
    let refs = reference();
    let prompt = r.tokenizer.encode(refs["prompt"].as_str().unwrap()).unwrap();
    let want = ids(&refs["greedy_ids"]);
    let out = greedy_ids(&r.model, &prompt, want.len());
    let text = r.tokenizer.decode(&out).unwrap();
    assert!(text.starts_with(" Paris"), "greedy continuation {text:?}");
    assert_eq!(out, want, "greedy ids differ from the NumPy reference ({text:?})");
}

/// SmolLM2 with bf16 frozen products: the mean NLL of the reference sentence stays within
/// 0.02 nats of the f32 NumPy reference, and greedy decoding still says " Paris".
#[test]
fn bf16_frozen_products_keep_nll_and_greedy_answer() {
    let Some(r) = real() else { return };
    let refs = reference();
    let mut model = r.model.clone();
    model.set_frozen_precision(meft_models::ops::FrozenPrecision::Bf16).unwrap();
    let tokens = r.tokenizer.encode(refs["sentence"].as_str().unwrap()).unwrap();
    let nll = model.score(&tokens).unwrap().mean_nll;
    let want = refs["mean_nll"].as_f64().unwrap();
    println!("bf16 mean NLL {nll:.6} vs f32 reference {want:.6}");
    assert!((nll - want).abs() < 0.02, "bf16 NLL {nll} vs f32 reference {want}");
    let prompt = r.tokenizer.encode(refs["prompt"].as_str().unwrap()).unwrap();
    let out = greedy_ids(&model, &prompt, 3);
    let text = r.tokenizer.decode(&out).unwrap();
    assert!(text.starts_with(" Paris"), "bf16 greedy continuation {text:?}");
}

fn logits(model: &Llama, tokens: &[u32]) -> Tensor {
    let ids = Tensor::from_slice(tokens, (1, tokens.len()), &Device::Cpu).unwrap();
    model.forward(&ids, &meft_core::NoAdapters).unwrap()
}

/// Greedy ids after `prompt` by the slowest rule: the argmax (first on ties) of the full forward's
/// last logits over the growing sequence, `n` times. The product decoder is meft-eval's.
fn greedy_ids(model: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let all = logits(model, &seq);
        let last: Vec<f32> = all.narrow(1, seq.len() - 1, 1).unwrap().flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap();
        let best = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        seq.push(best as u32);
    }
    seq.split_off(prompt.len())
}

#[test]
fn mistral_with_full_window_equals_llama() {
    let Some(r) = real() else { return };
    let tokens = r.tokenizer.encode("Sliding windows only matter once the sequence is longer than them.").unwrap();
    let llama = logits(&r.model, &tokens);
    let mut mistral = r.model.clone();
    mistral.config.architecture = Architecture::Mistral;
    mistral.config.sliding_window = Some(tokens.len());
    let full = logits(&mistral, &tokens);
    let diff = (&llama - &full).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0, "window >= length must be exactly full attention");
    mistral.config.sliding_window = Some(3);
    let narrow = logits(&mistral, &tokens);
    let diff = (&llama - &narrow).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff > 1e-3, "a window of 3 must change the logits (max diff {diff})");
}

/// A Parallel-Adapter-like probe beside every FFN: adds `x ⊙ scale[layer]` (scale starts at
/// zero, so the forward is unchanged) and counts its calls.
struct Probe {
    scales: Vec<Var>,
    calls: Mutex<Vec<usize>>,
}

impl AdapterHook for Probe {
    fn ffn(&self, layer: usize, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        self.calls.lock().unwrap().push(layer);
        Ok(Some(x.broadcast_mul(self.scales[layer].as_tensor())?))
    }

    fn linear(&self, _layer: usize, _site: LinearSite, _x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(None)
    }
}

/// candle keeps gradients of variables only, so the FFN input is observed through the probe:
/// `dL/dscale[l] = Σ_tokens x_l ⊙ dL/d(ffn_out_l)` is non-zero only when the layer's FFN input
/// carries signal and the loss gradient reaches that layer through every later layer (frozen
/// base, differentiable ops). The input embeddings (a `Var`) must get a gradient too.
#[test]
fn every_ffn_input_gets_a_gradient_in_training_mode() {
    let Some(r) = real() else { return };
    let model = &r.model;
    let tokens = r.tokenizer.encode("Gradients must reach every layer.").unwrap();
    let ids = Tensor::from_slice(&tokens, (1, tokens.len()), &Device::Cpu).unwrap();
    let d = model.config.hidden_size;
    let probe =
        Probe { scales: (0..model.layers.len()).map(|_| Var::zeros(d, DType::F32, &Device::Cpu).unwrap()).collect(), calls: Mutex::new(Vec::new()) };
    let embeds = Var::from_tensor(&model.embed(&ids).unwrap()).unwrap();
    let logits = model.forward_embeds(embeds.as_tensor(), &probe).unwrap();
    let loss = model.next_token_loss(&logits, &ids, None).unwrap();
    let grads = loss.backward().unwrap();
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(*probe.calls.lock().unwrap(), (0..model.layers.len()).collect::<Vec<_>>());
    for (layer, scale) in probe.scales.iter().enumerate() {
        let g = grads.get(scale.as_tensor()).unwrap_or_else(|| panic!("layer {layer}: no gradient at the FFN site"));
        assert!(norm(g) > 0.0, "layer {layer}: zero gradient at the FFN site");
    }
    let g = grads.get(embeds.as_tensor()).expect("gradient reaches the input embeddings");
    assert!(norm(g) > 0.0);
}
