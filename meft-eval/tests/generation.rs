//! Generation-based evaluation end to end on a tiny random LLaMA with a byte-level tokenizer:
//! the predictions are nonsense, but rendering, decoding with the KV cache, stopping, scoring and
//! the output files must run and be deterministic. Plus the real SmolLM2 on 5 NQ-open questions
//! when the asset cache has it.

mod common;

use std::collections::HashMap;
use std::ops::ControlFlow;

use candle_core::{DType, Device, Tensor};
use meft_core::NoAdapters;
use meft_eval::generation::output::{EvalResults, EvalSummary, write_outputs};
use meft_eval::generation::{DecodeConfig, Decoding, LlamaStepper, RepetitionPenalty, StopReason, decode_streaming, stop_tokens};
use meft_eval::results::{RunMetadata, WithMetadata, read_json};
use meft_eval::{ChatTemplate, Dataset, EvalConfig, Evaluator, Example};
use meft_models::chat::ChatTemplate as ModelTemplate;
use meft_models::{Architecture, Llama, ModelConfig, RopeLayout, Tokenizer, WeightMap};

const SPECIAL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// GPT-2's byte → printable character table.
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap()
            }
        })
        .collect()
}

/// A byte-level BPE `tokenizer.json` without merges: ids 0..256 are bytes, then the ChatML
/// special tokens (256 = `<|endoftext|>`, 257, 258).
fn tokenizer_json() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = byte_chars().into_iter().enumerate().map(|(i, c)| (c.to_string(), i.into())).collect();
    let added: Vec<serde_json::Value> = SPECIAL
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"id": 256 + i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": true, "use_regex": true});
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "vocab": vocab, "merges": []}
    })
}

fn tiny_config() -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: 260,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_layout: RopeLayout::RotateHalf,
        max_position_embeddings: 512,
        tie_word_embeddings: true,
        sliding_window: None,
        bos_token_id: None,
        eos_token_id: Some(256),
        add_bos_token: false,
    }
}

/// Seeded weights (SplitMix64 → uniform in ±scale), so every run builds the same model.
fn random_weights(c: &ModelConfig, seed: u64) -> WeightMap {
    let mut state = seed;
    let mut tensor = |shape: &[usize], scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let z = (state ^ (state >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                offset + scale * (((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0)
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    };
    let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
    let mut t = HashMap::new();
    t.insert("model.embed_tokens.weight".to_owned(), tensor(&[v, d], 1.0, 0.0));
    t.insert("model.norm.weight".to_owned(), tensor(&[d], 0.1, 1.0));
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let shapes = [
            ("self_attn.q_proj", [q, d]),
            ("self_attn.k_proj", [kv, d]),
            ("self_attn.v_proj", [kv, d]),
            ("self_attn.o_proj", [d, q]),
            ("mlp.gate_proj", [f, d]),
            ("mlp.up_proj", [f, d]),
            ("mlp.down_proj", [d, f]),
        ];
        for (name, shape) in shapes {
            t.insert(format!("{p}.{name}.weight"), tensor(&shape, 0.3, 0.0));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            t.insert(format!("{p}.{norm}.weight"), tensor(&[d], 0.1, 1.0));
        }
    }
    WeightMap::new(t, "random")
}

struct Tiny {
    model: Llama,
    tokenizer: Tokenizer,
    template: ModelTemplate,
    _dir: tempfile::TempDir,
}

fn tiny() -> Tiny {
    let cfg = tiny_config();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, tokenizer_json().to_string()).unwrap();
    Tiny {
        model: Llama::load(&cfg, random_weights(&cfg, 7), DType::F32, &Device::Cpu).unwrap(),
        tokenizer: Tokenizer::from_json_file(&path, &cfg).unwrap(),
        template: ModelTemplate::ChatMl { default_system: None },
        _dir: dir,
    }
}

impl Tiny {
    /// The base model (no adapters) ready to answer.
    fn evaluator(&self) -> Evaluator<'_> {
        Evaluator { model: &self.model, tokenizer: &self.tokenizer, template: &self.template, hook: &NoAdapters, after_forward: None }
    }
}

