//! The per-token sparse adapter as one autograd node over the bundled working set, costing
//! `O(T·K·d)` instead of the `O(T·U·d)` of the dense-score graph in [`crate::sparse`].
//!
//! For the working set `ws` (`U×2d`, row `r` = `[k_r | v_r]`), the FFN input `x` (`T×d`), the
//! gate matrix `G` (`N×d`, gated scoring) and the per-token pairs `(t, r)` of a
//! [`SparseSelection`]:
//!
//! - forward: `y_t = Σ_{(t,r)} ReLU(s_{t,r})·v_r` with `s = (k_r·x_t)·g_{t,e(r)}`, `g = x·Gᵀ`
//!   (plain scoring: `g = 1`);
//! - backward, with `a = ReLU(s)`, `δ = [s > 0]·(∂y_t·v_r)`:
//!   `∂v_r += a·∂y_t`, `∂k_r += δ·g·x_t`, `∂x_t += δ·g·k_r + Σ_e D_{t,e}·G_e`,
//!   `∂G = Dᵀ·x` with `D_{t,e} = Σ_{(t,r): e(r)=e} δ·(k_r·x_t)`.
//!
//! Tokens are independent in the forward and in `∂x`; `∂k`/`∂v` are summed per row over the
//! row's pairs (a second, row-major index), so each pass runs in parallel without locks and
//! every sum has a fixed order whatever the thread count. Only selected rows and the experts
//! they belong to receive gradient. Reference: [`crate::sparse::sparse_adapter_forward`] (the
//! same function built from candle ops and differentiated by candle), compared in the tests.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

use crate::sparse::{Evaluation, SparseSelection};

/// A per-token selection indexed both by token and by working-set row.
#[derive(Debug, Clone, PartialEq)]
pub struct PairIndex {
    tokens: usize,
    rows: usize,
    experts: usize,
    /// Pairs of token `t` are `token_ptr[t]..token_ptr[t + 1]` of `pair_row` / `pair_token`.
    token_ptr: Vec<u32>,
    pair_row: Vec<u32>,
    pair_token: Vec<u32>,
    /// Pairs of row `r` are `row_pairs[row_ptr[r]..row_ptr[r + 1]]` (pair positions, ascending).
    row_ptr: Vec<u32>,
    row_pairs: Vec<u32>,
    row_expert: Vec<u32>,
}

impl PairIndex {
    /// Indexes the per-token selection `sel` of a layer with `experts` experts.
    ///
    /// # Errors
    /// A union-evaluation selection, or a pair or row expert out of range.
    pub fn new(sel: &SparseSelection, experts: usize) -> Result<Self> {
        if sel.evaluation != Evaluation::PerToken {
            bail!("sparse pairs: union evaluation has no per-token pairs; use the dense sparse adapter");
        }
        let (tokens, rows) = (sel.tokens, sel.rows());
        if let Some(&e) = sel.row_expert.iter().find(|&&e| e as usize >= experts) {
            bail!("sparse pairs: row expert {e} out of range for {experts} experts");
        }
        let mut token_ptr = vec![0u32; tokens + 1];
        let mut row_ptr = vec![0u32; rows + 1];
        for (i, &(t, r)) in sel.pairs.iter().enumerate() {
            if t as usize >= tokens || r as usize >= rows {
                bail!("sparse pairs: pair {i} = (token {t}, row {r}) outside {tokens} tokens × {rows} rows");
            }
            token_ptr[t as usize + 1] += 1;
            row_ptr[r as usize + 1] += 1;
        }
        prefix_sums(&mut token_ptr);
        prefix_sums(&mut row_ptr);
        let n = sel.pairs.len();
        let (mut pair_row, mut pair_token) = (vec![0u32; n], vec![0u32; n]);
        let mut next = token_ptr.clone();
        for &(t, r) in &sel.pairs {
            let at = next[t as usize] as usize;
            next[t as usize] += 1;
            (pair_row[at], pair_token[at]) = (r, t);
        }
        let mut row_pairs = vec![0u32; n];
        let mut next = row_ptr.clone();
        for (p, &r) in pair_row.iter().enumerate() {
            row_pairs[next[r as usize] as usize] = p as u32;
            next[r as usize] += 1;
        }
        Ok(Self { tokens, rows, experts, token_ptr, pair_row, pair_token, row_ptr, row_pairs, row_expert: sel.row_expert.clone() })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pair_row.len()
    }

