//! Property tests of the Key-Experts router (issue 3, properties 1–6), each over ≥ 256 random cases.
//!
//! Data comes in two kinds: uniform reals, and small integers (exact arithmetic, many exact ties, so the
//! tie rule is exercised). Every case also checks that the fast path equals the slow reference exactly.

use half::bf16;
use meft_router::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

/// Value distribution of a case.
#[derive(Debug, Clone, Copy)]
enum Values {
    Reals,
    SmallInts,
}

/// Key storage of a case.
#[derive(Debug, Clone, Copy)]
enum KeyKind {
    F32,
    Bf16,
}

#[derive(Debug, Clone)]
struct Case {
    n: usize,
    m: usize,
    d: usize,
    t: usize,
    p: usize,
    k: usize,
    stride: usize,
    scoring: Scoring,
    capacity: Capacity,
    keys: KeyKind,
    precomputed_gates: bool,
    x: Vec<f32>,
    key_f32: Vec<f32>,
    key_bf16: Vec<bf16>,
    gates: Vec<f32>,
}

fn values(len: usize, seed: u64, kind: Values) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            match kind {
                Values::Reals => (2.0 * u - 1.0) as f32,
                Values::SmallInts => ((u * 7.0).floor() - 3.0) as f32,
            }
        })
        .collect()
}

prop_compose! {
    fn case()(n in 1usize..10, m in 1usize..9, d in 1usize..40, t in 1usize..9, seed in any::<u64>(),
              ints in any::<bool>(), gated in any::<bool>(), bf in any::<bool>(), bundled in any::<bool>(),
              pre in any::<bool>(), pf in 0.0f64..1.0, kf in 0.0f64..1.3, cap in 0usize..40, capped in any::<bool>())
              -> Case {
        let kind = if ints { Values::SmallInts } else { Values::Reals };
        let p = 1 + ((n - 1) as f64 * pf) as usize;
        let k = 1 + ((p * m) as f64 * kf) as usize;
        let stride = if bundled { 2 * d } else { d };
        let mtot = n * m;
        let x = values(t * d, seed, kind);
        let key_f32 = values(mtot * stride, seed ^ 0x9e37, kind);
        let key_bf16 = key_f32.iter().map(|&v| bf16::from_f32(v)).collect();
        let gates = if pre { values(t * n, seed ^ 0x51, kind) } else { values(n * d, seed ^ 0x77, kind) };
        Case {
            n, m, d, t, p, k, stride, x, key_f32, key_bf16, gates,
            scoring: if gated { Scoring::Gated } else { Scoring::Plain },
            capacity: if capped { Capacity::Rows(1 + cap) } else { Capacity::Unlimited },
            keys: if bf { KeyKind::Bf16 } else { KeyKind::F32 },
            precomputed_gates: pre,
        }
    }
}

impl Case {
    fn layout(&self) -> ExpertLayout {
        ExpertLayout::new(self.n * self.m, self.n).unwrap()
    }
    fn cfg(&self) -> RouteConfig {
        RouteConfig { scoring: self.scoring, capacity: self.capacity, ..RouteConfig::new(self.p, self.k) }
    }
    fn inputs_with<'a>(&'a self, x: &'a [f32]) -> RouteInputs<'a> {
        let mtot = self.n * self.m;
        let keys = match self.keys {
            KeyKind::F32 => KeysView::f32(&self.key_f32, mtot, self.d, self.stride).unwrap(),
            KeyKind::Bf16 => KeysView::bf16(&self.key_bf16, mtot, self.d, self.stride).unwrap(),
        };
        let gates = if self.precomputed_gates {
            GateSource::Scores(Rows::new(&self.gates, self.t, self.n).unwrap())
        } else {
            GateSource::Gates(Rows::new(&self.gates, self.n, self.d).unwrap())
        };
        RouteInputs { x: Rows::new(x, x.len() / self.d, self.d).unwrap(), keys, gates }
    }
    fn inputs(&self) -> RouteInputs<'_> {
        self.inputs_with(&self.x)
    }
    /// Routes with the fast path and checks it against the slow reference.
    fn route_checked(&self, cfg: &RouteConfig) -> Routing {
        let fast = route(&self.inputs(), &self.layout(), cfg, &mut RouteScratch::default()).unwrap();
        let slow = route_slow(&self.inputs(), &self.layout(), cfg).unwrap();
        assert_eq!(fast, slow, "fast and slow routing differ");
        fast
    }
    /// Every candidate score of token t (all M neurons, P = N semantics), by id.
    fn all_scores(&self, scoring: Scoring) -> TopK {
        let mtot = self.n * self.m;
        dense_top_k_slow(&self.inputs(), &self.layout(), &DenseConfig { top_k: mtot, scoring }).unwrap()
    }
}

