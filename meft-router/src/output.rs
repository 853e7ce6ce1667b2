//! Routing results: per-token selections, the batch union, capacity drops, and recall.

/// Slot value of a selection dropped by the capacity limit (it has no place in the union).
pub const DROPPED: u32 = u32::MAX;

/// Counters of one routing call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteStats {
    /// Tokens T.
    pub tokens: usize,
    /// Selections made, T × width.
    pub selections: usize,
    /// Distinct neurons selected before the capacity cut.
    pub union_before_capacity: usize,
    /// Distinct neurons kept, |U| (≤ C).
    pub union: usize,
    /// Selections removed by the capacity cut (exact count of token–neuron pairs).
    pub dropped: usize,
}

/// The result of one routing call.
///
/// Token t's row (`width` entries) lists its selected neuron ids best first with their scores;
/// `slots` gives each selection's index into [`Routing::union`], or [`DROPPED`] when the capacity cut
/// removed that neuron (the id and score stay visible, the selection just has no row on the device).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routing {
    pub(crate) tokens: usize,
    pub(crate) top_p: usize,
    pub(crate) width: usize,
    pub(crate) experts: Vec<u32>,
    pub(crate) ids: Vec<u32>,
    pub(crate) scores: Vec<f32>,
    pub(crate) slots: Vec<u32>,
    pub(crate) union: Vec<u32>,
    pub(crate) stats: RouteStats,
}

impl Routing {
    /// Tokens T.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Selections per token: min(K, P·m).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Experts probed per token P.
    pub fn top_p(&self) -> usize {
        self.top_p
    }

    /// Token t's probed experts, best gate score first (ties: lower expert id).
    pub fn token_experts(&self, t: usize) -> &[u32] {
        &self.experts[t * self.top_p..(t + 1) * self.top_p]
    }

    /// Token t's selected neuron ids, best score first (ties: lower id).
    pub fn token_ids(&self, t: usize) -> &[u32] {
        &self.ids[t * self.width..(t + 1) * self.width]
    }

    /// Token t's selection scores (descending), aligned with [`Routing::token_ids`].
    pub fn token_scores(&self, t: usize) -> &[f32] {
        &self.scores[t * self.width..(t + 1) * self.width]
    }

    /// Token t's indices into the union ([`DROPPED`] for dropped selections).
    pub fn token_slots(&self, t: usize) -> &[u32] {
        &self.slots[t * self.width..(t + 1) * self.width]
    }

    /// All ids, T × width row-major.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// All scores, T × width row-major.
    pub fn scores(&self) -> &[f32] {
        &self.scores
    }

    /// All slots, T × width row-major.
    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// The kept union U: sorted, unique neuron ids.
    pub fn union(&self) -> &[u32] {
        &self.union
    }

    /// Counters.
    pub fn stats(&self) -> RouteStats {
        self.stats
    }
}

/// The dense top-K of every token over all M keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopK {
    pub(crate) tokens: usize,
    pub(crate) width: usize,
    pub(crate) ids: Vec<u32>,
    pub(crate) scores: Vec<f32>,
}

impl TopK {
    /// Tokens T.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Entries per token.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Token t's ids, best first (ties: lower id).
    pub fn token_ids(&self, t: usize) -> &[u32] {
        &self.ids[t * self.width..(t + 1) * self.width]
    }

    /// Token t's scores, descending.
    pub fn token_scores(&self, t: usize) -> &[f32] {
        &self.scores[t * self.width..(t + 1) * self.width]
    }

    /// All ids, T × width row-major.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// All scores, T × width row-major.
    pub fn scores(&self) -> &[f32] {
        &self.scores
    }
}

/// Fraction of the dense top-K ids (all tokens pooled) that appear among the router's selections of
/// the same token (capacity drops do not count against recall). Returns 1.0 when `dense` is empty.
///
/// ```
/// use meft_router::*;
/// let (d, m) = (4, 16);
/// let keys: Vec<f32> = (0..m * d).map(|i| ((i * 7919 % 23) as f32) - 11.0).collect();
/// let x = [1.0f32, -2.0, 0.5, 3.0];
/// let layout = ExpertLayout::new(m, 4)?;
/// let gates = init_gates(&KeysView::f32(&keys, m, d, d)?, &layout)?;
/// let inputs = RouteInputs {
///     x: Rows::new(&x, 1, d)?,
///     keys: KeysView::f32(&keys, m, d, d)?,
///     gates: GateSource::Gates(Rows::new(&gates, 4, d)?),
/// };
/// let cfg = RouteConfig { scoring: Scoring::Plain, ..RouteConfig::new(4, 3) };
/// let routing = route(&inputs, &layout, &cfg, &mut RouteScratch::default())?;
/// let dense = dense_top_k(&inputs, &layout, &DenseConfig { top_k: 3, scoring: Scoring::Plain })?;
/// assert_eq!(recall_at_k(&routing, &dense), 1.0); // P = N probes every expert
/// # Ok::<(), RouteError>(())
/// ```
pub fn recall_at_k(routing: &Routing, dense: &TopK) -> f64 {
    let tokens = routing.tokens().min(dense.tokens());
    let total = tokens * dense.width();
    if total == 0 {
        return 1.0;
    }
    let mut found = 0usize;
    let mut mine: Vec<u32> = Vec::with_capacity(routing.width());
    for t in 0..tokens {
        mine.clear();
        mine.extend_from_slice(routing.token_ids(t));
        mine.sort_unstable();
        found += dense.token_ids(t).iter().filter(|id| mine.binary_search(id).is_ok()).count();
    }
    found as f64 / total as f64
}