    /// Whether no token selected any row.
    pub fn is_empty(&self) -> bool {
        self.pair_row.is_empty()
    }

    fn token_pairs(&self, t: usize) -> std::ops::Range<usize> {
        self.token_ptr[t] as usize..self.token_ptr[t + 1] as usize
    }

    fn row_pair_ids(&self, r: usize) -> &[u32] {
        &self.row_pairs[self.row_ptr[r] as usize..self.row_ptr[r + 1] as usize]
    }
}

fn prefix_sums(v: &mut [u32]) {
    for i in 1..v.len() {
        v[i] += v[i - 1];
    }
}

/// Bytes the fused op keeps for its backward: three floats per pair and the `T×N` gate scores.
pub fn fused_activation_bytes(pairs: usize, tokens: usize, gate_experts: usize) -> u64 {
    (4 * (3 * pairs + tokens * gate_experts)) as u64
}

/// The per-token sparse adapter output `T×d` (see the module docs).
///
/// # Shapes
/// `x`: `T×d` f32, `ws`: `U×2d` f32 (bundled `[k | v]` rows), `gates`: `N×d` f32 for gated
/// scoring (`None`: plain). All on the CPU.
pub fn sparse_adapter_fused(x: &Tensor, ws: &Tensor, gates: Option<&Tensor>, index: Arc<PairIndex>) -> Result<Tensor> {
    let (t, d) = x.dims2()?;
    let (u, two_d) = ws.dims2()?;
    if t != index.tokens || u != index.rows || two_d != 2 * d {
        bail!("sparse fused: x {:?} / working set {:?} do not fit an index of {} tokens × {} rows", x.dims(), ws.dims(), index.tokens, index.rows);
    }
    let op = SparseFused { index, d, saved: Mutex::new(None) };
    match gates {
        Some(g) => {
            if g.dims() != [op.index.experts, d] {
                bail!("sparse fused: gates {:?} are not ({}, {d})", g.dims(), op.index.experts);
            }
            x.contiguous()?.apply_op3(&ws.contiguous()?, &g.contiguous()?, op)
        }
        None => x.contiguous()?.apply_op2(&ws.contiguous()?, op),
    }
}

/// What the forward keeps: per pair `k·x` and the gate factor, and the `T×N` gate scores.
struct Saved {
    kx: Vec<f32>,
    factor: Vec<f32>,
}

struct SparseFused {
    index: Arc<PairIndex>,
    d: usize,
    saved: Mutex<Option<Arc<Saved>>>,
}

/// The contiguous f32 values of a CPU tensor or storage.
fn values<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => bail!("sparse fused: {what} must be a contiguous f32 CPU tensor"),
    }
}

/// Lanes of the dot product's partial sums (a fixed order, whatever the vector width).
const LANES: usize = 16;

/// `a·b` in [`LANES`] independent partial sums (which the compiler vectorises), then their sum.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (pa, pb) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += pa[i] * pb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += alpha * x);
}

/// Runs `f` compiled for the widest vector unit of this CPU (AVX-512, AVX2 or baseline).
#[inline(always)]
fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

