//! The sparse adapter op against its loop reference, finite differences and the dense adapter.

use candle_core::{DType, Device, Tensor, Var};
use meft_core::sparse::{Evaluation, GateInput, SparseIndex, SparseSelection, sparse_adapter_forward, sparse_adapter_forward_slow};

/// Small deterministic generator (xorshift) so the tests need no RNG crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal_vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| (self.uniform() + self.uniform() + self.uniform() - 1.5) * 2.0 * scale).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Case {
    t: usize,
    u: usize,
    n: usize,
    d: usize,
    x: Vec<f64>,
    keys: Vec<f64>,
    values: Vec<f64>,
    gates: Vec<f64>,
    sel: SparseSelection,
}

/// A random case; per-token pairs pick `k` distinct rows per token, leaving the last row unused.
fn case(rng: &mut Rng, t: usize, u: usize, n: usize, d: usize, k: usize, evaluation: Evaluation) -> Case {
    let mut pairs = Vec::new();
    for tok in 0..t {
        let mut chosen: Vec<u32> = Vec::new();
        while chosen.len() < k.min(u - 1) {
            let r = rng.below(u - 1) as u32;
            if !chosen.contains(&r) {
                chosen.push(r);
            }
        }
        pairs.extend(chosen.into_iter().map(|r| (tok as u32, r)));
    }
    let row_expert = (0..u).map(|_| rng.below(n) as u32).collect();
    Case {
        t,
        u,
        n,
        d,
        x: rng.normal_vec(t * d, 1.0),
        keys: rng.normal_vec(u * d, 0.5),
        values: rng.normal_vec(u * d, 0.5),
        gates: rng.normal_vec(n * d, 0.5),
        sel: SparseSelection { tokens: t, row_expert, pairs, evaluation },
    }
}

fn t2(v: &[f64], r: usize, c: usize) -> Tensor {
    Tensor::from_slice(v, (r, c), &Device::Cpu).unwrap()
}

fn close(a: &[f64], b: &[f64], tol: f64) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "element {i}: {x} vs {y}");
    }
}

#[test]
fn fast_equals_loop_reference_on_random_inputs() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for trial in 0..24 {
        let evaluation = if trial % 2 == 0 { Evaluation::PerToken } else { Evaluation::Union };
        let (t, u, n, d) = (1 + rng.below(6), 2 + rng.below(9), 1 + rng.below(4), 1 + rng.below(7));
        let k = 1 + rng.below(4);
        let c = case(&mut rng, t, u, n, d, k, evaluation);
        let index = SparseIndex::new(&c.sel, c.n, &Device::Cpu).unwrap();
        let (x, k, v, g) = (t2(&c.x, t, d), t2(&c.keys, u, d), t2(&c.values, u, d), t2(&c.gates, n, d));
        for gated in [false, true] {
            let gate = if gated { GateInput::Gated(&g) } else { GateInput::Plain };
            let fast = sparse_adapter_forward(&x, &k, &v, gate, &index).unwrap();
            let fast = fast.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let slow = sparse_adapter_forward_slow(&c.x, &c.keys, &c.values, gated.then_some(&c.gates[..]), &c.sel, d);
            // Same f64 sums in a different order: agreement to a few ulp of the magnitudes involved.
            close(&fast, &slow, 1e-12);
        }
    }
}

/// Loss = Σ y ⊙ w through the loop reference, for finite differences.
fn ref_loss(c: &Case, keys: &[f64], values: &[f64], gates: &[f64], w: &[f64]) -> f64 {
    let y = sparse_adapter_forward_slow(&c.x, keys, values, Some(gates), &c.sel, c.d);
    y.iter().zip(w).map(|(a, b)| a * b).sum()
}

fn fd_check(evaluation: Evaluation) {
    let mut rng = Rng(42 + evaluation as u64);
    let c = case(&mut rng, 4, 6, 3, 5, 2, evaluation);
    let w = rng.normal_vec(c.t * c.d, 1.0);
    let (kv, vv, gv) = (
        Var::from_tensor(&t2(&c.keys, c.u, c.d)).unwrap(),
        Var::from_tensor(&t2(&c.values, c.u, c.d)).unwrap(),
        Var::from_tensor(&t2(&c.gates, c.n, c.d)).unwrap(),
    );
    let index = SparseIndex::new(&c.sel, c.n, &Device::Cpu).unwrap();
    let y = sparse_adapter_forward(&t2(&c.x, c.t, c.d), &kv, &vv, GateInput::Gated(&gv), &index).unwrap();
    let loss = (y * t2(&w, c.t, c.d)).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let eps = 1e-6;
    let params = [(&kv, c.keys.clone()), (&vv, c.values.clone()), (&gv, c.gates.clone())];
    for (which, (var, base)) in params.iter().enumerate() {
        let analytic = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for i in 0..base.len() {
            let bump = |delta: f64| {
                let mut p = [c.keys.clone(), c.values.clone(), c.gates.clone()];
                p[which][i] += delta;
                ref_loss(&c, &p[0], &p[1], &p[2], &w)
            };
            let numeric = (bump(eps) - bump(-eps)) / (2.0 * eps);
            // Central differences in f64: truncation O(eps²) plus rounding ~1e-16/eps.
            assert!(
                (numeric - analytic[i]).abs() <= 1e-6 * (1.0 + numeric.abs()),
                "param {which} elem {i}: numeric {numeric} vs analytic {}",
                analytic[i]
            );
        }
    }
    if evaluation == Evaluation::PerToken {
        // The last working-set row is in no token's selection: exactly zero gradient.
        for var in [&kv, &vv] {
            let g = grads.get(var.as_tensor()).unwrap().get(c.u - 1).unwrap().to_vec1::<f64>().unwrap();
            assert!(g.iter().all(|&x| x == 0.0), "unselected row got {g:?}");
        }
    }
}

#[test]
fn gradients_match_finite_differences_per_token() {
    fd_check(Evaluation::PerToken);
}

#[test]
fn gradients_match_finite_differences_union() {
    fd_check(Evaluation::Union);
}

#[test]
fn bad_index_is_an_error_not_a_panic() {
    let sel = SparseSelection { tokens: 2, row_expert: vec![0, 5], pairs: vec![], evaluation: Evaluation::Union };
    assert!(SparseIndex::new(&sel, 2, &Device::Cpu).is_err());
    let sel = SparseSelection { tokens: 2, row_expert: vec![0, 1], pairs: vec![(2, 0)], evaluation: Evaluation::PerToken };
    assert!(SparseIndex::new(&sel, 2, &Device::Cpu).is_err());
    let sel = SparseSelection { tokens: 2, row_expert: vec![0, 1], pairs: vec![(0, 1)], evaluation: Evaluation::PerToken };
    let index = SparseIndex::new(&sel, 2, &Device::Cpu).unwrap();
    let x = Tensor::zeros((3, 4), DType::F32, &Device::Cpu).unwrap();
    let k = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(sparse_adapter_forward(&x, &k, &k, GateInput::Plain, &index).is_err());
}
