//! The fast Key-Experts routing path: gate scores, top-P experts, tokens grouped by expert, one
//! small score block per expert against its own keys (no key copies), then per-token top-K.

use crate::config::{FiniteCheck, RouteConfig, Scoring};
use crate::error::{Operand, Result, RouteError};
use crate::inputs::{GateSource, KeysView, RouteInputs, Rows};
use crate::kernel::score_block;
use crate::layout::ExpertLayout;
use crate::output::Routing;
use crate::topk::TopKRow;
use crate::union::{UnionScratch, build_union};
use rayon::prelude::*;

/// Candidate scores held at once (floats); larger batches are routed in token batches.
const CANDIDATE_BUDGET: usize = 1 << 24;
/// Tokens per parallel task when computing gate scores.
const GATE_TOKEN_BLOCK: usize = 32;

/// Reusable buffers of [`route`]: keep one per layer (or per worker) to avoid allocating per call.
#[derive(Debug, Default)]
pub struct RouteScratch {
    gate_scores: Vec<f32>,
    offsets: Vec<usize>,
    fill: Vec<usize>,
    members: Vec<u32>,
    cand_pos: Vec<usize>,
    cands: Vec<f32>,
    scored: Vec<bool>,
    union: UnionScratch,
}

/// Validated shape of a call.
pub(crate) struct Shape {
    pub(crate) tokens: usize,
    pub(crate) dim: usize,
}

/// Shape and finiteness checks shared by every path (keys are checked later, see [`FiniteCheck`]).
pub(crate) fn check_inputs(inputs: &RouteInputs<'_>, layout: &ExpertLayout, gates_used: bool) -> Result<Shape> {
    let dim = inputs.keys.dim();
    let tokens = inputs.x.rows();
    inputs.keys.expect_rows(layout.neurons())?;
    if inputs.x.cols() != dim {
        return Err(RouteError::DimMismatch { what: Operand::X, expected: dim, got: inputs.x.cols() });
    }
    if gates_used {
        match inputs.gates {
            GateSource::Gates(g) => g.expect(Operand::Gates, layout.experts(), dim)?,
            GateSource::Scores(s) => s.expect(Operand::GateScores, tokens, layout.experts())?,
        }
    }
    inputs.x.check_finite(Operand::X)?;
    if gates_used {
        match inputs.gates {
            GateSource::Gates(g) => g.check_finite(Operand::Gates)?,
            GateSource::Scores(s) => s.check_finite(Operand::GateScores)?,
        }
    }
    Ok(Shape { tokens, dim })
}

/// The T×N gate scores: borrowed when precomputed, else computed into `buf`.
pub(crate) fn gate_scores<'b>(inputs: &RouteInputs<'b>, buf: &'b mut Vec<f32>) -> Result<&'b [f32]> {
    let gates = match inputs.gates {
        GateSource::Scores(s) => return Ok(s.as_slice()),
        GateSource::Gates(g) => g,
    };
    let (t, n, d) = (inputs.x.rows(), gates.rows(), gates.cols());
    buf.clear();
    buf.resize(t * n, 0.0);
    let gview = KeysView::f32(gates.as_slice(), n, d, d)?;
    let x = inputs.x.as_slice();
    buf.par_chunks_mut(GATE_TOKEN_BLOCK * n.max(1)).enumerate().for_each(|(blk, out)| {
        let t0 = blk * GATE_TOKEN_BLOCK;
        let toks: Vec<u32> = (t0 as u32..(t0 + out.len() / n.max(1)) as u32).collect();
        score_block(x, &toks, &gview, 0, n, out, n);
    });
    if let Some(pos) = buf.iter().position(|v| !v.is_finite()) {
        let (token, row) = (pos / n, pos % n);
        return Err(RouteError::ScoreOverflow { token, row, what: Operand::Gates, value: buf[pos] });
    }
    Ok(buf)
}

