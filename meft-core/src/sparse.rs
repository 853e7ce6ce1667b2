//! The sparse adapter forward pass on candle, differentiable through candle's autograd.
//!
//! MEFT evaluates its adapter only on the working set: the `U` neurons selected for a micro-batch
//! (spec §3–§5). Given the FFN input `x` (`T×d`), the working-set keys and values (`U×d` each) and,
//! in gated mode, the layer's gate matrix (`N×d`), this module computes
//!
//! - **per-token** evaluation: `y_t = Σ_{i∈S_t} ReLU(s_{t,i})·v_i`, `S_t` the token's own selection;
//! - **union** evaluation (paper Eq. 4): `y_t = Σ_{i∈U} ReLU(s_{t,i})·v_i`;
//!
//! with `s_{t,i} = k_i·x_t` (plain) or `s_{t,i} = (k_i·x_t)·g_{e(i)}(x_t)` (gated, `g = G·x`).
//!
//! The graph is built from `matmul`, `index_select`, `index_add` and element-wise ops only. candle's
//! `scatter`/`scatter_add` have wrong gradients (see the stack notes), so per-token selections are
//! expressed as a flat list of `(token, row)` pairs: their scores are picked from the dense `T×U`
//! score matrix with `index_select`, and their activations are placed back into a `T×U` coefficient
//! matrix with `index_add` (whose gradient is an `index_select`). Selection is a constant of the graph:
//! gradients reach exactly the selected keys, values and gates, and nothing else.
//!
//! [`sparse_adapter_forward_slow`] is the loop-based reference over plain `f64` slices.

use candle_core::{D, DType, Device, Result, Tensor};

/// Which neurons each token is evaluated on (spec §3, step 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Evaluation {
    /// Each token uses only its own selected neurons (default).
    PerToken,
    /// Every token uses every neuron of the batch union `U` (paper Eq. 4).
    Union,
}

/// Host-side description of a micro-batch's selection, relative to the working set.
///
/// Working-set row `r` holds neuron `U[r]`; `row_expert[r]` is that neuron's expert.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseSelection {
    /// Tokens `T` in the micro-batch.
    pub tokens: usize,
    /// Expert id of every working-set row (length `U`).
    pub row_expert: Vec<u32>,
    /// Per-token `(token, working-set row)` pairs; ignored in union evaluation.
    pub pairs: Vec<(u32, u32)>,
    /// Per-token or union evaluation.
    pub evaluation: Evaluation,
}

impl SparseSelection {
    /// Number of working-set rows `U`.
    pub fn rows(&self) -> usize {
        self.row_expert.len()
    }
}

/// The selection as device index tensors, built once per micro-batch and layer.
#[derive(Debug, Clone)]
pub struct SparseIndex {
    tokens: usize,
    rows: usize,
    evaluation: Evaluation,
    /// `t·U + r` for every pair (per-token) — positions in the flattened `T×U` score matrix.
    pair_pos: Option<Tensor>,
    /// `t·N + e(r)` for every pair (per-token) — positions in the flattened `T×N` gate scores.
    pair_gate_pos: Option<Tensor>,
    /// Expert of every working-set row (union, gated).
    row_expert: Tensor,
}

impl SparseIndex {
    /// Uploads the selection's index tensors to `device` for a layer with `n_experts` experts.
    pub fn new(sel: &SparseSelection, n_experts: usize, device: &Device) -> Result<Self> {
        let rows = sel.rows();
        if let Some(&bad) = sel.row_expert.iter().find(|&&e| e as usize >= n_experts) {
            candle_core::bail!("sparse adapter: row expert {bad} out of range for {n_experts} experts");
        }
        let row_expert = Tensor::from_slice(&sel.row_expert, rows, device)?;
        let (pair_pos, pair_gate_pos) = match sel.evaluation {
            Evaluation::Union => (None, None),
            Evaluation::PerToken => {
                let mut pos = Vec::with_capacity(sel.pairs.len());
                let mut gpos = Vec::with_capacity(sel.pairs.len());
                for &(t, r) in &sel.pairs {
                    let (t, r) = (t as usize, r as usize);
                    if t >= sel.tokens || r >= rows {
                        candle_core::bail!("sparse adapter: pair (token {t}, row {r}) outside {}×{rows}", sel.tokens);
                    }
                    pos.push(u32::try_from(t * rows + r).map_err(candle_core::Error::wrap)?);
                    let e = sel.row_expert[r] as usize;
                    gpos.push(u32::try_from(t * n_experts + e).map_err(candle_core::Error::wrap)?);
                }
                let n = pos.len();
                (Some(Tensor::from_vec(pos, n, device)?), Some(Tensor::from_vec(gpos, n, device)?))
            }
        };
        Ok(Self { tokens: sel.tokens, rows, evaluation: sel.evaluation, pair_pos, pair_gate_pos, row_expert })
    }
}