fn score_of(all: &TopK, t: usize, id: u32) -> f32 {
    let pos = all.token_ids(t).iter().position(|&i| i == id).unwrap();
    all.token_scores(t)[pos]
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    /// 1. P = N: Key-Experts equals the dense top-K of the gated scores (identical ids and scores).
    #[test]
    fn all_experts_equal_dense_gated(c in case()) {
        let cfg = RouteConfig { top_p: c.n, scoring: Scoring::Gated, capacity: Capacity::Unlimited, ..c.cfg() };
        let r = c.route_checked(&cfg);
        let dcfg = DenseConfig { top_k: c.k, scoring: Scoring::Gated };
        let dense = dense_top_k(&c.inputs(), &c.layout(), &dcfg).unwrap();
        prop_assert_eq!(&dense, &dense_top_k_slow(&c.inputs(), &c.layout(), &dcfg).unwrap());
        prop_assert_eq!(r.ids(), dense.ids());
        let bits = |v: &[f32]| v.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(r.scores()), bits(dense.scores()));
    }

    /// 2. Selections come from the top-P experts, are unique, number min(K, P·m) and are sorted.
    #[test]
    fn selections_are_well_formed(c in case()) {
        let r = c.route_checked(&c.cfg());
        let width = c.k.min(c.p * c.m);
        prop_assert_eq!(r.width(), width);
        for t in 0..c.t {
            let experts: BTreeSet<u32> = r.token_experts(t).iter().copied().collect();
            prop_assert_eq!(experts.len(), c.p);
            let ids = r.token_ids(t);
            prop_assert_eq!(ids.len(), width);
            prop_assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), width);
            for &id in ids {
                prop_assert!(experts.contains(&(id / c.m as u32)));
            }
            for w in r.token_scores(t).windows(2).zip(ids.windows(2)) {
                prop_assert!(w.0[0] > w.0[1] || (w.0[0] == w.0[1] && w.1[0] < w.1[1]));
            }
        }
    }

    /// 3. Top-K optimality: a selected score beats every unselected candidate of the same token
    /// (equal scores: the lower id wins), and the top-P experts beat the others by gate score.
    #[test]
    fn selection_is_optimal(c in case()) {
        let r = c.route_checked(&c.cfg());
        let all = c.all_scores(c.scoring);
        for t in 0..c.t {
            let chosen: BTreeSet<u32> = r.token_ids(t).iter().copied().collect();
            let worst = (*r.token_scores(t).last().unwrap(), *r.token_ids(t).last().unwrap());
            for &e in r.token_experts(t) {
                for id in c.layout().block(e as usize) {
                    let id = id as u32;
                    if !chosen.contains(&id) {
                        let s = score_of(&all, t, id);
                        prop_assert!(s < worst.0 || (s == worst.0 && id > worst.1), "t{} id{} s{} worst{:?}", t, id, s, worst);
                    }
                }
            }
            for &id in &chosen {
                prop_assert_eq!(score_of(&all, t, id), r.token_scores(t)[r.token_ids(t).iter().position(|&i| i == id).unwrap()]);
            }
        }
    }

    /// 4. Union, slots and the capacity cut with an exact drop count.
    #[test]
    fn union_and_capacity(c in case()) {
        let r = c.route_checked(&c.cfg());
        let all: BTreeSet<u32> = r.ids().iter().copied().collect();
        let stats = r.stats();
        prop_assert_eq!(stats.union_before_capacity, all.len());
        let kept: Vec<u32> = match c.capacity {
            Capacity::Rows(cap) if cap < all.len() => {
                prop_assert_eq!(r.union().len(), cap);
                let mut sums = std::collections::BTreeMap::<u32, f64>::new();
                for (&id, &s) in r.ids().iter().zip(r.scores()) {
                    *sums.entry(id).or_default() += f64::from(s.max(0.0));
                }
                let kept: BTreeSet<u32> = r.union().iter().copied().collect();
                for (&a, &sa) in sums.iter().filter(|(id, _)| kept.contains(id)) {
                    for (&b, &sb) in sums.iter().filter(|(id, _)| !kept.contains(id)) {
                        prop_assert!(sa > sb || (sa == sb && a < b), "kept {} ({}) vs dropped {} ({})", a, sa, b, sb);
                    }
                }
                r.union().to_vec()
            }
            _ => all.iter().copied().collect(),
        };
        prop_assert_eq!(r.union(), &kept[..]);
        prop_assert!(r.union().windows(2).all(|w| w[0] < w[1]));
        let mut dropped = 0;
        for (&id, &slot) in r.ids().iter().zip(r.slots()) {
            if slot == DROPPED {
                dropped += 1;
                prop_assert!(r.union().binary_search(&id).is_err());
            } else {
                prop_assert_eq!(r.union()[slot as usize], id);
            }
        }
        prop_assert_eq!(stats.dropped, dropped);
        prop_assert_eq!(stats.union, r.union().len());
        prop_assert_eq!(stats.selections, c.t * r.width());
    }

    /// 5. Permuting tokens permutes the outputs; scaling x by 2^j (exact in floating point) or, on
    /// small-integer data, by a small integer leaves plain-mode selections unchanged.
    #[test]
    fn permutation_and_scaling(c in case(), rot in 0usize..8, j in -3i32..4) {
        let cfg = RouteConfig { capacity: Capacity::Unlimited, ..c.cfg() };
        let mut perm: Vec<usize> = (0..c.t).collect();
        perm.rotate_left(rot % c.t);
        perm.reverse();
        let base = c.route_checked(&cfg);
        let mut xp = Vec::new();
        let mut cp = c.clone();
        for &src in &perm {
            xp.extend_from_slice(&c.x[src * c.d..(src + 1) * c.d]);
        }
        if c.precomputed_gates {
            cp.gates = perm.iter().flat_map(|&s| c.gates[s * c.n..(s + 1) * c.n].to_vec()).collect();
        }
        cp.x = xp;
        let permuted = cp.route_checked(&cfg);
        for (i, &src) in perm.iter().enumerate() {
            prop_assert_eq!(permuted.token_ids(i), base.token_ids(src));
            prop_assert_eq!(permuted.token_scores(i), base.token_scores(src));
        }
        prop_assert_eq!(permuted.union(), base.union());
        let plain = RouteConfig { scoring: Scoring::Plain, ..cfg };
        let before = c.route_checked(&plain);
        let mut scaled = c.clone();
        let factor = 2f32.powi(j);
        scaled.x = c.x.iter().map(|v| v * factor).collect();
        if c.precomputed_gates {
            scaled.gates = c.gates.iter().map(|v| v * factor).collect();
        }
        let after = scaled.route_checked(&plain);
        prop_assert_eq!(after.ids(), before.ids());
    }

    /// 6. Invalid input gives a typed error, never a panic.
    #[test]
    fn invalid_input_is_a_typed_error(c in case(), which in 0usize..9, pos in any::<usize>(), inf in any::<bool>()) {
        let bad = if inf { f32::NEG_INFINITY } else { f32::NAN };
        let mut cfg = c.cfg();
        let mut c2 = c.clone();
        let mut x_cols = c.d;
        match which {
            0 => cfg.top_k = 0,
            1 => cfg.top_p = c.n + 1,
            2 => cfg.capacity = Capacity::Rows(0),
            3 => { c2.x[pos % c.x.len()] = bad; }
            4 => {
                let i = pos % (c.n * c.m);
                let j = (pos / 7) % c.d;
                c2.key_f32[i * c.stride + j] = bad;
                c2.key_bf16[i * c.stride + j] = bf16::from_f32(bad);
            }
            5 => { let l = c2.gates.len(); c2.gates[pos % l] = bad; }
            6 => { c2.x.push(1.0); x_cols = c.d + 1; }
            7 => cfg.top_p = 0,
            _ => { c2.key_f32[pos % c.key_f32.len()] = 3e38; c2.x.iter_mut().for_each(|v| *v = 3e38); c2.key_f32.iter_mut().for_each(|v| *v = 3e38); c2.keys = KeyKind::F32; }
        }
        let x_rows = Rows::new(&c2.x, c2.x.len() / x_cols, x_cols).unwrap();
        let mut inputs = c2.inputs();
        inputs.x = x_rows;
        let fast = route(&inputs, &c2.layout(), &cfg, &mut RouteScratch::default());
        let slow = route_slow(&inputs, &c2.layout(), &cfg);
        prop_assert!(fast.is_err(), "fast accepted case {}: {:?}", which, fast);
        prop_assert!(slow.is_err(), "slow accepted case {}", which);
        let expected_kind = |e: &RouteError| match which {
            0 => matches!(e, RouteError::ZeroTopK),
            1 => matches!(e, RouteError::TooManyProbes { .. }),
            2 => matches!(e, RouteError::ZeroCapacity),
            3 => matches!(e, RouteError::NonFinite { what: Operand::X, .. }),
            4 => matches!(e, RouteError::NonFinite { what: Operand::Keys, .. }),
            5 => matches!(e, RouteError::NonFinite { what: Operand::Gates | Operand::GateScores, .. }),
            6 => matches!(e, RouteError::DimMismatch { what: Operand::X, .. }),
            7 => matches!(e, RouteError::ZeroTopP),
            _ => matches!(e, RouteError::ScoreOverflow { .. }),
        };
        prop_assert!(expected_kind(&fast.unwrap_err()));
        prop_assert!(expected_kind(&slow.unwrap_err()));
        if which == 4 || which == 3 {
            let dense = dense_top_k(&inputs, &c2.layout(), &DenseConfig { top_k: c.k, scoring: Scoring::Plain });
            prop_assert!(dense.is_err());
        }
    }
}
