//! The batch union U and the capacity cut, shared by the fast and the dense-backed routing paths.

use crate::config::Capacity;
use crate::output::{DROPPED, RouteStats};

/// Reusable buffers for the union: O(M) marks that are reset after each call (only touched entries).
#[derive(Debug, Default)]
pub(crate) struct UnionScratch {
    /// Per neuron: 0 = unseen, otherwise (slot + 1) once the union is known.
    mark: Vec<u32>,
    /// Per neuron: summed ReLU score over the tokens that chose it (token order, f64).
    sums: Vec<f64>,
    touched: Vec<u32>,
    order: Vec<u32>,
}

/// Builds the union of `ids` (T × width) into `union`, applies the capacity cut and fills `slots`.
pub(crate) fn build_union(
    ids: &[u32],
    scores: &[f32],
    neurons: usize,
    capacity: Capacity,
    scratch: &mut UnionScratch,
    union: &mut Vec<u32>,
    slots: &mut Vec<u32>,
) -> RouteStats {
    let s = scratch;
    if s.mark.len() < neurons {
        s.mark.resize(neurons, 0);
        s.sums.resize(neurons, 0.0);
    }
    s.touched.clear();
    for (&id, &score) in ids.iter().zip(scores) {
        let i = id as usize;
        if s.mark[i] == 0 {
            s.mark[i] = 1;
            s.touched.push(id);
        }
        s.sums[i] += f64::from(score.max(0.0));
    }
    s.touched.sort_unstable();
    let before = s.touched.len();
    union.clear();
    match capacity {
        Capacity::Rows(c) if c < before => {
            s.order.clear();
            s.order.extend_from_slice(&s.touched);
            let sums = &s.sums;
            s.order.sort_unstable_by(|&a, &b| {
                let (sa, sb) = (sums[a as usize], sums[b as usize]);
                if better_sum(sa, a, sb, b) { std::cmp::Ordering::Less } else { std::cmp::Ordering::Greater }
            });
            union.extend_from_slice(&s.order[..c]);
            union.sort_unstable();
        }
        _ => union.extend_from_slice(&s.touched),
    }
    for &id in &s.touched {
        s.mark[id as usize] = 0;
    }
    for (slot, &id) in union.iter().enumerate() {
        s.mark[id as usize] = slot as u32 + 1;
    }
    slots.clear();
    slots.extend(ids.iter().map(|&id| s.mark[id as usize].wrapping_sub(1)));
    let dropped = slots.iter().filter(|&&v| v == DROPPED).count();
    for &id in &s.touched {
        s.mark[id as usize] = 0;
        s.sums[id as usize] = 0.0;
    }
    RouteStats { tokens: 0, selections: ids.len(), union_before_capacity: before, union: union.len(), dropped }
}

fn better_sum(sa: f64, ia: u32, sb: f64, ib: u32) -> bool {
    sa > sb || (sa == sb && ia < ib)
}
