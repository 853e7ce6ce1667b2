//! Straightforward references: Key-Experts routing and the dense top-K, one score at a time with
//! full sorts and ordered sets. The fast paths must match these exactly.

use crate::config::{Capacity, DenseConfig, FiniteCheck, RouteConfig, Scoring};
use crate::error::{Operand, Result, RouteError};
use crate::inputs::{GateSource, KeysView, RouteInputs};
use crate::kernel::dot_slow;
use crate::layout::ExpertLayout;
use crate::output::{DROPPED, RouteStats, Routing, TopK};
use crate::route::{bad_score, check_inputs};
use crate::topk::better;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

fn order(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    if better(a.0, a.1, b.0, b.1) { Ordering::Less } else { Ordering::Greater }
}

/// Gate scores of token t, one canonical dot product per expert.
fn gate_row(inputs: &RouteInputs<'_>, t: usize, n: usize) -> Result<Vec<f32>> {
    match inputs.gates {
        GateSource::Scores(s) => Ok(s.row(t).to_vec()),
        GateSource::Gates(g) => {
            let view = KeysView::f32(g.as_slice(), g.rows(), g.cols(), g.cols())?;
            (0..n)
                .map(|e| {
                    let v = dot_slow(inputs.x.row(t), &view, e);
                    if v.is_finite() { Ok(v) } else { Err(RouteError::ScoreOverflow { token: t, row: e, what: Operand::Gates, value: v }) }
                })
                .collect()
        }
    }
}

fn candidate(inputs: &RouteInputs<'_>, t: usize, i: usize, gate: f32, scoring: Scoring) -> Result<(f32, u32)> {
    let dot = dot_slow(inputs.x.row(t), &inputs.keys, i);
    let s = match scoring {
        Scoring::Gated => dot * gate,
        Scoring::Plain => dot,
    };
    if s.is_finite() { Ok((s, i as u32)) } else { Err(bad_score(inputs, t, i, dot, gate, scoring)) }
}

/// Reference Key-Experts routing: identical results to [`crate::route`], computed plainly.
pub fn route_slow(inputs: &RouteInputs<'_>, layout: &ExpertLayout, cfg: &RouteConfig) -> Result<Routing> {
    cfg.validate(layout)?;
    let shape = check_inputs(inputs, layout, true)?;
    let (n, p, width) = (layout.experts(), cfg.top_p, cfg.width(layout));
    let mut out = Routing { tokens: shape.tokens, top_p: p, width, ..Routing::default() };
    let mut probed = BTreeSet::new();
    for t in 0..shape.tokens {
        let g = gate_row(inputs, t, n)?;
        let mut experts: Vec<(f32, u32)> = g.iter().enumerate().map(|(e, &s)| (s, e as u32)).collect();
        experts.sort_by(order);
        let mut cands = Vec::new();
        for &(gate, e) in &experts[..p] {
            out.experts.push(e);
            probed.insert(e as usize);
            for i in layout.block(e as usize) {
                cands.push(candidate(inputs, t, i, gate, cfg.scoring)?);
            }
        }
        cands.sort_by(order);
        for &(s, id) in &cands[..width] {
            out.ids.push(id);
            out.scores.push(s);
        }
    }
    if cfg.finite_check == FiniteCheck::Full {
        for e in (0..n).filter(|e| !probed.contains(e)) {
            inputs.keys.check_rows_finite(layout.block(e))?;
        }
    }
    apply_union(&mut out, cfg.capacity);
    Ok(out)
}

/// Union, capacity cut by summed ReLU score (token order, f64), slots and counters.
fn apply_union(out: &mut Routing, capacity: Capacity) {
    let all: BTreeSet<u32> = out.ids.iter().copied().collect();
    let mut kept = all.clone();
    if let Capacity::Rows(c) = capacity
        && c < all.len()
    {
        let mut sums: BTreeMap<u32, f64> = BTreeMap::new();
        for (&id, &s) in out.ids.iter().zip(&out.scores) {
            *sums.entry(id).or_insert(0.0) += f64::from(s.max(0.0));
        }
        let mut ranked: Vec<(f64, u32)> = sums.into_iter().map(|(id, s)| (s, id)).collect();
        ranked.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal).then(a.1.cmp(&b.1)));
        kept = ranked[..c].iter().map(|&(_, id)| id).collect();
    }
    out.union = kept.into_iter().collect();
    out.slots = out.ids.iter().map(|id| out.union.binary_search(id).map_or(DROPPED, |s| s as u32)).collect();
    out.stats = RouteStats {
        tokens: out.tokens,
        selections: out.ids.len(),
        union_before_capacity: all.len(),
        union: out.union.len(),
        dropped: out.slots.iter().filter(|&&s| s == DROPPED).count(),
    };
}

/// Checks the dense configuration and returns the per-token width min(K, M).
pub(crate) fn dense_width(cfg: &DenseConfig, layout: &ExpertLayout) -> Result<usize> {
    if cfg.top_k == 0 {
        return Err(RouteError::ZeroTopK);
    }
    Ok(cfg.top_k.min(layout.neurons()))
}

/// Reference dense top-K: every key scored, fully sorted.
pub fn dense_top_k_slow(inputs: &RouteInputs<'_>, layout: &ExpertLayout, cfg: &DenseConfig) -> Result<TopK> {
    let width = dense_width(cfg, layout)?;
    let shape = check_inputs(inputs, layout, cfg.scoring == Scoring::Gated)?;
    let mut out = TopK { tokens: shape.tokens, width, ..TopK::default() };
    for t in 0..shape.tokens {
        let g = match cfg.scoring {
            Scoring::Gated => gate_row(inputs, t, layout.experts())?,
            Scoring::Plain => Vec::new(),
        };
        let mut cands = Vec::with_capacity(layout.neurons());
        for i in 0..layout.neurons() {
            let gate = g.get(layout.expert_of(i)).copied().unwrap_or(1.0);
            cands.push(candidate(inputs, t, i, gate, cfg.scoring)?);
        }
        cands.sort_by(order);
        for &(s, id) in &cands[..width] {
            out.ids.push(id);
            out.scores.push(s);
        }
    }
    Ok(out)
}
