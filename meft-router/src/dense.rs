//! The dense exact top-K over all M keys ("w/o Key-Experts" and the tests' oracle), streamed in key
//! chunks so that the T×M score matrix never exists.

use crate::config::{DenseConfig, Scoring};
use crate::error::{Result, RouteError};
use crate::inputs::RouteInputs;
use crate::kernel::score_block;
use crate::layout::ExpertLayout;
use crate::output::TopK;
use crate::route::{bad_score, check_inputs, gate_scores};
use crate::slow::dense_width;
use crate::topk::TopKRow;
use rayon::prelude::*;

/// Keys per parallel work item.
const KEY_CHUNK: usize = 252;
/// Bytes of token rows kept hot per pass over a key chunk.
const TOKEN_BLOCK_BYTES: usize = 1 << 20;

/// One worker's running per-token top-K and its score buffer.
struct Partial {
    ids: Vec<u32>,
    scores: Vec<f32>,
    lens: Vec<usize>,
    buf: Vec<f32>,
    err: Option<RouteError>,
}

/// Dense exact top-K of every token over all M keys (fast path of [`crate::dense_top_k_slow`]).
///
/// With [`Scoring::Gated`] each key's score is multiplied by its expert's gate score, which makes this
/// the oracle of Key-Experts with P = N; [`Scoring::Plain`] is the paper's "w/o Key-Experts".
///
/// ```
/// use meft_router::*;
/// let keys = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0, -1.0, 0.0]; // M = 4, d = 2
/// let x = [2.0f32, 1.0];
/// let layout = ExpertLayout::new(4, 2)?;
/// let inputs = RouteInputs {
///     x: Rows::new(&x, 1, 2)?,
///     keys: KeysView::f32(&keys, 4, 2, 2)?,
///     gates: GateSource::Scores(Rows::new(&[1.0, 1.0], 1, 2)?),
/// };
/// let top = dense_top_k(&inputs, &layout, &DenseConfig { top_k: 2, scoring: Scoring::Plain })?;
/// assert_eq!(top.token_ids(0), &[2, 0]);
/// assert_eq!(top.token_scores(0), &[3.0, 2.0]);
/// # Ok::<(), RouteError>(())
/// ```
pub fn dense_top_k(inputs: &RouteInputs<'_>, layout: &ExpertLayout, cfg: &DenseConfig) -> Result<TopK> {
    let width = dense_width(cfg, layout)?;
    let shape = check_inputs(inputs, layout, cfg.scoring == Scoring::Gated)?;
    let mut gbuf = Vec::new();
    let g: &[f32] = match cfg.scoring {
        Scoring::Gated => gate_scores(inputs, &mut gbuf)?,
        Scoring::Plain => &[],
    };
    let (t, mtot, n) = (shape.tokens, layout.neurons(), layout.experts());
    let block = (TOKEN_BLOCK_BYTES / (4 * shape.dim.max(1))).clamp(4, t.max(4)) / 4 * 4;
    let tokens: Vec<u32> = (0..t as u32).collect();
    let new_partial =
        || Partial { ids: vec![0; t * width], scores: vec![0.0; t * width], lens: vec![0; t], buf: vec![0.0; block.min(t) * KEY_CHUNK], err: None };
    let chunks = mtot.div_ceil(KEY_CHUNK);
    let result = (0..chunks)
        .into_par_iter()
        .fold(new_partial, |mut st, c| {
            if st.err.is_none() {
                let b0 = c * KEY_CHUNK;
                let nb = KEY_CHUNK.min(mtot - b0);
                for toks in tokens.chunks(block) {
                    if let Err(e) = score_chunk(inputs, layout, cfg.scoring, g, n, toks, b0, nb, width, &mut st) {
                        st.err = Some(e);
                        break;
                    }
                }
            }
            st
        })
        .reduce(new_partial, |a, b| merge(a, b, width));
    if let Some(e) = result.err {
        return Err(e);
    }
    Ok(TopK { tokens: t, width, ids: result.ids, scores: result.scores })
}

/// Scores `toks` against keys `b0..b0+nb` and folds them into the running top-K.
#[allow(clippy::too_many_arguments)]
fn score_chunk(
    inputs: &RouteInputs<'_>,
    layout: &ExpertLayout,
    scoring: Scoring,
    g: &[f32],
    n: usize,
    toks: &[u32],
    b0: usize,
    nb: usize,
    width: usize,
    st: &mut Partial,
) -> Result<()> {
    score_block(inputs.x.as_slice(), toks, &inputs.keys, b0, nb, &mut st.buf, KEY_CHUNK);
    let m = layout.per_expert();
    for (r, &tok) in toks.iter().enumerate() {
        let t = tok as usize;
        let rows = t * width..(t + 1) * width;
        let mut row = TopKRow::resume(&mut st.ids[rows.clone()], &mut st.scores[rows], st.lens[t]);
        let dots = &st.buf[r * KEY_CHUNK..r * KEY_CHUNK + nb];
        for (c, &dot) in dots.iter().enumerate() {
            let i = b0 + c;
            let (s, gate) = match scoring {
                Scoring::Gated => {
                    let gate = g[t * n + i / m];
                    (dot * gate, gate)
                }
                Scoring::Plain => (dot, 1.0),
            };
            if !s.is_finite() {
                return Err(bad_score(inputs, t, i, dot, gate, scoring));
            }
            row.push(i as u32, s);
        }
        st.lens[t] = row.len();
    }
    Ok(())
}

fn merge(mut a: Partial, b: Partial, width: usize) -> Partial {
    if a.err.is_some() {
        return a;
    }
    if b.err.is_some() {
        return b;
    }
    for t in 0..a.lens.len() {
        let rows = t * width..(t + 1) * width;
        let mut row = TopKRow::resume(&mut a.ids[rows.clone()], &mut a.scores[rows.clone()], a.lens[t]);
        for j in 0..b.lens[t] {
            row.push(b.ids[rows.start + j], b.scores[rows.start + j]);
        }
        a.lens[t] = row.len();
    }
    a
}
