//! Row gather / scatter-add / zero: fast vs serial twins (bit-identical), round trips, bad input.

use meft_core::rows::{RowsError, gather_rows, gather_rows_slow, scatter_add_rows, scatter_add_rows_slow, zero_rows};
use proptest::prelude::*;

/// A store of `n_rows × row_len` values, each unique enough to catch a wrong row.
fn store(n_rows: usize, row_len: usize) -> Vec<f32> {
    (0..n_rows * row_len).map(|i| (i as f32).mul_add(0.37, -1.0).sin()).collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|f| f.to_bits()).collect()
}

/// Sorted unique ids chosen from `0..n_rows` by a mask.
fn masked_ids(mask: &[bool]) -> Vec<u32> {
    (0..mask.len() as u32).filter(|&r| mask[r as usize]).collect()
}

/// Row count, row length and a row mask; sizes reach the parallel paths (≥ 64 Ki elements).
fn layout() -> impl Strategy<Value = (usize, usize, Vec<bool>)> {
    (1usize..400, prop_oneof![1usize..9, 100usize..300]).prop_flat_map(|(n, rl)| (Just(n), Just(rl), proptest::collection::vec(any::<bool>(), n)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn gather_fast_equals_slow((n, rl, _) in layout(), picks in proptest::collection::vec(any::<u32>(), 0..600)) {
        let src = store(n, rl);
        let ids: Vec<u32> = picks.iter().map(|p| p % n as u32).collect();
        let (mut fast, mut slow) = (vec![f32::NAN; ids.len() * rl], vec![0.0; ids.len() * rl]);
        gather_rows(&src, rl, &ids, &mut fast).unwrap();
        gather_rows_slow(&src, rl, &ids, &mut slow).unwrap();
        prop_assert_eq!(bits(&fast), bits(&slow));
        for (pos, &id) in ids.iter().enumerate() {
            let row = &src[id as usize * rl..(id as usize + 1) * rl];
            prop_assert_eq!(bits(&fast[pos * rl..(pos + 1) * rl]), bits(row));
        }
    }

    #[test]
    fn scatter_add_fast_equals_slow_and_only_touches_listed_rows((n, rl, mask) in layout()) {
        let ids = masked_ids(&mask);
        let acc0 = store(n, rl);
        let src: Vec<f32> = (0..ids.len() * rl).map(|i| (i as f32 * 0.11).cos()).collect();
        let (mut fast, mut slow) = (acc0.clone(), acc0.clone());
        scatter_add_rows(&mut fast, rl, &ids, &src).unwrap();
        scatter_add_rows_slow(&mut slow, rl, &ids, &src).unwrap();
        prop_assert_eq!(bits(&fast), bits(&slow));
        for (r, &touched) in mask.iter().enumerate() {
            let span = r * rl..(r + 1) * rl;
            if !touched {
                prop_assert_eq!(bits(&fast[span.clone()]), bits(&acc0[span]));
            }
        }
        // Gathering the added rows back and subtracting the originals gives `src` again (±rounding).
        let mut back = vec![0.0; src.len()];
        let mut orig = vec![0.0; src.len()];
        gather_rows(&fast, rl, &ids, &mut back).unwrap();
        gather_rows(&acc0, rl, &ids, &mut orig).unwrap();
        for i in 0..src.len() {
            prop_assert!((back[i] - orig[i] - src[i]).abs() <= 1e-6 * (1.0 + orig[i].abs()));
        }
        zero_rows(&mut fast, rl, &ids).unwrap();
        for (r, &touched) in mask.iter().enumerate() {
            let span = r * rl..(r + 1) * rl;
            let want = if touched { vec![0u32; rl] } else { bits(&acc0[span.clone()]) };
            prop_assert_eq!(bits(&fast[span]), want);
        }
    }
}

#[test]
fn scatter_add_accumulates_across_calls() {
    let (rl, n) = (3, 5);
    let mut acc = vec![0.0f32; n * rl];
    scatter_add_rows(&mut acc, rl, &[1, 4], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    scatter_add_rows(&mut acc, rl, &[0, 1], &[0.5, 0.5, 0.5, 10.0, 20.0, 30.0]).unwrap();
    let want = [0.5, 0.5, 0.5, 11.0, 22.0, 33.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.0, 5.0, 6.0];
    assert_eq!(acc, want);
}

#[test]
fn bad_input_is_a_typed_error() {
    let src = store(4, 3);
    let mut dst = vec![0.0; 6];
    assert_eq!(gather_rows(&src, 0, &[0, 1], &mut dst), Err(RowsError::ZeroRowLen));
    assert_eq!(gather_rows(&src, 5, &[0, 1], &mut dst), Err(RowsError::NotWholeRows { field: "src", len: 12, row_len: 5 }));
    let err = gather_rows(&src, 3, &[0], &mut dst);
    assert_eq!(err, Err(RowsError::LengthMismatch { field: "dst", expected: 3, got: 6, row_len: 3 }));
    let err = gather_rows_slow(&src, 3, &[0, 4], &mut dst);
    assert_eq!(err, Err(RowsError::RowOutOfRange { position: 1, id: 4, n_rows: 4 }));
    assert_eq!(gather_rows(&src, 3, &[3, 3], &mut dst), Ok(()), "gather allows duplicates");

    let mut acc = store(4, 3);
    let before = bits(&acc);
    let two_rows = [1.0f32; 6];
    let err = scatter_add_rows(&mut acc, 3, &[2, 2], &two_rows);
    assert_eq!(err, Err(RowsError::NotStrictlyIncreasing { position: 1, prev: 2, id: 2 }));
    let err = scatter_add_rows_slow(&mut acc, 3, &[3, 1], &two_rows);
    assert_eq!(err, Err(RowsError::NotStrictlyIncreasing { position: 1, prev: 3, id: 1 }));
    let err = scatter_add_rows(&mut acc, 3, &[1, 9], &two_rows);
    assert_eq!(err, Err(RowsError::RowOutOfRange { position: 1, id: 9, n_rows: 4 }));
    let err = scatter_add_rows(&mut acc, 3, &[1], &two_rows);
    assert_eq!(err, Err(RowsError::LengthMismatch { field: "src", expected: 3, got: 6, row_len: 3 }));
    assert_eq!(zero_rows(&mut acc, 3, &[0, 0]), Err(RowsError::NotStrictlyIncreasing { position: 1, prev: 0, id: 0 }));
    assert_eq!(zero_rows(&mut acc, 5, &[0]), Err(RowsError::NotWholeRows { field: "acc", len: 12, row_len: 5 }));
    assert_eq!(bits(&acc), before, "a rejected call must not write");
    assert!(err.unwrap_err().to_string().contains("row_len = 3"));
}
