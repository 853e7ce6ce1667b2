//! Host row movement for the offloaded adapter: gather bundled rows, scatter-add their gradients.
//!
//! A host store keeps each adapter neuron as one row of `row_len` `f32` (the bundled `[k_i | v_i]`,
//! `row_len = 2d`). Per micro-batch the selected rows `U` are gathered into a contiguous staging
//! buffer (spec §5 step 3) and their gradients, back from the device in the same order, are added
//! into the per-row accumulators (step 6).
//!
//! Row ids are `u32`. [`gather_rows`] accepts any ids in range (duplicates allowed). The functions
//! that write rows ([`scatter_add_rows`], [`zero_rows`], and the lazy AdamW step) require strictly
//! increasing ids, which is how `U` is built (sorted, unique); this lets them split the store into
//! disjoint row ranges and work on them in parallel without locks or allocation.
//! Each fast function has a plain serial `_slow` twin that gives bit-identical results.

use rayon::prelude::*;

/// Below this many `f32` moved, row functions run on the calling thread.
const PAR_MIN_ELEMS: usize = 1 << 16;
/// Target `f32` per rayon leaf task when splitting row work.
const LEAF_ELEMS: usize = 1 << 14;

/// Errors in row layouts and row ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowsError {
    /// `row_len` is zero.
    #[error("rows: row_len must be > 0 (the bundled row is [k | v], row_len = 2 * hidden)")]
    ZeroRowLen,
    /// A buffer's length does not match the row layout.
    #[error("rows: `{field}` has {got} elements but {expected} were expected (row_len = {row_len})")]
    LengthMismatch {
        /// Which buffer.
        field: &'static str,
        /// The required length.
        expected: usize,
        /// The actual length.
        got: usize,
        /// The row length in use.
        row_len: usize,
    },
    /// The store's length is not a whole number of rows.
    #[error("rows: `{field}` has {len} elements, not a multiple of row_len = {row_len}")]
    NotWholeRows {
        /// Which buffer.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The row length in use.
        row_len: usize,
    },
    /// A row id is past the end of the store.
    #[error("rows: id {id} at position {position} is out of range for a store of {n_rows} rows")]
    RowOutOfRange {
        /// Position in the id list.
        position: usize,
        /// The bad id.
        id: u32,
        /// Rows in the store.
        n_rows: usize,
    },
    /// Ids for a writing operation must be strictly increasing (sorted, no duplicates).
    #[error("rows: ids must be strictly increasing; position {position} has {id} after {prev} (sort and dedup U first)")]
    NotStrictlyIncreasing {
        /// Position of the offending id.
        position: usize,
        /// The id before it.
        prev: u32,
        /// The offending id.
        id: u32,
    },
}

/// Number of whole rows in `store`, or the layout error.
pub(crate) fn n_rows(field: &'static str, store_len: usize, row_len: usize) -> Result<usize, RowsError> {
    if row_len == 0 {
        return Err(RowsError::ZeroRowLen);
    }
    if !store_len.is_multiple_of(row_len) {
        return Err(RowsError::NotWholeRows { field, len: store_len, row_len });
    }
    Ok(store_len / row_len)
}

/// Checks that `buf` has exactly `expected` elements.
pub(crate) fn check_len(field: &'static str, got: usize, expected: usize, row_len: usize) -> Result<(), RowsError> {
    if got == expected { Ok(()) } else { Err(RowsError::LengthMismatch { field, expected, got, row_len }) }
}

/// Checks that every id is below `n_rows`.
fn check_in_range(ids: &[u32], n_rows: usize) -> Result<(), RowsError> {
    match ids.iter().position(|&id| id as usize >= n_rows) {
        Some(position) => Err(RowsError::RowOutOfRange { position, id: ids[position], n_rows }),
        None => Ok(()),
    }
}

/// Checks that ids are strictly increasing and below `n_rows`.
pub(crate) fn check_increasing(ids: &[u32], n_rows: usize) -> Result<(), RowsError> {
    if let Some(w) = ids.windows(2).position(|w| w[1] <= w[0]) {
        return Err(RowsError::NotStrictlyIncreasing { position: w + 1, prev: ids[w], id: ids[w + 1] });
    }
    match ids.last() {
        Some(&last) if last as usize >= n_rows => check_in_range(ids, n_rows),
        _ => Ok(()),
    }
}

/// A set of buffers that can be split into two disjoint halves at a row boundary.
///
/// `rows` counts store rows from the start of the view; `pos` counts positions in the id list (for
/// buffers laid out in id order, like a staging buffer).
pub(crate) trait SplitRows: Send + Sized {
    /// Splits into (before, after).
    fn split(self, rows: usize, pos: usize) -> (Self, Self);
}

/// Runs `leaf(ids, first_row, view)` over disjoint pieces of `view`, in parallel when the work is
/// large. `ids` must be strictly increasing and every id ≥ `first_row`; `view` starts at row
/// `first_row`. Recursion splits at the middle id, so no allocation happens.
pub(crate) fn for_disjoint_rows<V, F>(ids: &[u32], first_row: usize, row_len: usize, view: V, leaf: &F)
where
    V: SplitRows,
    F: Fn(&[u32], usize, V) + Sync,
{
    let leaf_rows = (LEAF_ELEMS / row_len.max(1)).max(1);
    if ids.len() <= leaf_rows || ids.len() * row_len < PAR_MIN_ELEMS {
        leaf(ids, first_row, view);
        return;
    }
    let mid = ids.len() / 2;
    let split_row = ids[mid] as usize;
    let (lo, hi) = view.split(split_row - first_row, mid);
    rayon::join(|| for_disjoint_rows(&ids[..mid], first_row, row_len, lo, leaf), || for_disjoint_rows(&ids[mid..], split_row, row_len, hi, leaf));
}

