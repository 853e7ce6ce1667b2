//! Golden test against PyTorch (`tools/golden/make_fixtures.py`): logits, loss and gradients of
//! tiny random LLaMA (GQA, tied head) and Mistral (GQA 4/1, sliding window 5 < sequence 12).
//!
//! Tolerances (f32): logits `|a − b| ≤ 1e-4·max(|b|, 1)`, loss `≤ 1e-5` absolute, gradients
//! `max|a − b| ≤ 1e-3·max|b|`.
//!
//! Frozen weights are plain tensors, so parameter gradients are taken by wrapping the chosen
//! weights as `Var`s before building the model (the model then uses the plain differentiable
//! matmul for them); activation gradients (token embeddings, each layer's FFN input) are taken
//! with every weight frozen, exactly as an adapter sees them: the FFN input of layer `l` is made a
//! `Var` by running the layer's two halves (`attention_residual`, `ffn_residual`) separately.

mod common;

use candle_core::{Tensor, Var};
use common::*;
use meft_core::NoAdapters;
use meft_models::{Llama, OpPath, RopeLayout};

const PATHS: [OpPath; 2] = [OpPath::Fused, OpPath::Reference];

#[test]
fn logits_loss_and_parameter_gradients_match_pytorch() {
    for case in CASES {
        let exp = expected(case);
        for path in PATHS {
            let mut weights = raw_weights(case);
            let param_names: Vec<String> = exp.keys().filter_map(|k| k.strip_prefix("grad.")).map(str::to_string).collect();
            let mut vars = Vec::new();
            for name in &param_names {
                let var = Var::from_tensor(&weights[name]).unwrap();
                weights.insert(name.clone(), var.as_tensor().clone());
                vars.push((name.clone(), var));
            }
            let model = model_from(&config(case), weights, path);
            let toks = tokens(case);
            let logits = model.forward(&toks, &NoAdapters).unwrap();
            assert_rel_close(&format!("{case}/{path:?} logits"), &logits, &exp["logits"], 1e-4);
            let loss = model.next_token_loss(&logits, &toks, None).unwrap();
            let (got, want) = (scalar(&loss), scalar(&exp["loss"]));
            assert!((got - want).abs() <= 1e-5, "{case}/{path:?} loss {got} vs {want}");
            let grads = loss.backward().unwrap();
            for (name, var) in &vars {
                let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
                assert_norm_close(&format!("{case}/{path:?} grad {name}"), g, &exp[&format!("grad.{name}")], 1e-3);
            }
        }
    }
}

#[test]
fn embedding_gradient_matches_pytorch() {
    for case in CASES {
        let exp = expected(case);
        for path in PATHS {
            let model = model(case, path);
            let toks = tokens(case);
            let h = Var::from_tensor(&model.embed(&toks).unwrap()).unwrap();
            let logits = model.forward_embeds(h.as_tensor(), &NoAdapters).unwrap();
            let grads = model.next_token_loss(&logits, &toks, None).unwrap().backward().unwrap();
            let g = grads.get(h.as_tensor()).expect("embedding gradient");
            assert_norm_close(&format!("{case}/{path:?} grad_embeds"), g, &exp["grad_embeds"], 1e-3);
        }
    }
}

/// Loss with the FFN input of `target` replaced by a leaf `Var`; returns (loss, that Var).
fn loss_with_ffn_leaf(model: &Llama, toks: &Tensor, target: usize) -> (Tensor, Var) {
    let ctx = model.context(&NoAdapters, model.op_path, 0, toks.dim(1).unwrap());
    let mut h = model.embed(toks).unwrap();
    let mut leaf = None;
    for layer in &model.layers {
        h = if layer.index == target {
            let (h_mid, x_ffn) = layer.attention_residual(&h, &ctx, None).unwrap();
            let var = Var::from_tensor(&x_ffn).unwrap();
            let out = layer.ffn_residual(&h_mid, var.as_tensor(), &ctx).unwrap();
            leaf = Some(var);
            out
        } else {
            layer.forward(&h, &ctx, None).unwrap()
        };
    }
    let logits = model.head(&h, model.op_path).unwrap();
    (model.next_token_loss(&logits, toks, None).unwrap(), leaf.expect("layer exists"))
}

#[test]
fn ffn_input_gradients_match_pytorch() {
    for case in CASES {
        let exp = expected(case);
        for path in PATHS {
            let model = model(case, path);
            let toks = tokens(case);
            for l in 0..model.layers.len() {
                let (loss, leaf) = loss_with_ffn_leaf(&model, &toks, l);
                let grads = loss.backward().unwrap();
                let g = grads.get(leaf.as_tensor()).expect("FFN input gradient");
                assert_norm_close(&format!("{case}/{path:?} grad_ffn_in.{l}"), g, &exp[&format!("grad_ffn_in.{l}")], 1e-3);
            }
        }
    }
}

/// GGUF stores Q/K rows permuted for adjacent-pair RoPE: within each head, HF row
/// `half·(d/2) + i` becomes row `2i + half`.
fn to_interleaved(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    let hd = rows / heads;
    w.reshape((heads, 2, hd / 2, cols)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap().reshape((rows, cols)).unwrap()
}

#[test]
fn interleaved_rope_layout_matches_pytorch() {
    for case in CASES {
        let mut cfg = config(case);
        cfg.rope_layout = RopeLayout::Interleaved;
        let mut weights = raw_weights(case);
        for l in 0..cfg.num_hidden_layers {
            for (proj, heads) in [("q_proj", cfg.num_attention_heads), ("k_proj", cfg.num_key_value_heads)] {
                let name = format!("model.layers.{l}.self_attn.{proj}.weight");
                let permuted = to_interleaved(&weights[&name], heads);
                weights.insert(name, permuted);
            }
        }
        for path in PATHS {
            let model = model_from(&cfg, weights.clone(), path);
            let logits = model.forward(&tokens(case), &NoAdapters).unwrap();
            assert_rel_close(&format!("{case}/{path:?} interleaved logits"), &logits, &expected(case)["logits"], 1e-4);
        }
    }
}