fn config(decoding: Decoding, max_new_tokens: usize, penalty: f32) -> EvalConfig {
    EvalConfig {
        decode: DecodeConfig { decoding, max_new_tokens, repetition_penalty: RepetitionPenalty { penalty, ..Default::default() } },
        batch: 1,
    }
}

fn nq_fixture() -> Vec<Example> {
    common::check("nq_open", 3)
}

#[test]
fn template_adapter_and_stop_tokens() {
    let t = tiny();
    let rendered = meft_eval::render(&nq_fixture()[0], &t.template);
    assert_eq!(rendered.prompt, "<|im_start|>user\nwhen was the last time anyone was on the moon<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(rendered.completion, "14 December 1972 UTC<|im_end|>\n");
    assert_eq!(ChatTemplate::completion(&t.template, "x"), "x<|im_end|>\n");
    assert_eq!(stop_tokens(&t.tokenizer, &t.template).unwrap(), vec![256, 258]);
}

/// Greedy by the slowest rule: the first argmax of the full forward's last logits over the
/// growing sequence, up to `max_new` tokens or a stop token (kept).
fn full_forward_greedy(model: &Llama, prompt: &[u32], max_new: usize, stops: &[u32]) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    while seq.len() - prompt.len() < max_new && !seq[prompt.len()..].last().is_some_and(|t| stops.contains(t)) {
        let ids = Tensor::from_slice(&seq, (1, seq.len()), &Device::Cpu).unwrap();
        let logits = model.forward(&ids, &NoAdapters).unwrap();
        let last: Vec<f32> = logits.narrow(1, seq.len() - 1, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        seq.push((0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b }) as u32);
    }
    seq.split_off(prompt.len())
}