/// Key-Experts routing (spec §3): the fast path. See [`crate::route_slow`] for the reference it matches
/// exactly (same ids, bit-identical scores).
///
/// ```
/// use meft_router::*;
/// let (d, m, t) = (8, 64, 3);
/// let keys: Vec<f32> = (0..m * d).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
/// let x: Vec<f32> = (0..t * d).map(|i| ((i * 13 % 7) as f32) - 3.0).collect();
/// let layout = ExpertLayout::new(m, 8)?;
/// let view = KeysView::f32(&keys, m, d, d)?;
/// let gates = init_gates(&view, &layout)?;
/// let inputs = RouteInputs { x: Rows::new(&x, t, d)?, keys: view, gates: GateSource::Gates(Rows::new(&gates, 8, d)?) };
/// let cfg = RouteConfig { capacity: Capacity::Rows(10), ..RouteConfig::new(2, 4) };
/// let r = route(&inputs, &layout, &cfg, &mut RouteScratch::default())?;
/// assert_eq!(r.token_ids(0).len(), 4);
/// assert!(r.union().len() <= 10);
/// for (id, slot) in r.token_ids(1).iter().zip(r.token_slots(1)) {
///     if *slot != DROPPED { assert_eq!(r.union()[*slot as usize], *id); }
/// }
/// assert_eq!(r, route_slow(&inputs, &layout, &cfg)?);
/// # Ok::<(), RouteError>(())
/// ```
pub fn route(inputs: &RouteInputs<'_>, layout: &ExpertLayout, cfg: &RouteConfig, scratch: &mut RouteScratch) -> Result<Routing> {
    let mut out = Routing::default();
    route_into(inputs, layout, cfg, scratch, &mut out)?;
    Ok(out)
}

/// [`route`] writing into an existing [`Routing`] (its buffers are reused).
pub fn route_into(inputs: &RouteInputs<'_>, layout: &ExpertLayout, cfg: &RouteConfig, scratch: &mut RouteScratch, out: &mut Routing) -> Result<()> {
    cfg.validate(layout)?;
    let shape = check_inputs(inputs, layout, true)?;
    let (t, p, width) = (shape.tokens, cfg.top_p, cfg.width(layout));
    let mut gbuf_owned = std::mem::take(&mut scratch.gate_scores);
    let result = (|| {
        let g = gate_scores(inputs, &mut gbuf_owned)?;
        out.experts.resize(t * p, 0);
        top_p_experts(g, layout.experts(), p, &mut out.experts);
        out.ids.resize(t * width, 0);
        out.scores.resize(t * width, 0.0);
        let batch = (CANDIDATE_BUDGET / (p * layout.per_expert())).clamp(1, t.max(1));
        scratch.scored.clear();
        scratch.scored.resize(layout.experts(), false);
        for t0 in (0..t).step_by(batch) {
            let t1 = (t0 + batch).min(t);
            route_batch(inputs, layout, cfg, g, t0..t1, scratch, out)?;
        }
        if cfg.finite_check == FiniteCheck::Full {
            check_unscored(&inputs.keys, layout, &scratch.scored)?;
        }
        Ok(())
    })();
    scratch.gate_scores = gbuf_owned;
    result?;
    out.tokens = t;
    out.top_p = p;
    out.width = width;
    let mut stats = build_union(&out.ids, &out.scores, layout.neurons(), cfg.capacity, &mut scratch.union, &mut out.union, &mut out.slots);
    stats.tokens = t;
    out.stats = stats;
    Ok(())
}

/// Each token's top-P experts by gate score (ties: lower expert id), best first.
pub(crate) fn top_p_experts(g: &[f32], n: usize, p: usize, experts: &mut [u32]) {
    let mut scores = vec![0.0f32; experts.len()];
    experts.par_chunks_mut(p).zip(scores.par_chunks_mut(p)).enumerate().for_each(|(t, (ids, sc))| {
        let mut row = TopKRow::new(ids, sc);
        for (e, &s) in g[t * n..(t + 1) * n].iter().enumerate() {
            row.push(e as u32, s);
        }
    });
}

