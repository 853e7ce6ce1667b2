//! Host AdamW: against PyTorch (committed fixture), fast vs slow, lazy invariants, bad input.
//!
//! Tolerances: fast vs slow after one step from the same state,
//! `|fast − slow| ≤ FAST_VS_SLOW_REL_TOL · (|slow| + |slow − before|)` per element (the second
//! term covers elements whose update dominates the parameter). Against torch after 5 steps:
//! `|ours − torch| ≤ 2e-6·|torch| + 1e-8`.

use meft_core::optim::{
    AdamWBuffers, AdamWConfig, FAST_VS_SLOW_REL_TOL, FiniteCheck, OptimError, StepOutcome, adamw_dense, adamw_dense_slow, adamw_lazy_rows,
    adamw_lazy_rows_slow,
};
use meft_core::rows::RowsError;
use proptest::prelude::*;

/// The optimizer state of one store.
#[derive(Clone, Debug, PartialEq)]
struct State {
    p: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl State {
    fn new(p: Vec<f32>) -> Self {
        let n = p.len();
        Self { p, m: vec![0.0; n], v: vec![0.0; n] }
    }

    fn bufs<'a>(&'a mut self, g: &'a [f32]) -> AdamWBuffers<'a> {
        AdamWBuffers { params: &mut self.p, grads: g, m: &mut self.m, v: &mut self.v }
    }

    fn bits(&self) -> Vec<u32> {
        self.p.iter().chain(&self.m).chain(&self.v).map(|x| x.to_bits()).collect()
    }
}

type Step = fn(&AdamWConfig, u64, AdamWBuffers<'_>) -> Result<StepOutcome, OptimError>;
type LazyStep = fn(&AdamWConfig, usize, &[u32], AdamWBuffers<'_>, &mut [u64]) -> Result<StepOutcome, OptimError>;

/// Asserts `|got − want| ≤ rel·|want| + rel·scale[i] + abs` element-wise.
fn check(what: &str, got: &[f32], want: &[f32], scale: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for i in 0..got.len() {
        let tol = rel * want[i].abs() + rel * scale.get(i).map_or(0.0, |s| s.abs()) + abs;
        assert!((got[i] - want[i]).abs() <= tol, "{what}[{i}]: got {} want {} (tol {tol})", got[i], want[i]);
    }
}

// ---------------------------------------------------------------- the torch fixture

#[derive(serde::Deserialize)]
struct Fixture {
    steps: usize,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    n_rows: usize,
    row_len: usize,
    every_step_rows: Vec<usize>,
    never_rows: Vec<usize>,
    init: Vec<f32>,
    grads: Vec<Vec<f32>>,
    touched: Vec<Vec<u32>>,
    params: Vec<Vec<f32>>,
    fused_params: Vec<Vec<f32>>,
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
}

impl Case {
    fn cfg(&self) -> AdamWConfig {
        let Self { lr, beta1, beta2, eps, weight_decay, .. } = *self;
        AdamWConfig { lr, beta1, beta2, eps, weight_decay, finite_check: FiniteCheck::Scan }
    }
}

fn fixture() -> Fixture {
    let text = include_str!("fixtures/adamw_torch.json");
    serde_json::from_str(text).expect("fixture parses; regenerate with tools/golden/make_adamw_fixture.py")
}

const TORCH_REL: f32 = 2e-6;
const TORCH_ABS: f32 = 1e-8;

#[test]
fn dense_matches_torch_every_step() {
    let fx = fixture();
    for case in &fx.cases {
        assert_eq!(case.init.len(), case.n_rows * case.row_len);
        for (name, step_fn) in [("fast", adamw_dense as Step), ("slow", adamw_dense_slow as Step)] {
            let mut st = State::new(case.init.clone());
            for t in 0..fx.steps {
                let out = step_fn(&case.cfg(), t as u64 + 1, st.bufs(&case.grads[t])).unwrap();
                assert_eq!(out, StepOutcome::Applied);
                let what = format!("{} {name} step {}", case.name, t + 1);
                check(&what, &st.p, &case.params[t], &[], TORCH_REL, TORCH_ABS);
                check(&format!("{what} vs fused"), &st.p, &case.fused_params[t], &[], TORCH_REL, TORCH_ABS);
            }
            check(&format!("{} {name} exp_avg", case.name), &st.m, &case.exp_avg, &[], TORCH_REL, TORCH_ABS);
            check(&format!("{} {name} exp_avg_sq", case.name), &st.v, &case.exp_avg_sq, &[], TORCH_REL, 1e-12);
        }
    }
}

#[test]
fn lazy_matches_torch_on_rows_touched_every_step() {
    let fx = fixture();
    for case in &fx.cases {
        let rl = case.row_len;
        for (name, step_fn) in [("fast", adamw_lazy_rows as LazyStep), ("slow", adamw_lazy_rows_slow as LazyStep)] {
            let mut st = State::new(case.init.clone());
            let mut steps = vec![0u64; case.n_rows];
            for t in 0..fx.steps {
                let out = step_fn(&case.cfg(), rl, &case.touched[t], st.bufs(&case.grads[t]), &mut steps).unwrap();
                assert_eq!(out, StepOutcome::Applied);
            }
            // Rows 0-3 every step, row 4 never, row 5 on steps 1, 4 and 5.
            assert_eq!(steps, vec![5, 5, 5, 5, 0, 3], "{} {name} row steps", case.name);
            let last = &case.params[fx.steps - 1];
            for &r in &case.every_step_rows {
                let span = r * rl..(r + 1) * rl;
                let what = format!("{} lazy {name} row {r}", case.name);
                check(&what, &st.p[span.clone()], &last[span.clone()], &[], TORCH_REL, TORCH_ABS);
                check(&format!("{what} m"), &st.m[span.clone()], &case.exp_avg[span.clone()], &[], TORCH_REL, TORCH_ABS);
                check(&format!("{what} v"), &st.v[span.clone()], &case.exp_avg_sq[span], &[], TORCH_REL, 1e-12);
            }
            for &r in &case.never_rows {
                let span = r * rl..(r + 1) * rl;
                let init_bits: Vec<u32> = case.init[span.clone()].iter().map(|x| x.to_bits()).collect();
                let bits: Vec<u32> = st.p[span.clone()].iter().map(|x| x.to_bits()).collect();
                assert_eq!(bits, init_bits, "{} never-touched row {r} moved", case.name);
                assert!(st.m[span.clone()].iter().chain(&st.v[span]).all(|x| x.to_bits() == 0));
            }
        }
    }
}

// ---------------------------------------------------------------- fast vs slow

/// Random hyperparameters over the ranges used in practice and some beyond.
fn any_cfg() -> impl Strategy<Value = AdamWConfig> {
    (1e-6f64..0.1, 0.0f64..0.99, 0.0f64..0.9999, 1e-8f64..1e-3, prop_oneof![Just(0.0), 0.0f64..0.2])
        .prop_map(|(lr, beta1, beta2, eps, weight_decay)| AdamWConfig { lr, beta1, beta2, eps, weight_decay, finite_check: FiniteCheck::Scan })
}

/// A random mid-training state and gradient of `n` elements (a quarter of the gradients zero).
fn any_state(n: std::ops::Range<usize>) -> impl Strategy<Value = (State, Vec<f32>)> {
    n.prop_flat_map(|n| {
        let vals = |lo: f32, hi: f32| proptest::collection::vec(lo..hi, n);
        let grad = proptest::collection::vec(prop_oneof![1 => Just(0.0f32), 3 => -10.0f32..10.0], n);
        (vals(-2.0, 2.0), vals(-1.0, 1.0), vals(0.0, 4.0), grad).prop_map(|(p, m, v, g)| (State { p, m, v }, g))
    })
}

/// Runs the fast and the slow step from the same state and compares (see the file header).
fn compare_one_step(fast: State, slow: State, before: &[f32]) {
    let change: Vec<f32> = slow.p.iter().zip(before).map(|(a, b)| a - b).collect();
    check("p", &fast.p, &slow.p, &change, FAST_VS_SLOW_REL_TOL, 0.0);
    check("m", &fast.m, &slow.m, &[], FAST_VS_SLOW_REL_TOL, 0.0);
    check("v", &fast.v, &slow.v, &[], FAST_VS_SLOW_REL_TOL, 0.0);
}

/// A store of 24 rows of 1..40 elements each.
fn lazy_case() -> impl Strategy<Value = (usize, State, Vec<f32>)> {
    (1usize..40).prop_flat_map(|rl| (Just(rl), any_state(rl * 24..rl * 24 + 1))).prop_map(|(rl, (st, g))| (rl, st, g))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn dense_fast_matches_slow((st, g) in any_state(0..3000), cfg in any_cfg(), step in 1u64..2000) {
        let (mut fast, mut slow) = (st.clone(), st.clone());
        prop_assert_eq!(adamw_dense(&cfg, step, fast.bufs(&g)).unwrap(), StepOutcome::Applied);
        prop_assert_eq!(adamw_dense_slow(&cfg, step, slow.bufs(&g)).unwrap(), StepOutcome::Applied);
        compare_one_step(fast, slow, &st.p);
    }

    #[test]
    fn lazy_fast_matches_slow_and_leaves_untouched_rows(
        (row_len, st, g) in lazy_case(),
        mask in proptest::collection::vec(any::<bool>(), 24),
        steps0 in proptest::collection::vec(0u64..50, 24),
        cfg in any_cfg(),
    ) {
        let touched: Vec<u32> = (0..24u32).filter(|&r| mask[r as usize]).collect();
        let (mut fast, mut slow) = (st.clone(), st.clone());
        let (mut fast_steps, mut slow_steps) = (steps0.clone(), steps0.clone());
        let out = adamw_lazy_rows(&cfg, row_len, &touched, fast.bufs(&g), &mut fast_steps);
        prop_assert_eq!(out, Ok(StepOutcome::Applied));
        let out = adamw_lazy_rows_slow(&cfg, row_len, &touched, slow.bufs(&g), &mut slow_steps);
        prop_assert_eq!(out, Ok(StepOutcome::Applied));
        prop_assert_eq!(&fast_steps, &slow_steps);
        for r in 0..24 {
            prop_assert_eq!(fast_steps[r], steps0[r] + u64::from(mask[r]));
            if !mask[r] {
                let span = r * row_len..(r + 1) * row_len;
                let row_bits = |s: &State| {
                    let b = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    (b(&s.p[span.clone()]), b(&s.m[span.clone()]), b(&s.v[span.clone()]))
                };
                prop_assert_eq!(row_bits(&fast), row_bits(&st), "untouched row {} changed", r);
            }
        }
        compare_one_step(fast, slow, &st.p);
    }
}

/// Deterministic pseudo-random values in [-1, 1).
fn lcg_vec(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn parallel_paths_match_slow_over_several_steps() {
    // Large enough for the rayon paths (dense chunks, lazy row splitting), odd length and row_len.
    let (row_len, n_rows) = (1151, 301);
    let n = row_len * n_rows;
    let cfg = AdamWConfig { lr: 1e-3, weight_decay: 0.05, ..Default::default() };
    let (mut fast, mut slow) = (State::new(lcg_vec(1, n)), State::new(lcg_vec(1, n)));
    let (mut fast_lazy, mut slow_lazy) = (fast.clone(), slow.clone());
    let (mut fs, mut ss) = (vec![0u64; n_rows], vec![0u64; n_rows]);
    for step in 1..=4u64 {
        let g = lcg_vec(100 + step, n);
        let touched: Vec<u32> = (0..n_rows as u32).filter(|r| !(r * 7 + step as u32).is_multiple_of(3)).collect();
        assert_eq!(adamw_dense(&cfg, step, fast.bufs(&g)), Ok(StepOutcome::Applied));
        assert_eq!(adamw_dense_slow(&cfg, step, slow.bufs(&g)), Ok(StepOutcome::Applied));
        assert_eq!(adamw_lazy_rows(&cfg, row_len, &touched, fast_lazy.bufs(&g), &mut fs), Ok(StepOutcome::Applied));
        let out = adamw_lazy_rows_slow(&cfg, row_len, &touched, slow_lazy.bufs(&g), &mut ss);
        assert_eq!(out, Ok(StepOutcome::Applied));
    }
    assert_eq!(fs, ss);
    // Four steps of lr 1e-3: each element's update is at most ~lr·(1−β₁)/√(1−β₂) per step.
    let scale = vec![4.0 * 3.2e-3; n];
    for (what, f, s) in [("dense", &fast, &slow), ("lazy", &fast_lazy, &slow_lazy)] {
        check(&format!("{what} p"), &f.p, &s.p, &scale, 4.0 * FAST_VS_SLOW_REL_TOL, 0.0);
        check(&format!("{what} m"), &f.m, &s.m, &[], FAST_VS_SLOW_REL_TOL, 0.0);
        check(&format!("{what} v"), &f.v, &s.v, &[], FAST_VS_SLOW_REL_TOL, 0.0);
    }
}

// ---------------------------------------------------------------- non-finite gradients

#[test]
fn non_finite_gradient_skips_without_writing() {
    let cfg = AdamWConfig { weight_decay: 0.1, ..Default::default() };
    let (row_len, n_rows) = (7, 50_000 / 7);
    let n = row_len * n_rows;
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut g = lcg_vec(3, n);
        g[n - 10] = bad;
        g[n - 3] = bad;
        let st0 = State { p: lcg_vec(4, n), m: lcg_vec(5, n), v: vec![0.25; n] };
        for (name, f) in [("fast", adamw_dense as Step), ("slow", adamw_dense_slow as Step)] {
            let mut st = st0.clone();
            let out = f(&cfg, 3, st.bufs(&g)).unwrap();
            assert_eq!(out, StepOutcome::SkippedNonFinite { first_bad_index: n - 10 }, "{name} {bad}");
            assert_eq!(st.bits(), st0.bits(), "{name}: skipped step wrote");
        }
        // Lazy reads only touched rows: a bad value in an untouched row does not stop the step.
        let bad_row = (n - 10) / row_len;
        let all_but: Vec<u32> = (0..n_rows as u32).filter(|&r| r as usize != bad_row && r as usize != (n - 3) / row_len).collect();
        let all: Vec<u32> = (0..n_rows as u32).collect();
        for (name, f) in [("fast", adamw_lazy_rows as LazyStep), ("slow", adamw_lazy_rows_slow as LazyStep)] {
            let (mut st, mut steps) = (st0.clone(), vec![2u64; n_rows]);
            let out = f(&cfg, row_len, &all, st.bufs(&g), &mut steps).unwrap();
            assert_eq!(out, StepOutcome::SkippedNonFinite { first_bad_index: n - 10 }, "lazy {name}");
            assert_eq!((st.bits(), steps), (st0.bits(), vec![2u64; n_rows]), "lazy {name}: skipped step wrote");
            let mut steps = vec![2u64; n_rows];
            assert_eq!(f(&cfg, row_len, &all_but, st.bufs(&g), &mut steps), Ok(StepOutcome::Applied));
            assert!(st.p.iter().all(|x| x.is_finite()));
        }
        // Trusted: no scan, the non-finite value propagates like in PyTorch.
        let mut st = st0.clone();
        let trusted = AdamWConfig { finite_check: FiniteCheck::Trusted, ..cfg };
        assert_eq!(adamw_dense(&trusted, 3, st.bufs(&g)), Ok(StepOutcome::Applied));
        assert!(!st.p[n - 10].is_finite() && st.p[n - 11].is_finite());
    }
}

// ---------------------------------------------------------------- bad input

#[test]
fn bad_input_is_a_typed_error() {
    let cfg = AdamWConfig::default();
    let g = vec![0.1f32; 12];
    let mut st = State::new(vec![1.0; 12]);
    assert_eq!(adamw_dense(&cfg, 0, st.bufs(&g)), Err(OptimError::StepZero));
    let bad_cfg = AdamWConfig { eps: 0.0, ..cfg };
    assert!(matches!(adamw_dense(&bad_cfg, 1, st.bufs(&g)), Err(OptimError::InvalidConfig { field: "eps", .. })));
    assert!(matches!(adamw_lazy_rows(&bad_cfg, 4, &[0], st.bufs(&g), &mut [0; 3]), Err(OptimError::InvalidConfig { .. })));
    let short = vec![0.1f32; 11];
    let err = adamw_dense(&cfg, 1, st.bufs(&short)).unwrap_err();
    assert_eq!(err, OptimError::LengthMismatch { field: "grads", expected: 12, got: 11 });
    let mut short_m = State { m: vec![0.0; 13], ..st.clone() };
    assert!(matches!(adamw_dense_slow(&cfg, 1, short_m.bufs(&g)), Err(OptimError::LengthMismatch { field: "m", .. })));

    let lazy = |rl: usize, ids: &[u32], steps: usize| {
        let mut st = State::new(vec![1.0; 12]);
        let (fast, slow) = (
            adamw_lazy_rows(&cfg, rl, ids, st.clone().bufs(&g), &mut vec![0; steps]),
            adamw_lazy_rows_slow(&cfg, rl, ids, st.bufs(&g), &mut vec![0; steps]),
        );
        assert_eq!(fast, slow);
        fast
    };
    assert_eq!(lazy(4, &[0, 2], 3), Ok(StepOutcome::Applied));
    assert_eq!(lazy(0, &[0], 3), Err(OptimError::Rows(RowsError::ZeroRowLen)));
    assert!(matches!(lazy(5, &[0], 3), Err(OptimError::Rows(RowsError::NotWholeRows { field: "params", .. }))));
    assert!(matches!(lazy(4, &[0], 2), Err(OptimError::LengthMismatch { field: "row_steps", expected: 3, got: 2 })));
    assert_eq!(lazy(4, &[0, 3], 3), Err(OptimError::Rows(RowsError::RowOutOfRange { position: 1, id: 3, n_rows: 3 })));
    assert_eq!(lazy(4, &[1, 1], 3), Err(OptimError::Rows(RowsError::NotStrictlyIncreasing { position: 1, prev: 1, id: 1 })));
    assert!(matches!(lazy(4, &[2, 0], 3), Err(OptimError::Rows(RowsError::NotStrictlyIncreasing { .. }))));
    let msg = lazy(4, &[2, 0], 3).unwrap_err().to_string();
    assert!(msg.contains("sort and dedup"), "{msg}");
}