#[test]
fn streaming_hands_over_every_token_once_and_a_break_ends_on_the_token_handed_over() {
    let t = tiny();
    let stepper = LlamaStepper { model: &t.model, hook: &NoAdapters, after_forward: None, rows: 1 };
    let prompt = [3u32, 17, 42, 9];
    let cfg = DecodeConfig { decoding: Decoding::Greedy, max_new_tokens: 6, repetition_penalty: RepetitionPenalty::default() };
    let mut handed = Vec::new();
    let streamed = decode_streaming(&stepper, &prompt, &cfg, &[], &mut |tok| {
        handed.push(tok);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(streamed.tokens, handed);
    assert_eq!((streamed.tokens.len(), streamed.stop), (6, StopReason::MaxNewTokens));
    assert_eq!(streamed.tokens, full_forward_greedy(&t.model, &prompt, 6, &[]));
    let stopped = decode_streaming(&stepper, &prompt, &cfg, &[], &mut |_| ControlFlow::Break(())).unwrap();
    assert_eq!((stopped.tokens.as_slice(), stopped.stop), (&streamed.tokens[..1], StopReason::Caller));
    let beam = DecodeConfig { decoding: Decoding::Beam { width: 2, length_penalty: 1.0 }, ..cfg.clone() };
    let cut = decode_streaming(&stepper, &prompt, &beam, &[], &mut |_| ControlFlow::Break(())).unwrap();
    assert_eq!((cut.tokens.len(), cut.stop), (1, StopReason::Caller), "beam search hands its answer over and stops where told");
}

#[test]
fn seeded_sampling_repeats_per_seed_and_rejects_a_temperature_of_zero() {
    let t = tiny();
    let stepper = LlamaStepper { model: &t.model, hook: &NoAdapters, after_forward: None, rows: 1 };
    let run = |temperature: f64, seed: u64| {
        let cfg =
            DecodeConfig { decoding: Decoding::Sample { temperature, seed }, max_new_tokens: 8, repetition_penalty: RepetitionPenalty::default() };
        meft_eval::generation::decode::decode(&stepper, &[5, 6, 7], &cfg, &[])
    };
    assert_eq!(run(1.5, 7).unwrap(), run(1.5, 7).unwrap());
    assert_ne!(run(1.5, 7).unwrap().tokens, run(1.5, 8).unwrap().tokens, "different seeds should differ over 8 draws at T = 1.5");
    let err = run(0.0, 7).unwrap_err().to_string();
    assert!(err.contains("temperature"), "{err}");
}

#[test]
fn tiny_model_evaluates_deterministically_and_greedy_matches_the_full_forward_argmax() {
    let t = tiny();
    let examples = nq_fixture();
    let evaluator = t.evaluator();
    let dataset = Dataset::NqOpen;
    let cfg = config(Decoding::Greedy, 12, 1.0);
    let mut seen = Vec::new();
    let first = evaluator.evaluate(&dataset, &examples, &cfg, &mut |i, n| seen.push((i, n))).unwrap();
    let second = evaluator.evaluate(&dataset, &examples, &cfg, &mut |_, _| {}).unwrap();
    assert_eq!(seen, vec![(1, 3), (2, 3), (3, 3)]);
    assert_eq!(first.report.examples, second.report.examples);
    assert_eq!(first.report.n_scored, 3);
    assert_eq!(first.report.primary, 0.0, "random weights should not answer NQ");
    assert!(first.generations.iter().all(|g| g.new_tokens >= 1 && g.new_tokens <= 12));

    // Same tokens as the slowest rule: the argmax of the full forward over the growing sequence.
    let stops = stop_tokens(&t.tokenizer, &t.template).unwrap();
    for (example, generation) in examples.iter().zip(&first.generations) {
        let prompt = t.tokenizer.encode(&meft_eval::render(example, &t.template).prompt).unwrap();
        let reference = full_forward_greedy(&t.model, &prompt, 12, &stops);
        assert_eq!(reference.len(), generation.new_tokens);
        let (answer, _) = evaluator.answer(example, &cfg).unwrap();
        let content = match reference.last() {
            Some(last) if stops.contains(last) => &reference[..reference.len() - 1],
            _ => &reference[..],
        };
        assert_eq!(answer, t.tokenizer.decode(content).unwrap().trim());
    }
}

#[test]
fn beam_search_with_penalty_runs_and_width_one_equals_greedy_on_the_model() {
    let t = tiny();
    let examples = nq_fixture();
    let evaluator = t.evaluator();
    let greedy = config(Decoding::Greedy, 6, 2.0);
    let width_one = config(Decoding::Beam { width: 1, length_penalty: 1.0 }, 6, 2.0);
    let beam = config(Decoding::Beam { width: 3, length_penalty: 1.0 }, 6, 2.0);
    let calls = std::cell::Cell::new(0usize);
    let count = || calls.set(calls.get() + 1);
    let counting = Evaluator { after_forward: Some(&count as &dyn Fn()), ..evaluator };
    for example in &examples[..2] {
        let (g, gg) = evaluator.answer(example, &greedy).unwrap();
        let (w, wg) = counting.answer(example, &width_one).unwrap();
        assert_eq!((g, gg.new_tokens), (w, wg.new_tokens));
        let (_, bg) = evaluator.answer(example, &beam).unwrap();
        assert!(bg.new_tokens <= 6);
    }
    assert!(calls.get() >= 2, "after_forward runs after every forward call");
}

#[test]
fn outputs_round_trip_json_and_hdf5() {
    let t = tiny();
    let examples = nq_fixture();
    let evaluator = t.evaluator();
    let cfg = config(Decoding::Greedy, 4, 1.0);
    let evaluation = evaluator.evaluate(&Dataset::NqOpen, &examples, &cfg, &mut |_, _| {}).unwrap();
    let mut summary = EvalSummary::of_report(&evaluation.report, evaluation.wall_seconds);
    summary.model = Some("tiny".into());
    summary.config = Some(cfg);
    summary.new_tokens = evaluation.new_tokens();
    let metadata =
        RunMetadata { config_json: serde_json::to_string(&summary.config).unwrap(), git_revision: "test".into(), description: "tiny eval".into() };
    let dir = tempfile::tempdir().unwrap();
    let paths = write_outputs(dir.path(), &metadata, &summary, &evaluation.report, &evaluation.generations).unwrap();
    let back: WithMetadata<EvalResults> = read_json(&paths.json).unwrap();
    assert_eq!(back.result.summary, summary);
    assert_eq!(back.result.report, evaluation.report);
    let file = hdf5::File::open(&paths.hdf5).unwrap();
    let ids = file.dataset("predictions/id").unwrap().read_1d::<hdf5::types::VarLenUnicode>().unwrap();
    assert_eq!(ids.len(), 3);
    let new_tokens = file.dataset("generation/new_tokens").unwrap().read_1d::<u64>().unwrap();
    let expected: Vec<u64> = evaluation.generations.iter().map(|g| g.new_tokens as u64).collect();
    assert_eq!(new_tokens.to_vec(), expected);
}

#[test]
fn greedy_groups_of_any_size_give_the_predictions_of_one_at_a_time() {
    let t = tiny();
    let examples = nq_fixture();
    let evaluator = t.evaluator();
    let run = |batch: usize| {
        let cfg = EvalConfig { batch, ..config(Decoding::Greedy, 12, 1.3) };
        let mut seen = Vec::new();
        let e = evaluator.evaluate(&Dataset::NqOpen, &examples, &cfg, &mut |i, n| seen.push((i, n))).unwrap();
        let tokens: Vec<usize> = e.generations.iter().map(|g| g.new_tokens).collect();
        (e.report.examples, tokens, seen)
    };
    let (alone, alone_tokens, _) = run(1);
    for batch in [2, 3, 8] {
        let (together, tokens, seen) = run(batch);
        assert_eq!(together, alone, "batch {batch}: predictions differ");
        assert_eq!(tokens, alone_tokens, "batch {batch}: token counts differ");
        assert_eq!(seen.last(), Some(&(3, 3)), "batch {batch}: progress");
    }
    let zero = EvalConfig { batch: 0, ..config(Decoding::Greedy, 12, 1.0) };
    let err = evaluator.evaluate(&Dataset::NqOpen, &examples, &zero, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("batch"), "{err}");
}

#[test]
fn real_smollm2_greedy_on_five_nq_questions() {
    let (Some(model_path), Some(data)) = (meft_assets::require_model("smollm2-135m-instruct"), meft_assets::require_dataset("nq_open")) else {
        return;
    };
    let source = meft_models::ModelSource::Gguf(model_path);
    let mut bundle = meft_models::resolve::load(&source, DType::F32).unwrap();
    let weights = std::mem::replace(&mut bundle.weights, WeightMap::new(HashMap::new(), "moved"));
    let model = Llama::load(&bundle.config, weights, DType::F32, &Device::Cpu).unwrap();
    let template = bundle.chat.expect("SmolLM2 declares ChatML");
    let examples: Vec<Example> = Dataset::NqOpen.load(&data).unwrap().into_iter().take(5).collect();
    let evaluator = Evaluator { model: &model, tokenizer: &bundle.tokenizer, template: &template, hook: &NoAdapters, after_forward: None };
    let cfg = config(Decoding::Greedy, 24, 1.0);
    let evaluation = evaluator.evaluate(&Dataset::NqOpen, &examples, &cfg, &mut |_, _| {}).unwrap();
    assert_eq!(evaluation.report.n_scored, 5);
    let batched = EvalConfig { batch: 5, ..cfg.clone() };
    let together = evaluator.evaluate(&Dataset::NqOpen, &examples, &batched, &mut |_, _| {}).unwrap();
    let texts = |e: &meft_eval::Evaluation| -> Vec<Option<String>> { e.report.examples.iter().map(|r| r.prediction.clone()).collect() };
    assert_eq!(texts(&together), texts(&evaluation), "five questions side by side vs one at a time");
    for r in &evaluation.report.examples {
        let text = r.prediction.as_deref().unwrap();
        assert!(!text.is_empty() && !text.contains("<|im_end|>"), "prediction {text:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let summary = EvalSummary::of_report(&evaluation.report, evaluation.wall_seconds);
    let metadata = RunMetadata { config_json: "{}".into(), git_revision: "test".into(), description: "smollm2 nq".into() };
    let paths = write_outputs(dir.path(), &metadata, &summary, &evaluation.report, &evaluation.generations).unwrap();
    assert!(paths.json.is_file() && paths.hdf5.is_file());
    eprintln!(
        "SmolLM2 greedy on 5 NQ-open: EM {:.2}, {:.1} s, {} new tokens",
        evaluation.report.primary,
        evaluation.wall_seconds,
        evaluation.new_tokens()
    );
}