impl SparseFused {
    fn forward(&self, x: &[f32], ws: &[f32], gates: Option<&[f32]>) -> Result<Vec<f32>> {
        let (d, ix) = (self.d, &*self.index);
        let n = ix.experts;
        let gate_scores: Vec<f32> = match gates {
            Some(g) => x
                .par_chunks(d)
                .flat_map_iter(|xt| {
                    vectorized(
                        #[inline(always)]
                        || (0..n).map(|e| dot(&g[e * d..(e + 1) * d], xt)).collect::<Vec<_>>(),
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        let mut kx = vec![0f32; ix.len()];
        let mut factor = vec![1f32; ix.len()];
        let mut y = vec![0f32; ix.tokens * d];
        let per_token: Vec<(std::ops::Range<usize>, &mut [f32])> = (0..ix.tokens).map(|t| ix.token_pairs(t)).zip(y.chunks_mut(d)).collect();
        let kx_parts = split_by_ranges(&mut kx, ix);
        let factor_parts = split_by_ranges(&mut factor, ix);
        per_token.into_par_iter().zip(kx_parts).zip(factor_parts).enumerate().for_each(|(t, (((range, yt), kxs), fs))| {
            vectorized(
                #[inline(always)]
                || {
                    let xt = &x[t * d..(t + 1) * d];
                    for (j, p) in range.enumerate() {
                        let r = ix.pair_row[p] as usize;
                        let row = &ws[r * 2 * d..(r + 1) * 2 * d];
                        let k = dot(&row[..d], xt);
                        let f = if gates.is_some() { gate_scores[t * n + ix.row_expert[r] as usize] } else { 1.0 };
                        (kxs[j], fs[j]) = (k, f);
                        let a = (k * f).max(0.0);
                        if a > 0.0 {
                            axpy(a, &row[d..], yt);
                        }
                    }
                },
            )
        });
        *self.saved.lock().map_err(|_| candle_core::Error::Msg("sparse fused: poisoned lock".into()))? = Some(Arc::new(Saved { kx, factor }));
        Ok(y)
    }

    /// `(∂x, ∂ws, ∂G)` for the output gradient `dy`.
    fn backward(&self, x: &[f32], ws: &[f32], gates: Option<&[f32]>, dy: &[f32]) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let saved = self.saved.lock().map_err(|_| candle_core::Error::Msg("sparse fused: poisoned lock".into()))?.clone();
        let Some(saved) = saved else { bail!("sparse fused: backward of a forward that kept nothing") };
        let (d, ix) = (self.d, &*self.index);
        let n = ix.experts;
        // Per pair: δ (the score's gradient) and the activation a.
        let mut delta = vec![0f32; ix.len()];
        let mut act = vec![0f32; ix.len()];
        let parts = split_by_ranges(&mut delta, ix).into_iter().zip(split_by_ranges(&mut act, ix));
        parts.collect::<Vec<_>>().into_par_iter().enumerate().for_each(|(t, (ds, acts))| {
            vectorized(
                #[inline(always)]
                || {
                    let dyt = &dy[t * d..(t + 1) * d];
                    for (j, p) in ix.token_pairs(t).enumerate() {
                        let r = ix.pair_row[p] as usize;
                        let s = saved.kx[p] * saved.factor[p];
                        if s > 0.0 {
                            (ds[j], acts[j]) = (dot(dyt, &ws[r * 2 * d + d..(r + 1) * 2 * d]), s);
                        }
                    }
                },
            )
        });
        // ∂x and the per-(token, expert) gate-score gradients D.
        let mut dx = vec![0f32; ix.tokens * d];
        let mut dgs = vec![0f32; if gates.is_some() { ix.tokens * n } else { 0 }];
        let dgs_rows: Vec<&mut [f32]> = if gates.is_some() { dgs.chunks_mut(n).collect() } else { (0..ix.tokens).map(|_| &mut [][..]).collect() };
        dx.par_chunks_mut(d).zip(dgs_rows).enumerate().for_each(|(t, (dxt, dgt))| {
            vectorized(
                #[inline(always)]
                || {
                    for p in ix.token_pairs(t) {
                        let r = ix.pair_row[p] as usize;
                        let (f, k) = (saved.factor[p], saved.kx[p]);
                        if delta[p] != 0.0 {
                            axpy(delta[p] * f, &ws[r * 2 * d..r * 2 * d + d], dxt);
                            if !dgt.is_empty() {
                                dgt[ix.row_expert[r] as usize] += delta[p] * k;
                            }
                        }
                    }
                    if let Some(g) = gates {
                        for (e, &de) in dgt.iter().enumerate() {
                            if de != 0.0 {
                                axpy(de, &g[e * d..(e + 1) * d], dxt);
                            }
                        }
                    }
                },
            )
        });
        // ∂k, ∂v per row over the row's pairs.
        let mut dws = vec![0f32; ix.rows * 2 * d];
        dws.par_chunks_mut(2 * d).enumerate().for_each(|(r, drow)| {
            vectorized(
                #[inline(always)]
                || {
                    let (dk, dv) = drow.split_at_mut(d);
                    for &p in ix.row_pair_ids(r) {
                        let (p, t) = (p as usize, ix.pair_token[p as usize] as usize);
                        if delta[p] != 0.0 {
                            axpy(delta[p] * saved.factor[p], &x[t * d..(t + 1) * d], dk);
                        }
                        if act[p] != 0.0 {
                            axpy(act[p], &dy[t * d..(t + 1) * d], dv);
                        }
                    }
                },
            )
        });
        // ∂G = Dᵀ·x.
        let mut dg = vec![0f32; if gates.is_some() { n * d } else { 0 }];
        if gates.is_some() {
            dg.par_chunks_mut(d).enumerate().for_each(|(e, dge)| {
                vectorized(
                    #[inline(always)]
                    || {
                        for t in 0..ix.tokens {
                            let de = dgs[t * n + e];
                            if de != 0.0 {
                                axpy(de, &x[t * d..(t + 1) * d], dge);
                            }
                        }
                    },
                )
            });
        }
        Ok((dx, dws, dg))
    }
}

/// Splits a per-pair buffer into one slice per token.
fn split_by_ranges<'a>(buf: &'a mut [f32], ix: &PairIndex) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(ix.tokens);
    let mut rest = buf;
    for t in 0..ix.tokens {
        let (head, tail) = rest.split_at_mut(ix.token_pairs(t).len());
        out.push(head);
        rest = tail;
    }
    out
}

/// Runs `f` on the contiguous f32 data of CPU tensors.
fn with_tensors<R, const N: usize>(tensors: [&Tensor; N], f: impl FnOnce([&[f32]; N]) -> Result<R>) -> Result<R> {
    let guards = tensors.map(|t| t.storage_and_layout());
    let mut slices: [&[f32]; N] = [&[]; N];
    for (slot, (storage, layout)) in slices.iter_mut().zip(&guards) {
        let Storage::Cpu(s) = &**storage else { bail!("sparse fused: CPU tensors only") };
        *slot = values(s, layout, "an input")?;
    }
    f(slices)
}

fn output_shape(l: &Layout) -> Shape {
    Shape::from(l.dims())
}

impl CustomOp2 for SparseFused {
    fn name(&self) -> &'static str {
        "meft-sparse-adapter-plain"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = self.forward(values(s1, l1, "x")?, values(s2, l2, "the working set")?, None)?;
        Ok((CpuStorage::F32(y), output_shape(l1)))
    }

