//! Expert layout (M neurons in N contiguous blocks of m) and gate initialisation.

use crate::error::{Result, RouteError};
use crate::inputs::KeysView;
use std::ops::Range;

/// The expert factor of the paper and the authors' code: N = √M / factor, so 0.25 gives N = 4·√M.
pub const DEFAULT_EXPERT_FACTOR: f64 = 0.25;

/// Scale of the gate initialisation: gate j = `GATE_INIT_SCALE` × mean of expert j's keys.
pub const GATE_INIT_SCALE: f32 = 50.0;

/// How M adapter neurons are split into N experts: expert j owns neurons `[j·m, (j+1)·m)`.
///
/// N must divide M; there is no silent fall-back to another N.
///
/// ```
/// use meft_router::ExpertLayout;
/// let layout = ExpertLayout::from_factor(65536, 0.25)?;
/// assert_eq!((layout.neurons(), layout.experts(), layout.per_expert()), (65536, 1024, 64));
/// assert_eq!(layout.expert_of(130), 2);
/// // 6144 neurons cannot be split by the 0.25 factor rule; the error lists valid neighbours.
/// assert!(ExpertLayout::from_factor(6144, 0.25).is_err());
/// # Ok::<(), meft_router::RouteError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpertLayout {
    neurons: usize,
    experts: usize,
    per_expert: usize,
}

impl ExpertLayout {
    /// A layout with an explicit number of experts; errors when `experts` does not divide `neurons`
    /// (listing the nearest multiples of `experts`).
    pub fn new(neurons: usize, experts: usize) -> Result<Self> {
        if neurons == 0 || experts == 0 {
            return Err(RouteError::EmptyLayout { neurons, experts });
        }
        if !neurons.is_multiple_of(experts) {
            let below = (neurons / experts) * experts;
            return Err(RouteError::ExpertsDoNotDivide { neurons, experts, below: (below > 0).then_some(below), above: Some(below + experts) });
        }
        Ok(Self { neurons, experts, per_expert: neurons / experts })
    }

    /// A layout from an expert factor: N = round(√M / factor). Errors when that N does not divide M,
    /// listing the nearest M (below and above) for which the same rule gives a valid layout.
    pub fn from_factor(neurons: usize, factor: f64) -> Result<Self> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err(RouteError::BadExpertFactor { factor });
        }
        let experts = experts_for(neurons, factor);
        if neurons == 0 || experts == 0 {
            return Err(RouteError::EmptyLayout { neurons, experts });
        }
        if neurons.is_multiple_of(experts) {
            return Ok(Self { neurons, experts, per_expert: neurons / experts });
        }
        let valid = |m: usize| {
            let n = experts_for(m, factor);
            n > 0 && m.is_multiple_of(n)
        };
        let below = (1..neurons).rev().find(|&m| valid(m));
        let above = (neurons + 1..).find(|&m| valid(m));
        Err(RouteError::ExpertsDoNotDivide { neurons, experts, below, above })
    }

    /// The default layout: expert factor 0.25 (N = 4·√M).
    pub fn with_default_factor(neurons: usize) -> Result<Self> {
        Self::from_factor(neurons, DEFAULT_EXPERT_FACTOR)
    }

    /// One expert holding all M neurons: the "w/o Key-Experts" ablation (use with `top_p = 1`).
    pub fn single(neurons: usize) -> Result<Self> {
        Self::new(neurons, 1)
    }

    /// Neurons M.
    pub fn neurons(&self) -> usize {
        self.neurons
    }

    /// Experts N.
    pub fn experts(&self) -> usize {
        self.experts
    }

    /// Neurons per expert m = M / N.
    pub fn per_expert(&self) -> usize {
        self.per_expert
    }

    /// The expert owning neuron `id`.
    pub fn expert_of(&self, id: usize) -> usize {
        id / self.per_expert
    }

    /// The neuron ids owned by expert `e`.
    pub fn block(&self, e: usize) -> Range<usize> {
        e * self.per_expert..(e + 1) * self.per_expert
    }
}

fn experts_for(neurons: usize, factor: f64) -> usize {
    ((neurons as f64).sqrt() / factor).round() as usize
}

/// Gate initialisation of the paper: gate j = 50 × the mean of expert j's keys. Returns N×d row-major.
///
/// ```
/// use meft_router::{init_gates, ExpertLayout, KeysView};
/// let keys = [1.0f32, 2.0, 3.0, 4.0, 0.0, 0.0, 2.0, 2.0]; // M = 4, d = 2
/// let layout = ExpertLayout::new(4, 2)?;
/// let gates = init_gates(&KeysView::f32(&keys, 4, 2, 2)?, &layout)?;
/// assert_eq!(gates, vec![100.0, 150.0, 50.0, 50.0]);
/// # Ok::<(), meft_router::RouteError>(())
/// ```
pub fn init_gates(keys: &KeysView<'_>, layout: &ExpertLayout) -> Result<Vec<f32>> {
    keys.expect_rows(layout.neurons())?;
    let d = keys.dim();
    let mut gates = vec![0.0f32; layout.experts() * d];
    let mut acc = vec![0.0f64; d];
    let mut row = vec![0.0f32; d];
    for (e, gate) in gates.chunks_exact_mut(d.max(1)).enumerate() {
        acc.fill(0.0);
        for i in layout.block(e) {
            keys.row_into(i, &mut row);
            for (a, &v) in acc.iter_mut().zip(&row) {
                *a += f64::from(v);
            }
        }
        let scale = f64::from(GATE_INIT_SCALE) / layout.per_expert() as f64;
        for (g, a) in gate.iter_mut().zip(&acc) {
            *g = (a * scale) as f32;
        }
    }
    Ok(gates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factor_rule_matches_paper_sizes() {
        for (m, n) in [(4096, 256), (16384, 512), (65536, 1024), (262144, 2048), (6400, 320)] {
            assert_eq!(ExpertLayout::with_default_factor(m).unwrap().experts(), n);
        }
    }

    #[test]
    fn invalid_sizes_list_valid_neighbours() {
        let err = ExpertLayout::with_default_factor(6144).unwrap_err();
        let RouteError::ExpertsDoNotDivide { below: Some(b), above: Some(a), .. } = err else {
            panic!("unexpected {err:?}");
        };
        assert!(b < 6144 && a > 6144);
        assert!(ExpertLayout::with_default_factor(b).is_ok());
        assert!(ExpertLayout::with_default_factor(a).is_ok());
        let err = ExpertLayout::new(100, 7).unwrap_err();
        assert_eq!(err, RouteError::ExpertsDoNotDivide { neurons: 100, experts: 7, below: Some(98), above: Some(105) });
        assert!(ExpertLayout::new(0, 1).is_err());
        assert!(ExpertLayout::from_factor(64, f64::NAN).is_err());
    }
}
