//! Tests of the kernel references against the existing meft-core fast paths.

use super::*;
use crate::rows::gather_rows;
use crate::sparse::{GateInput, SparseIndex, sparse_adapter_forward, sparse_adapter_forward_slow};
use candle_core::{Device, Tensor, Var};

/// f32 reference vs the f64 loop or candle's f32 graph: sums of `d` products, relative to scale.
const TOL: f32 = 1e-4;

/// Small deterministic generator (xorshift64*) so the tests need no extra dependency.
struct StdRng(u64);

impl StdRng {
    fn seed_from_u64(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn randn(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.unit() * 2.0 - 1.0).collect()
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= TOL * scale, "{what}[{i}]: {x} vs {y} (scale {scale})");
    }
}

struct Case {
    d: usize,
    x: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
    gates: Vec<f32>,
    sel: SparseSelection,
}

fn case(seed: u64) -> Case {
    let mut rng = StdRng::seed_from_u64(seed);
    let (t, u, n, d) = (5, 7, 3, 16);
    let mut pairs = Vec::new();
    for tok in 0..t as u32 {
        for r in 0..u as u32 {
            if rng.unit() < 0.4 {
                pairs.push((tok, r));
            }
        }
    }
    pairs.reverse(); // not grouped by token: from_selection must regroup
    let sel =
        SparseSelection { tokens: t, row_expert: (0..u).map(|_| (rng.next() % n as u64) as u32).collect(), pairs, evaluation: Evaluation::PerToken };
    Case { d, x: randn(&mut rng, t * d), keys: randn(&mut rng, u * d), values: randn(&mut rng, u * d), gates: randn(&mut rng, n * d), sel }
}

/// Gate factor `g_{e(r)}·x_t` of every pair of `sel.pairs`.
fn gate_factors(c: &Case) -> Vec<f32> {
    let d = c.d;
    c.sel
        .pairs
        .iter()
        .map(|&(t, r)| {
            let e = c.sel.row_expert[r as usize] as usize;
            (0..d).map(|j| c.gates[e * d + j] * c.x[t as usize * d + j]).sum::<f32>()
        })
        .collect()
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

#[test]
fn forward_matches_slow_reference_plain_and_gated() {
    for seed in 0..4 {
        let c = case(seed);
        let plain = SparsePairs::from_selection(&c.sel, None).unwrap();
        let (y, _) = sparse_pairs_forward_ref(&c.x, &c.keys, &c.values, &plain, c.d);
        let want = sparse_adapter_forward_slow(&to64(&c.x), &to64(&c.keys), &to64(&c.values), None, &c.sel, c.d);
        close(&y, &want.iter().map(|&v| v as f32).collect::<Vec<_>>(), "plain y");
        let gated = SparsePairs::from_selection(&c.sel, Some(&gate_factors(&c)[..])).unwrap();
        let (y, _) = sparse_pairs_forward_ref(&c.x, &c.keys, &c.values, &gated, c.d);
        let want = sparse_adapter_forward_slow(&to64(&c.x), &to64(&c.keys), &to64(&c.values), Some(&to64(&c.gates)), &c.sel, c.d);
        close(&y, &want.iter().map(|&v| v as f32).collect::<Vec<_>>(), "gated y");
    }
}

#[test]
fn backward_matches_candle_autograd_gated() {
    let dev = Device::Cpu;
    for seed in 10..13 {
        let c = case(seed);
        let (t, u, n, d) = (c.sel.tokens, c.sel.rows(), 3, c.d);
        let var = |v: &[f32], r: usize| Var::from_tensor(&Tensor::from_slice(v, (r, d), &dev).unwrap()).unwrap();
        let (x, k, v, g) = (var(&c.x, t), var(&c.keys, u), var(&c.values, u), var(&c.gates, n));
        let dy = randn(&mut StdRng::seed_from_u64(seed + 100), t * d);
        let dy_t = Tensor::from_slice(&dy, (t, d), &dev).unwrap();
        let index = SparseIndex::new(&c.sel, n, &dev).unwrap();
        let y = sparse_adapter_forward(x.as_tensor(), k.as_tensor(), v.as_tensor(), GateInput::Gated(g.as_tensor()), &index).unwrap();
        let grads = (y * &dy_t).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |var: &Var| grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();

        let pairs = SparsePairs::from_selection(&c.sel, Some(&gate_factors(&c)[..])).unwrap();
        let (_, kx) = sparse_pairs_forward_ref(&c.x, &c.keys, &c.values, &pairs, d);
        let gr = sparse_pairs_backward_ref(&c.x, &c.keys, &c.values, &pairs, &kx, &dy, d);
        close(&gr.dkeys, &flat(&k), "dkeys");
        close(&gr.dvalues, &flat(&v), "dvalues");
        // Chain the per-pair gate gradients through g_p = G_e·x_t, as the caller does.
        let (mut dx, mut dg) = (gr.dx.clone(), vec![0.0f32; n * d]);
        for p in 0..pairs.len() {
            let (tk, r) = (pairs.pair_token[p] as usize, pairs.pair_row[p] as usize);
            let e = c.sel.row_expert[r] as usize;
            for j in 0..d {
                dx[tk * d + j] += gr.dgate[p] * c.gates[e * d + j];
                dg[e * d + j] += gr.dgate[p] * c.x[tk * d + j];
            }
        }
        close(&dx, &flat(&x), "dx");
        close(&dg, &flat(&g), "dgates");
    }
}

#[test]
fn place_then_pack_round_trips_and_matches_gather() {
    let mut rng = StdRng::seed_from_u64(7);
    let (row_len, cap) = (6, 9);
    let slots: Vec<u32> = vec![4, 0, 7, 2];
    let staged = randn(&mut rng, slots.len() * row_len);
    let mut dev_rows = vec![0.0f32; cap * row_len];
    place_rows_ref(&staged, row_len, &slots, &mut dev_rows).unwrap();
    // Packing the same slots (the device->host kernel) is rows::gather_rows with slots as ids.
    let mut packed = vec![0.0f32; staged.len()];
    gather_rows(&dev_rows, row_len, &slots, &mut packed).unwrap();
    assert_eq!(packed, staged);
    let untouched: usize = dev_rows.chunks(row_len).filter(|r| r.iter().all(|&v| v == 0.0)).count();
    assert_eq!(untouched, cap - slots.len());
}

#[test]
fn bad_inputs_are_typed_errors() {
    let mut dst = vec![0.0f32; 12];
    assert!(matches!(place_rows_ref(&[0.0; 6], 6, &[2], &mut dst), Err(RowsError::RowOutOfRange { id: 2, .. })));
    assert!(matches!(place_rows_ref(&[0.0; 5], 6, &[0], &mut dst), Err(RowsError::LengthMismatch { field: "staged", .. })));
    assert!(matches!(place_rows_ref(&[], 0, &[], &mut dst), Err(RowsError::ZeroRowLen)));
    let mut c = case(1);
    assert!(matches!(SparsePairs::from_selection(&c.sel, Some(&[1.0][..])), Err(PairsError::GateCount { .. })));
    c.sel.pairs.push((99, 0));
    assert!(matches!(SparsePairs::from_selection(&c.sel, None), Err(PairsError::PairOutOfRange { token: 99, .. })));
    c.sel.evaluation = Evaluation::Union;
    assert_eq!(SparsePairs::from_selection(&c.sel, None), Err(PairsError::NotPerToken));
}