/// The gate input of the sparse adapter: none (plain scores) or the layer's gate matrix.
#[derive(Debug, Clone, Copy)]
pub enum GateInput<'a> {
    /// Plain scores `k_i·x`.
    Plain,
    /// Gated scores; the tensor is the gate matrix `G` (`N×d`).
    Gated(&'a Tensor),
}

/// Differentiable sparse adapter output.
///
/// # Shapes
/// `x`: `T×d`; `keys`, `values`: `U×d`; gates `N×d`. Returns `T×d`.
pub fn sparse_adapter_forward(x: &Tensor, keys: &Tensor, values: &Tensor, gate: GateInput<'_>, index: &SparseIndex) -> Result<Tensor> {
    let (t, _) = x.dims2()?;
    let (u, _) = keys.dims2()?;
    if t != index.tokens || u != index.rows {
        candle_core::bail!("sparse adapter: x has {t} tokens and the working set {u} rows, index built for {}×{}", index.tokens, index.rows);
    }
    let scores = x.matmul(&keys.t()?)?; // T×U
    let gate_scores = match gate {
        GateInput::Plain => None,
        GateInput::Gated(g) => Some(x.matmul(&g.t()?)?), // T×N
    };
    let coeff = match (index.evaluation, &index.pair_pos, &index.pair_gate_pos) {
        (Evaluation::PerToken, Some(pos), Some(gpos)) => {
            let mut s = scores.flatten_all()?.index_select(pos, 0)?;
            if let Some(gs) = &gate_scores {
                s = (s * gs.flatten_all()?.index_select(gpos, 0)?)?;
            }
            let a = s.relu()?;
            Tensor::zeros(t * u, x.dtype(), x.device())?.index_add(pos, &a, 0)?.reshape((t, u))?
        }
        _ => {
            let s = match &gate_scores {
                None => scores,
                Some(gs) => (scores * gs.index_select(&index.row_expert, D::Minus1)?)?,
            };
            s.relu()?
        }
    };
    coeff.matmul(values)
}

/// Loop-based reference of [`sparse_adapter_forward`] over row-major `f64` slices.
///
/// `x` is `T×d`, `keys`/`values` `U×d`, `gates` (`Some` for gated scoring) `N×d`.
pub fn sparse_adapter_forward_slow(x: &[f64], keys: &[f64], values: &[f64], gates: Option<&[f64]>, sel: &SparseSelection, d: usize) -> Vec<f64> {
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
    let mut y = vec![0.0; sel.tokens * d];
    let mut add = |t: usize, r: usize| {
        let xt = &x[t * d..(t + 1) * d];
        let mut s = dot(&keys[r * d..(r + 1) * d], xt);
        if let Some(g) = gates {
            let e = sel.row_expert[r] as usize;
            s *= dot(&g[e * d..(e + 1) * d], xt);
        }
        let a = s.max(0.0);
        for (yo, v) in y[t * d..(t + 1) * d].iter_mut().zip(&values[r * d..(r + 1) * d]) {
            *yo += a * v;
        }
    };
    match sel.evaluation {
        Evaluation::PerToken => sel.pairs.iter().for_each(|&(t, r)| add(t as usize, r as usize)),
        Evaluation::Union => {
            for t in 0..sel.tokens {
                (0..sel.rows()).for_each(|r| add(t, r));
            }
        }
    }
    y
}

/// Bytes of the intermediate tensors [`sparse_adapter_forward`] keeps for backward.
///
/// Used by the offload engine to charge activations to the (simulated) device.
/// `gate_experts` is N for gated scoring and 0 for plain scoring.
pub fn sparse_activation_bytes(tokens: usize, rows: usize, gate_experts: usize, d: usize, dtype: DType) -> u64 {
    let gates = if gate_experts == 0 { 0 } else { tokens * gate_experts + tokens * rows };
    // scores T×U, coefficients T×U, output T×d.
    ((2 * tokens * rows + tokens * d + gates) * dtype.size_in_bytes()) as u64
}
