//! Device tests (feature `cuda`): every kernel against its CPU reference in meft-core.
//!
//! Skipped with a printed reason when no CUDA driver is present. Tolerances: row movement and
//! packing are exact copies (bitwise equal); the sparse adapter compares f32 sums of `d` products
//! in a different order (and atomics in backward) at `1e-4` of the output's scale; AdamW at
//! `1e-5` relative (same f32 formulas, device `sqrtf`/division are correctly rounded).

use meft_core::kernels_ref::{SparsePairs, place_rows_ref, sparse_pairs_backward_ref, sparse_pairs_forward_ref};
use meft_core::optim::{AdamWBuffers, AdamWConfig, adamw_dense_slow};
use meft_core::rows::gather_rows;
use meft_core::sparse::{Evaluation, SparseSelection};
use meft_kernels::{DeviceKernels, KernelError, SparseInputs};

fn kernels() -> Option<DeviceKernels> {
    match DeviceKernels::new(0) {
        Ok(k) => Some(k),
        Err(KernelError::NoDriver) => {
            println!("skipped: no CUDA driver (libcuda.so.1) on this machine");
            None
        }
        Err(e) => panic!("device setup failed: {e}"),
    }
}

/// Deterministic values in [-1, 1).
fn vals(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn close(a: &[f32], b: &[f32], rel: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= rel * scale, "{what}[{i}]: device {x} vs reference {y}");
    }
}

#[test]
fn place_and_pack_rows_match_references_exactly() {
    let Some(k) = kernels() else { return };
    let (row_len, cap) = (2 * 96, 300);
    let slots: Vec<u32> = (0..120u32).map(|i| (i * 7 + 3) % cap as u32).collect();
    let staged = vals(1, slots.len() * row_len);
    let got = k.place_rows(&staged, row_len, &slots, cap).unwrap();
    let mut want = vec![0.0f32; cap * row_len];
    place_rows_ref(&staged, row_len, &slots, &mut want).unwrap();
    assert_eq!(got, want);
    let packed = k.pack_rows(&want, row_len, &slots).unwrap();
    let mut want_packed = vec![0.0f32; slots.len() * row_len];
    gather_rows(&want, row_len, &slots, &mut want_packed).unwrap();
    assert_eq!(packed, want_packed);
    assert!(matches!(k.place_rows(&staged, row_len, &slots, 10), Err(KernelError::Rows(_))));
}

fn selection(tokens: usize, rows: usize) -> SparseSelection {
    let pairs = (0..tokens as u32).flat_map(|t| (0..8u32).map(move |j| (t, (t * 13 + j * 29) % rows as u32))).collect();
    SparseSelection { tokens, row_expert: vec![0; rows], pairs, evaluation: Evaluation::PerToken }
}

#[test]
fn sparse_forward_and_backward_match_references() {
    let Some(k) = kernels() else { return };
    let (t, u, d) = (40, 64, 200);
    let sel = selection(t, u);
    let gates = vals(9, sel.pairs.len());
    for gate in [None, Some(&gates[..])] {
        let pairs = SparsePairs::from_selection(&sel, gate).unwrap();
        let (x, keys, values, dy) = (vals(2, t * d), vals(3, u * d), vals(4, u * d), vals(5, t * d));
        let inputs = SparseInputs { x: &x, keys: &keys, values: &values, pairs: &pairs, d };
        let (y, kx) = k.sparse_forward(inputs).unwrap();
        let (y_ref, kx_ref) = sparse_pairs_forward_ref(&x, &keys, &values, &pairs, d);
        close(&y, &y_ref, 1e-4, "y");
        close(&kx, &kx_ref, 1e-4, "kx");
        let g = k.sparse_backward(inputs, &kx_ref, &dy).unwrap();
        let r = sparse_pairs_backward_ref(&x, &keys, &values, &pairs, &kx_ref, &dy, d);
        close(&g.dx, &r.dx, 1e-4, "dx");
        close(&g.dkeys, &r.dkeys, 1e-4, "dkeys");
        close(&g.dvalues, &r.dvalues, 1e-4, "dvalues");
        close(&g.dgate, &r.dgate, 1e-4, "dgate");
    }
}

#[test]
fn device_adamw_matches_cpu_reference() {
    let Some(k) = kernels() else { return };
    let n = 10_000;
    let cfg = AdamWConfig { lr: 1e-3, weight_decay: 0.01, ..AdamWConfig::default() };
    let (mut p, mut m, mut v) = (vals(6, n), vec![0.0f32; n], vec![0.0f32; n]);
    let (mut p2, mut m2, mut v2) = (p.clone(), m.clone(), v.clone());
    for step in 1..=5u64 {
        let g = vals(10 + step, n);
        k.adamw(&cfg, step, AdamWBuffers { params: &mut p, grads: &g, m: &mut m, v: &mut v }).unwrap();
        let out = adamw_dense_slow(&cfg, step, AdamWBuffers { params: &mut p2, grads: &g, m: &mut m2, v: &mut v2 }).unwrap();
        assert_eq!(out, meft_core::optim::StepOutcome::Applied);
    }
    close(&p, &p2, 1e-5, "params");
    close(&m, &m2, 1e-5, "m");
    close(&v, &v2, 1e-5, "v");
    assert!(matches!(k.adamw(&cfg, 0, AdamWBuffers { params: &mut p, grads: &m2, m: &mut m, v: &mut v }), Err(KernelError::Optim(_))));
}