    fn bwd(&self, x: &Tensor, ws: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let (dx, dws, _) = with_tensors([x, ws, &g], |[x, ws, g]| self.backward(x, ws, None, g))?;
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), Some(Tensor::from_vec(dws, ws.shape(), ws.device())?)))
    }
}

impl CustomOp3 for SparseFused {
    fn name(&self) -> &'static str {
        "meft-sparse-adapter-gated"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let gates = values(s3, l3, "the gates")?;
        let y = self.forward(values(s1, l1, "x")?, values(s2, l2, "the working set")?, Some(gates))?;
        Ok((CpuStorage::F32(y), output_shape(l1)))
    }

    fn bwd(&self, x: &Tensor, ws: &Tensor, gates: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let (dx, dws, dg) = with_tensors([x, ws, gates, &g], |[x, ws, gt, g]| self.backward(x, ws, Some(gt), g))?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dws, ws.shape(), dev)?),
            Some(Tensor::from_vec(dg, gates.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};
    use proptest::prelude::*;

    use super::*;
    use crate::sparse::{GateInput, SparseIndex, sparse_adapter_forward};

    /// A random per-token selection: `tokens` tokens picking up to `k` distinct rows of `rows`.
    fn selection(tokens: usize, rows: usize, experts: usize, k: usize, seed: u64) -> SparseSelection {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut next = |m: usize| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % m.max(1)
        };
        let row_expert = (0..rows).map(|_| next(experts) as u32).collect();
        let mut pairs = Vec::new();
        for t in 0..tokens {
            let mut chosen: Vec<u32> = (0..k).map(|_| next(rows) as u32).collect();
            chosen.sort_unstable();
            chosen.dedup();
            pairs.extend(chosen.into_iter().map(|r| (t as u32, r)));
        }
        SparseSelection { tokens, row_expert, pairs, evaluation: Evaluation::PerToken }
    }

    fn randn(shape: (usize, usize), seed: u64) -> Tensor {
        let n = shape.0 * shape.1;
        let v: Vec<f32> = (0..n).map(|i| (((i as u64 + 1) * (seed * 2 + 7919)) % 1009) as f32 / 504.5 - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// `|a − b| ≤ 1e-4·max|b| + 1e-6·|b|`: both sides sum the same f32 products in another order,
    /// and a sum whose terms cancel keeps an error of a few ulps of its terms, which can be larger
    /// than the result (1e-5 of the largest output failed on a gated case with d = 7).
    fn close(what: &str, a: &Tensor, b: &Tensor) -> std::result::Result<(), TestCaseError> {
        let (a, b) = (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            prop_assert!((x - y).abs() <= 1e-4 * scale + 1e-6 * y.abs(), "{what}[{i}]: {x} vs {y} (scale {scale})");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

        /// The fused node and the candle-op graph of `crate::sparse` agree on the output and on the
        /// gradients of x, keys, values and gates, gated and plain.
        #[test]
        fn fused_sparse_adapter_matches_the_candle_graph(
            tokens in 1usize..12, rows in 1usize..20, experts in 1usize..5, d in 1usize..9, k in 1usize..6, seed in 0u64..1000, gated in any::<bool>()
        ) {
            let sel = selection(tokens, rows, experts, k, seed);
            let x = Var::from_tensor(&randn((tokens, d), seed)).unwrap();
            // Half the cases start as MEFT does, with zero values (so every δ is 0 and only the
            // values receive gradient).
            let mut ws0 = randn((rows, 2 * d), seed + 1);
            if seed % 2 == 0 {
                ws0 = Tensor::cat(&[ws0.narrow(1, 0, d).unwrap(), Tensor::zeros((rows, d), candle_core::DType::F32, &Device::Cpu).unwrap()], 1).unwrap();
            }
            let ws = Var::from_tensor(&ws0).unwrap();
            let g = Var::from_tensor(&(randn((experts, d), seed + 2) * 3.0).unwrap()).unwrap();
            let dy = randn((tokens, d), seed + 3);
            let fused = sparse_adapter_fused(x.as_tensor(), ws.as_tensor(), gated.then(|| g.as_tensor()), Arc::new(PairIndex::new(&sel, experts).unwrap())).unwrap();
            let keys = ws.as_tensor().narrow(1, 0, d).unwrap();
            let vals = ws.as_tensor().narrow(1, d, d).unwrap();
            let gate = if gated { GateInput::Gated(g.as_tensor()) } else { GateInput::Plain };
            let index = SparseIndex::new(&sel, experts, &Device::Cpu).unwrap();
            let reference = sparse_adapter_forward(x.as_tensor(), &keys, &vals, gate, &index).unwrap();
            close("y", &fused, &reference)?;
            let gf = (fused * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (reference * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            close("dx", gf.get(x.as_tensor()).unwrap(), gr.get(x.as_tensor()).unwrap())?;
            close("dws", gf.get(ws.as_tensor()).unwrap(), gr.get(ws.as_tensor()).unwrap())?;
            if gated {
                close("dgates", gf.get(g.as_tensor()).unwrap(), gr.get(g.as_tensor()).unwrap())?;
            }
        }
    }

    #[test]
    fn union_selections_and_out_of_range_pairs_are_rejected() {
        let mut sel = selection(3, 4, 2, 2, 1);
        sel.evaluation = Evaluation::Union;
        assert!(PairIndex::new(&sel, 2).is_err());
        let mut sel = selection(3, 4, 2, 2, 1);
        sel.pairs.push((3, 0));
        assert!(PairIndex::new(&sel, 2).unwrap_err().to_string().contains("outside"));
        let mut sel = selection(3, 4, 2, 2, 1);
        sel.row_expert[0] = 2;
        assert!(PairIndex::new(&sel, 2).unwrap_err().to_string().contains("row expert 2"));
    }
}