/// Scores and selects tokens `range` (one candidate buffer's worth).
fn route_batch(
    inputs: &RouteInputs<'_>,
    layout: &ExpertLayout,
    cfg: &RouteConfig,
    g: &[f32],
    range: std::ops::Range<usize>,
    s: &mut RouteScratch,
    out: &mut Routing,
) -> Result<()> {
    let (p, m, n) = (cfg.top_p, layout.per_expert(), layout.experts());
    group_by_expert(&out.experts[range.start * p..range.end * p], range.start, p, m, n, s);
    for (e, w) in s.offsets.windows(2).enumerate() {
        s.scored[e] |= w[1] > w[0];
    }
    s.cands.resize(s.members.len() * m, 0.0);
    score_experts(inputs.x, &inputs.keys, layout, &s.offsets, &s.members, &mut s.cands);
    let width = cfg.width(layout);
    let rows = range.start * width..range.end * width;
    let (cands, cand_pos, experts) = (&s.cands, &s.cand_pos, &out.experts);
    out.ids[rows.clone()].par_chunks_mut(width).zip(out.scores[rows].par_chunks_mut(width)).enumerate().try_for_each(|(r, (ids, sc))| {
        let t = range.start + r;
        let mut row = TopKRow::new(ids, sc);
        for (q, &e) in experts[t * p..(t + 1) * p].iter().enumerate() {
            let block = &cands[cand_pos[r * p + q]..][..m];
            let gate = g[t * n + e as usize];
            push_block(&mut row, block, e as usize * m, gate, cfg.scoring)
                .map_err(|c| bad_score(inputs, t, e as usize * m + c, block[c], gate, cfg.scoring))?;
        }
        Ok(())
    })
}

/// Offers one expert block's candidates; on a non-finite score returns its column.
#[inline]
pub(crate) fn push_block(row: &mut TopKRow<'_>, block: &[f32], first_id: usize, gate: f32, scoring: Scoring) -> std::result::Result<(), usize> {
    for (c, &dot) in block.iter().enumerate() {
        let s = match scoring {
            Scoring::Gated => dot * gate,
            Scoring::Plain => dot,
        };
        if !s.is_finite() {
            return Err(c);
        }
        row.push((first_id + c) as u32, s);
    }
    Ok(())
}

/// The error for a non-finite candidate score: a bad key row, or an overflow of finite inputs.
pub(crate) fn bad_score(inputs: &RouteInputs<'_>, token: usize, neuron: usize, dot: f32, gate: f32, scoring: Scoring) -> RouteError {
    if let Some((col, value)) = inputs.keys.row_non_finite(neuron) {
        return RouteError::NonFinite { what: Operand::Keys, row: neuron, col, value };
    }
    let value = match scoring {
        Scoring::Gated => dot * gate,
        Scoring::Plain => dot,
    };
    RouteError::ScoreOverflow { token, row: neuron, what: Operand::Keys, value }
}

/// Counting sort of the batch's (token, expert) pairs by expert: `members` lists each expert's
/// tokens and `cand_pos[pair]` is where that pair's m scores start in the candidate buffer.
fn group_by_expert(experts: &[u32], t0: usize, p: usize, m: usize, n: usize, s: &mut RouteScratch) {
    s.offsets.clear();
    s.offsets.resize(n + 1, 0);
    for &e in experts {
        s.offsets[e as usize + 1] += 1;
    }
    for e in 0..n {
        s.offsets[e + 1] += s.offsets[e];
    }
    s.members.resize(experts.len(), 0);
    s.cand_pos.resize(experts.len(), 0);
    s.fill.clear();
    s.fill.extend_from_slice(&s.offsets[..n]);
    for (pair, &e) in experts.iter().enumerate() {
        let slot = s.fill[e as usize];
        s.fill[e as usize] += 1;
        s.members[slot] = (t0 + pair / p) as u32;
        s.cand_pos[pair] = slot * m;
    }
}

/// One score block per probed expert: its tokens × its own m keys, in parallel over experts.
fn score_experts(x: Rows<'_>, keys: &KeysView<'_>, layout: &ExpertLayout, offsets: &[usize], members: &[u32], cands: &mut [f32]) {
    let m = layout.per_expert();
    let mut parts: Vec<(usize, &mut [f32])> = Vec::with_capacity(layout.experts());
    let mut rest = cands;
    for (e, w) in offsets.windows(2).enumerate() {
        let (head, tail) = rest.split_at_mut((w[1] - w[0]) * m);
        rest = tail;
        if w[1] > w[0] {
            parts.push((e, head));
        }
    }
    parts.into_par_iter().for_each(|(e, buf)| {
        let toks = &members[offsets[e]..offsets[e + 1]];
        score_block(x.as_slice(), toks, keys, e * m, m, buf, m);
    });
}

/// With [`FiniteCheck::Full`]: scans the key rows of experts no token probed.
fn check_unscored(keys: &KeysView<'_>, layout: &ExpertLayout, scored: &[bool]) -> Result<()> {
    let bad: Vec<usize> = (0..layout.experts()).filter(|&e| !scored[e]).collect();
    bad.into_par_iter().try_for_each(|e| keys.check_rows_finite(layout.block(e)))
}
