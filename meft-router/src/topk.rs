//! Per-token top-K bookkeeping with the crate's one tie rule: higher score first, then lower id.

/// Whether candidate `(sa, ia)` ranks before `(sb, ib)`.
#[inline]
pub(crate) fn better(sa: f32, ia: u32, sb: f32, ib: u32) -> bool {
    sa > sb || (sa == sb && ia < ib)
}

/// A sorted (best first) top-k list stored in caller-owned slices: no allocation.
pub(crate) struct TopKRow<'a> {
    ids: &'a mut [u32],
    scores: &'a mut [f32],
    len: usize,
}

impl<'a> TopKRow<'a> {
    /// An empty list writing into `ids`/`scores` (capacity = their common length).
    pub(crate) fn new(ids: &'a mut [u32], scores: &'a mut [f32]) -> Self {
        debug_assert_eq!(ids.len(), scores.len());
        Self { ids, scores, len: 0 }
    }

    /// A list over slices that already hold `len` sorted entries.
    pub(crate) fn resume(ids: &'a mut [u32], scores: &'a mut [f32], len: usize) -> Self {
        Self { ids, scores, len }
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Offers a candidate; keeps it when it ranks among the best `capacity`.
    #[inline]
    pub(crate) fn push(&mut self, id: u32, score: f32) {
        let cap = self.ids.len();
        if self.len == cap {
            if cap == 0 || !better(score, id, self.scores[cap - 1], self.ids[cap - 1]) {
                return;
            }
            self.len -= 1;
        }
        let mut pos = self.len;
        while pos > 0 && better(score, id, self.scores[pos - 1], self.ids[pos - 1]) {
            self.ids[pos] = self.ids[pos - 1];
            self.scores[pos] = self.scores[pos - 1];
            pos -= 1;
        }
        self.ids[pos] = id;
        self.scores[pos] = score;
        self.len += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_best_with_ties_to_lower_id() {
        let (mut ids, mut sc) = ([0u32; 3], [0f32; 3]);
        let mut row = TopKRow::new(&mut ids, &mut sc);
        for (id, s) in [(5, 1.0), (2, 1.0), (9, 3.0), (1, 0.5), (7, 1.0), (0, 1.0)] {
            row.push(id, s);
        }
        assert_eq!(row.len(), 3);
        assert_eq!(ids, [9, 0, 2]);
        assert_eq!(sc, [3.0, 1.0, 1.0]);
    }
}
