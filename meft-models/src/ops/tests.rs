//! Fused kernels against their reference forms: values and gradients on pseudo-random inputs.
//!
//! Tolerance: |fused − reference| ≤ 1e-5 + 1e-4·|reference| (f32; the forms differ only in
//! summation order and in where the normalisation constant is applied).

use candle_core::{DType, Device, Result, Tensor, Var};
use proptest::prelude::*;

use super::*;

const ABS: f32 = 1e-5;
const REL: f32 = 1e-4;

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64, scale: f32) -> Result<Tensor> {
    Tensor::from_vec(values(shape.iter().product(), seed, scale), shape, &Device::Cpu)
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    let a = a.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len(), "{what}: sizes differ");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= ABS + REL * y.abs(), "{what}[{i}]: fused {x} vs reference {y}");
    }
}

/// Runs `f` under both paths on Vars made from `inputs`, comparing outputs and the gradients of
/// `sum(out ∘ probe)` w.r.t. every input.
fn check(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor], OpPath) -> Result<Tensor>) {
    let run = |path| {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts, path).unwrap();
        let probe = tensor(out.dims(), 99, 1.0).unwrap();
        let grads = (&out * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gs: Vec<Tensor> = ts.iter().map(|t| grads.get(t).expect("missing gradient").clone()).collect();
        (out, gs)
    };
    let (out_f, g_f) = run(OpPath::Fused);
    let (out_r, g_r) = run(OpPath::Reference);
    assert_close(&format!("{name} value"), &out_f, &out_r);
    for (i, (a, b)) in g_f.iter().zip(&g_r).enumerate() {
        assert_close(&format!("{name} grad of input {i}"), a, b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn rms_norm_matches_reference(rows in 1usize..9, d in 1usize..70, seed in 0u64..1000) {
        let x = tensor(&[rows, d], seed, 2.0).unwrap();
        let w = tensor(&[d], seed + 1, 1.5).unwrap();
        check("rms_norm", &[x, w], |t, p| rms_norm(&t[0], &t[1], 1e-5, p));
    }

    #[test]
    fn softmax_matches_reference(
        blocks in 1usize..4, seq in 1usize..9, extra in 0usize..5, window in 0usize..6, seed in 0u64..1000,
    ) {
        let keys = seq + extra;
        let mask = AttentionMask { seq, offset: extra, window: (window > 0).then_some(window) };
        let x = tensor(&[blocks, 2 * seq, keys], seed, 4.0).unwrap();
        check("masked_softmax", &[x], |t, p| masked_softmax(&t[0], mask, p));
    }

    #[test]
    fn rope_matches_reference(seq in 1usize..7, heads in 1usize..4, half in 1usize..9, offset in 0usize..20, seed in 0u64..1000) {
        let tables = rope_tables(2 * half, 10_000.0, offset, seq);
        let x = tensor(&[2, seq, heads, 2 * half], seed, 1.0).unwrap();
        for layout in [RopeLayout::RotateHalf, RopeLayout::Interleaved] {
            check("rope", std::slice::from_ref(&x), |t, p| rope(&t[0], &tables, layout, p));
        }
    }

    #[test]
    fn silu_mul_matches_reference(rows in 1usize..9, d in 1usize..70, seed in 0u64..1000) {
        let g = tensor(&[rows, d], seed, 6.0).unwrap();
        let u = tensor(&[rows, d], seed + 7, 2.0).unwrap();
        check("silu_mul", &[g, u], |t, p| silu_mul(&t[0], &t[1], p));
    }

    #[test]
    fn cross_entropy_matches_reference(rows in 1usize..9, vocab in 2usize..60, seed in 0u64..1000) {
        let z = tensor(&[rows, vocab], seed, 5.0).unwrap();
        let t: Vec<u32> = (0..rows).map(|r| ((r as u64 * 7 + seed) % vocab as u64) as u32).collect();
        let t = Tensor::new(t.as_slice(), &Device::Cpu).unwrap();
        check("cross_entropy", &[z], |x, p| cross_entropy(&x[0], &t, p));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn swiglu_matches_reference(rows in 1usize..9, f in 1usize..40, seed in 0u64..1000) {
        let x = tensor(&[rows, 2 * f], seed, 6.0).unwrap();
        check("swiglu", &[x], |t, p| swiglu(&t[0], p));
    }

    /// Packed attention (keys/values from `qkv`, after `past` cached positions) against the
    /// reference, values and gradients to `qkv` and to the cached keys/values.
    #[test]
    fn attention_matches_reference(
        batch in 1usize..3, seq in 1usize..6, kvh in 1usize..3, group in 1usize..4, half in 1usize..5,
        past in 0usize..4, window in 0usize..5, interleaved in any::<bool>(), seed in 0u64..1000,
    ) {
        let dims = HeadDims { heads: kvh * group, kv_heads: kvh, head_dim: 2 * half };
        let layout = if interleaved { RopeLayout::Interleaved } else { RopeLayout::RotateHalf };
        let tables = rope_tables(dims.head_dim, 10_000.0, past, seq);
        let mask = AttentionMask { seq, offset: past, window: (window > 0).then_some(window) };
        let qkv = tensor(&[batch, seq, dims.qkv_width()], seed, 2.0).unwrap();
        let mut inputs = vec![qkv];
        if past > 0 {
            inputs.push(tensor(&[2, batch, kvh, past, dims.head_dim], seed + 3, 2.0).unwrap());
        }
        check("attention", &inputs, |t, p| {
            let mut kv = kv_heads(&t[0], &tables, layout, dims, p)?;
            if let Some(old) = t.get(1) {
                kv = Tensor::cat(&[old, &kv], 3)?;
            }
            attention(&t[0], &kv, &tables, layout, dims, mask, p)
        });
    }
}

/// Sequences longer than one row block of the fused attention (64 rows), with and without a
/// window and cached positions: the skipped above-diagonal blocks must not change anything.
#[test]
fn attention_over_several_row_blocks_matches_reference() {
    let dims = HeadDims { heads: 2, kv_heads: 1, head_dim: 4 };
    for (seq, past, window) in [(70, 0, None), (150, 0, Some(30)), (130, 9, None), (129, 5, Some(70))] {
        let tables = rope_tables(dims.head_dim, 10_000.0, past, seq);
        let mask = AttentionMask { seq, offset: past, window };
        let mut inputs = vec![tensor(&[1, seq, dims.qkv_width()], seq as u64, 2.0).unwrap()];
        if past > 0 {
            inputs.push(tensor(&[2, 1, 1, past, dims.head_dim], 5, 2.0).unwrap());
        }
        check(&format!("attention seq {seq} past {past} window {window:?}"), &inputs, |t, p| {
            let mut kv = kv_heads(&t[0], &tables, RopeLayout::RotateHalf, dims, p)?;
            if let Some(old) = t.get(1) {
                kv = Tensor::cat(&[old, &kv], 3)?;
            }
            attention(&t[0], &kv, &tables, RopeLayout::RotateHalf, dims, mask, p)
        });
    }
}

#[test]
fn next_token_nll_matches_reference() {
    for (b, s, v) in [(1, 2, 3), (2, 5, 17), (3, 4, 40)] {
        let z = tensor(&[b, s, v], (b * s) as u64, 5.0).unwrap();
        let t: Vec<u32> = (0..b * s).map(|i| ((i * 7 + 3) % v) as u32).collect();
        let t = Tensor::from_vec(t, (b, s), &Device::Cpu).unwrap();
        check("next_token_nll", &[z], |x, p| next_token_nll(&x[0], &t, p));
    }
}

#[test]
fn attention_without_gradients_matches_reference() {
    let dims = HeadDims { heads: 4, kv_heads: 2, head_dim: 6 };
    let tables = rope_tables(6, 500.0, 0, 5);
    let mask = AttentionMask { seq: 5, offset: 0, window: None };
    let qkv = tensor(&[2, 5, dims.qkv_width()], 11, 2.0).unwrap();
    let run = |p| {
        let kv = kv_heads(&qkv, &tables, RopeLayout::RotateHalf, dims, p).unwrap();
        attention(&qkv, &kv, &tables, RopeLayout::RotateHalf, dims, mask, p).unwrap()
    };
    assert_close("attention (inference)", &run(OpPath::Fused), &run(OpPath::Reference));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The column-split products (one block of output columns per thread) against one product
    /// over all columns, with and without a residual, and the input gradient against loops.
    #[test]
    fn column_split_linear_matches_single_product(rows in 1usize..9, d_in in 1usize..40, d_out in 1usize..70, seed in 0u64..1000) {
        let (x, w, h) = (values(rows * d_in, seed, 1.0), values(d_out * d_in, seed + 1, 1.0), values(rows * d_out, seed + 2, 1.0));
        let want = linear::linear_rows_slow(&x, &w, d_out).unwrap();
        let got = linear::linear_rows(&x, linear::Weight::f32(&w), d_out).unwrap();
        let got_res = linear::linear_residual_rows(&x, linear::Weight::f32(&w), &h, d_out).unwrap();
        for i in 0..want.len() {
            prop_assert!((got[i] - want[i]).abs() <= 1e-5 * want[i].abs().max(1.0), "[{i}] {} vs {}", got[i], want[i]);
            let with_res = want[i] + h[i];
            prop_assert!((got_res[i] - with_res).abs() <= 1e-5 * with_res.abs().max(1.0));
        }
        prop_assert!(linear::linear_rows(&x[1..], linear::Weight::f32(&w), d_out).is_err() || d_in == 1);
        // The input gradient g·W splits the columns of a row-major (not transposed) operand.
        let g = values(rows * d_out, seed + 3, 1.0);
        let dx = linear::linear_bwd_rows(&g, linear::Weight::f32(&w), d_out).unwrap();
        for r in 0..rows {
            for c in 0..d_in {
                let want: f32 = (0..d_out).map(|o| g[r * d_out + o] * w[o * d_in + c]).sum();
                prop_assert!((dx[r * d_in + c] - want).abs() <= 1e-5 * want.abs().max(1.0), "dx[{r},{c}]");
            }
        }
    }
}

#[test]
fn frozen_linear_gradient_matches_plain_matmul() {
    let x = Var::from_tensor(&tensor(&[2, 3, 5], 1, 1.0).unwrap()).unwrap();
    let probe = tensor(&[2, 3, 4], 3, 1.0).unwrap();
    let grad_of = |y: Tensor| (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    // A dense weight and a row view with an offset into a packed one (as Q/K/V are stored).
    let packed = tensor(&[7, 5], 2, 1.0).unwrap();
    for w in [tensor(&[4, 5], 2, 1.0).unwrap(), packed.narrow(0, 2, 4).unwrap()] {
        let fast = linear(x.as_tensor(), &w).unwrap();
        let slow = linear_slow(x.as_tensor(), &w).unwrap();
        assert_close("linear value", &fast, &slow);
        let (gf, gs) = (grad_of(fast), grad_of(slow));
        assert_close("linear grad", gf.get(x.as_tensor()).unwrap(), gs.get(x.as_tensor()).unwrap());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn linear_residual_matches_reference(rows in 1usize..7, d_in in 1usize..30, d_out in 1usize..40, seed in 0u64..1000) {
        let w = tensor(&[d_out, d_in], seed + 1, 1.0).unwrap();
        let x = tensor(&[1, rows, d_in], seed, 1.0).unwrap();
        let h = tensor(&[1, rows, d_out], seed + 2, 1.0).unwrap();
        check("linear_residual", &[x, h], |t, p| match p {
            OpPath::Fused => linear_residual(&t[0], &w, &t[1]),
            OpPath::Reference => linear_residual_slow(&t[0], &w, &t[1]),
        });
    }
}

#[test]
fn rope_inverse_undoes_rotation() {
    let tables = rope_tables(8, 500.0, 3, 4);
    let x = tensor(&[1, 4, 2, 8], 5, 1.0).unwrap();
    let xv = Var::from_tensor(&x).unwrap();
    // d/dx of sum(rope(x) ∘ rope(x)) = 2x for an orthogonal rotation.
    let y = rope(xv.as_tensor(), &tables, RopeLayout::Interleaved, OpPath::Fused).unwrap();
    let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert_close("rope orthogonality", g.get(xv.as_tensor()).unwrap(), &(x * 2.0).unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The fused head + next-token loss against the reference head and loss: values and the
    /// gradient of the hidden states, over a first and a second backward of the same graph (the
    /// second finds the kept logits consumed and recomputes them).
    #[test]
    fn head_next_token_nll_matches_head_then_loss(b in 1usize..3, s in 2usize..7, d in 1usize..9, v in 2usize..40, seed in 0u64..1000) {
        let x = Var::from_tensor(&tensor(&[b, s, d], seed, 1.0).unwrap()).unwrap();
        let w = tensor(&[v, d], seed + 1, 1.0).unwrap();
        let ids: Vec<u32> = values(b * s, seed + 2, 1.0).iter().map(|r| ((r + 1.0) * 0.5 * v as f32) as u32 % v as u32).collect();
        let toks = Tensor::from_vec(ids, (b, s), &Device::Cpu).unwrap();
        let probe = tensor(&[b * (s - 1)], seed + 3, 1.0).unwrap();
        let grad = |nll: &Tensor| (nll * &probe).unwrap().sum_all().unwrap().backward().unwrap().get(x.as_tensor()).expect("gradient").clone();
        let fused = head_next_token_nll(x.as_tensor(), &w, &toks, OpPath::Fused).unwrap();
        let reference = next_token_nll_slow(&linear_slow(x.as_tensor(), &w).unwrap(), &toks).unwrap();
        assert_close("head nll value", &fused, &reference);
        let want = grad(&reference);
        assert_close("head nll grad", &grad(&fused), &want);
        assert_close("head nll second backward", &grad(&fused), &want);
    }
}

#[test]
fn head_next_token_nll_rejects_targets_outside_the_vocabulary() {
    let x = Var::from_tensor(&tensor(&[1, 3, 4], 1, 1.0).unwrap()).unwrap();
    let w = tensor(&[5, 4], 2, 1.0).unwrap();
    let toks = Tensor::from_vec(vec![0u32, 7, 1], (1, 3), &Device::Cpu).unwrap();
    let err = head_next_token_nll(x.as_tensor(), &w, &toks, OpPath::Fused).unwrap_err().to_string();
    assert!(err.contains("target 7") && err.contains("vocabulary of 5"), "{err}");
}