/// Copies rows `ids` of `src` (a store of `row_len`-element rows) into `dst`, in id order.
///
/// `dst` must hold `ids.len() * row_len` elements. Ids may repeat and need not be sorted.
pub fn gather_rows(src: &[f32], row_len: usize, ids: &[u32], dst: &mut [f32]) -> Result<(), RowsError> {
    let n = n_rows("src", src.len(), row_len)?;
    check_len("dst", dst.len(), ids.len() * row_len, row_len)?;
    check_in_range(ids, n)?;
    let copy = |(out, id): (&mut [f32], &u32)| {
        let start = *id as usize * row_len;
        out.copy_from_slice(&src[start..start + row_len]);
    };
    if dst.len() >= PAR_MIN_ELEMS {
        let rows_per_task = (LEAF_ELEMS / row_len).max(1);
        dst.par_chunks_mut(rows_per_task * row_len).zip(ids.par_chunks(rows_per_task)).for_each(|(out, ids)| {
            out.chunks_exact_mut(row_len).zip(ids).for_each(copy);
        });
    } else {
        dst.chunks_exact_mut(row_len).zip(ids).for_each(copy);
    }
    Ok(())
}

/// Serial reference for [`gather_rows`] (same checks, same result).
pub fn gather_rows_slow(src: &[f32], row_len: usize, ids: &[u32], dst: &mut [f32]) -> Result<(), RowsError> {
    let n = n_rows("src", src.len(), row_len)?;
    check_len("dst", dst.len(), ids.len() * row_len, row_len)?;
    check_in_range(ids, n)?;
    for (pos, &id) in ids.iter().enumerate() {
        for j in 0..row_len {
            dst[pos * row_len + j] = src[id as usize * row_len + j];
        }
    }
    Ok(())
}

/// An accumulator store and the id-ordered rows to add into it.
struct ScatterView<'a> {
    acc: &'a mut [f32],
    src: &'a [f32],
    row_len: usize,
}

impl SplitRows for ScatterView<'_> {
    fn split(self, rows: usize, pos: usize) -> (Self, Self) {
        let (a0, a1) = self.acc.split_at_mut(rows * self.row_len);
        let (s0, s1) = self.src.split_at(pos * self.row_len);
        let row_len = self.row_len;
        (Self { acc: a0, src: s0, row_len }, Self { acc: a1, src: s1, row_len })
    }
}

/// Adds row `i` of `src` (id-ordered, `ids.len() * row_len` elements) into row `ids[i]` of `acc`.
///
/// `ids` must be strictly increasing. This is the gradient accumulation of spec §5 step 6; check
/// the incoming gradients with [`crate::optim::first_non_finite`] first if they may be non-finite.
pub fn scatter_add_rows(acc: &mut [f32], row_len: usize, ids: &[u32], src: &[f32]) -> Result<(), RowsError> {
    let n = n_rows("acc", acc.len(), row_len)?;
    check_len("src", src.len(), ids.len() * row_len, row_len)?;
    check_increasing(ids, n)?;
    let leaf = |ids: &[u32], first_row: usize, view: ScatterView<'_>| {
        for (&id, s) in ids.iter().zip(view.src.chunks_exact(row_len)) {
            let start = (id as usize - first_row) * row_len;
            for (a, s) in view.acc[start..start + row_len].iter_mut().zip(s) {
                *a += *s;
            }
        }
    };
    for_disjoint_rows(ids, 0, row_len, ScatterView { acc, src, row_len }, &leaf);
    Ok(())
}

/// Serial reference for [`scatter_add_rows`] (same checks, same result).
pub fn scatter_add_rows_slow(acc: &mut [f32], row_len: usize, ids: &[u32], src: &[f32]) -> Result<(), RowsError> {
    let n = n_rows("acc", acc.len(), row_len)?;
    check_len("src", src.len(), ids.len() * row_len, row_len)?;
    check_increasing(ids, n)?;
    for (pos, &id) in ids.iter().enumerate() {
        for j in 0..row_len {
            acc[id as usize * row_len + j] += src[pos * row_len + j];
        }
    }
    Ok(())
}

/// Sets rows `ids` of `acc` to zero (clearing gradient accumulators after a lazy step).
///
/// `ids` must be strictly increasing.
pub fn zero_rows(acc: &mut [f32], row_len: usize, ids: &[u32]) -> Result<(), RowsError> {
    let n = n_rows("acc", acc.len(), row_len)?;
    check_increasing(ids, n)?;
    struct ZeroView<'a>(&'a mut [f32], usize);
    impl SplitRows for ZeroView<'_> {
        fn split(self, rows: usize, _pos: usize) -> (Self, Self) {
            let (a, b) = self.0.split_at_mut(rows * self.1);
            (ZeroView(a, self.1), ZeroView(b, self.1))
        }
    }
    let leaf = |ids: &[u32], first_row: usize, view: ZeroView<'_>| {
        for &id in ids {
            let start = (id as usize - first_row) * row_len;
            view.0[start..start + row_len].fill(0.0);
        }
    };
    for_disjoint_rows(ids, 0, row_len, ZeroView(acc, row_len), &leaf);
    Ok(())
}
