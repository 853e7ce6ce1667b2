//! The AVX2 + FMA form of the canonical dot product (see the parent module): each (token, key)
//! pair keeps its 16 lanes as two 8-lane halves, lanes `0..8` and `8..16`, updated with fused
//! multiply-adds in increasing `j`; the halves are then reduced exactly as the canonical order
//! says, so every score is bit-identical to `dot_slow`. A register tile holds up to
//! `TILE_TOKENS × TILE_KEYS` pairs (12 of the 16 ymm registers). A tail shorter than 16 is
//! copied into zero-padded buffers, as the canonical form pads it.

use std::arch::x86_64::*;

use half::bf16;

use super::{KeyElems, KeysView, LANES};

/// Keys per register tile.
const TILE_KEYS: usize = 3;
/// Tokens per register tile.
const TILE_TOKENS: usize = 2;

/// Whether this CPU runs the kernel.
pub(super) fn available() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// A key element type: loads of 16 values widened to f32, as two halves.
trait KeyLoad: Copy {
    /// # Safety
    /// AVX2 present; `p` valid for 16 reads.
    unsafe fn load16(p: *const Self) -> (__m256, __m256);
    /// The value widened to f32 (exact).
    fn widen(self) -> f32;
}

impl KeyLoad for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> (__m256, __m256) {
        // SAFETY: the caller guarantees the feature and 16 readable values.
        unsafe { (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) }
    }

    fn widen(self) -> f32 {
        self
    }
}

impl KeyLoad for bf16 {
    #[inline(always)]
    unsafe fn load16(p: *const bf16) -> (__m256, __m256) {
        // SAFETY: the caller guarantees the feature and 16 readable values (32 bytes). bf16 → f32
        // is a 16-bit left shift of the bit pattern (exact).
        unsafe {
            let raw = _mm256_loadu_si256(p.cast());
            let lo = _mm256_cvtepu16_epi32(_mm256_castsi256_si128(raw));
            let hi = _mm256_cvtepu16_epi32(_mm256_extracti128_si256::<1>(raw));
            (_mm256_castsi256_ps(_mm256_slli_epi32::<16>(lo)), _mm256_castsi256_ps(_mm256_slli_epi32::<16>(hi)))
        }
    }

    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// The canonical lane reduction of the halves: `(l, l+8)`, then `(l, l+4)`, `(l, l+2)`, `(l, l+1)`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn reduce(lo: __m256, hi: __m256) -> f32 {
    let s8 = _mm256_add_ps(lo, hi);
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2));
    _mm_cvtss_f32(s1)
}

/// Accumulators of one tile: `[token][key]` → (lanes 0..8, lanes 8..16).
type Acc<const TA: usize> = [[(__m256, __m256); TILE_KEYS]; TA];

/// One 16-element step of a tile at `x` rows `xp` and key rows `kp`.
///
/// # Safety
/// AVX2 + FMA present; every pointer valid for 16 reads.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn step<const TA: usize, K: KeyLoad>(acc: &mut Acc<TA>, xp: [*const f32; TA], kp: [*const K; TILE_KEYS]) {
    for b in 0..TILE_KEYS {
        // SAFETY: forwarded from the caller.
        let (kl, kh) = unsafe { K::load16(kp[b]) };
        for a in 0..TA {
            // SAFETY: forwarded from the caller.
            let (xl, xh) = unsafe { (_mm256_loadu_ps(xp[a]), _mm256_loadu_ps(xp[a].add(8))) };
            acc[a][b] = (_mm256_fmadd_ps(xl, kl, acc[a][b].0), _mm256_fmadd_ps(xh, kh, acc[a][b].1));
        }
    }
}

/// One register tile: `TA` token rows × `TILE_KEYS` key rows over the whole of d; writes the
/// first `nb` key columns.
///
/// # Safety
/// AVX2 + FMA present; every pointer valid for `d` elements; `out` valid for the written
/// `TA × nb` entries at stride `os`.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const TA: usize, K: KeyLoad>(xp: [*const f32; TA], kp: [*const K; TILE_KEYS], d: usize, nb: usize, out: *mut f32, os: usize) {
    let zero = _mm256_setzero_ps();
    let mut acc: Acc<TA> = [[(zero, zero); TILE_KEYS]; TA];
    let full = d / LANES;
    for blk in 0..full {
        let j = blk * LANES;
        // SAFETY: j + 16 ≤ d for every full block.
        unsafe { step(&mut acc, xp.map(|p| p.add(j)), kp.map(|p| p.add(j))) };
    }
    let rem = d % LANES;
    if rem > 0 {
        let j = full * LANES;
        let mut xs = [[0f32; LANES]; TA];
        let mut ks = [[0f32; LANES]; TILE_KEYS];
        for (buf, p) in xs.iter_mut().zip(xp) {
            for (i, v) in buf.iter_mut().take(rem).enumerate() {
                // SAFETY: j + i < d.
                *v = unsafe { *p.add(j + i) };
            }
        }
        for (buf, p) in ks.iter_mut().zip(kp) {
            for (i, v) in buf.iter_mut().take(rem).enumerate() {
                // SAFETY: j + i < d.
                *v = unsafe { *p.add(j + i) }.widen();
            }
        }
        // SAFETY: the padded buffers hold 16 values each.
        unsafe { step(&mut acc, std::array::from_fn(|a| xs[a].as_ptr()), std::array::from_fn(|b| ks[b].as_ptr())) };
    }
    for (a, row) in acc.iter().enumerate() {
        for (b, &(lo, hi)) in row.iter().enumerate().take(nb) {
            // SAFETY: a < TA and b < nb are inside the caller's output block.
            unsafe { *out.add(a * os + b) = reduce(lo, hi) };
        }
    }
}

/// `out[r·os + c] = dot(x[tokens[r]], key b0 + c)`, as the parent's `score_block`.
///
/// # Safety
/// AVX2 + FMA present; the arguments satisfy the checks of the parent's `score_block`.
pub(super) unsafe fn score_block(x: &[f32], tokens: &[u32], keys: &KeysView<'_>, b0: usize, nb: usize, out: &mut [f32], os: usize) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match keys.elems() {
            KeyElems::F32(k) => blocks(x, tokens, k, keys.stride(), keys.dim(), (b0, nb), out, os),
            KeyElems::Bf16(k) => blocks(x, tokens, k, keys.stride(), keys.dim(), (b0, nb), out, os),
        }
    }
}

/// # Safety
/// As [`score_block`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn blocks<K: KeyLoad>(x: &[f32], tokens: &[u32], k: &[K], stride: usize, d: usize, (b0, nb): (usize, usize), out: &mut [f32], os: usize) {
    let xrow = |t: u32| x.as_ptr().wrapping_add(t as usize * d);
    super::for_each_tile(nb, tokens, TILE_KEYS, TILE_TOKENS, |c0, n, r0, t| {
        let kp = super::tile_rows::<K, TILE_KEYS>(k, stride, b0 + c0, n);
        let o = out.as_mut_ptr().wrapping_add(r0 * os + c0);
        // SAFETY: rows and output entries are in bounds (see score_block's checks).
        unsafe {
            match t.len() {
                2 => tile::<2, K>([xrow(t[0]), xrow(t[1])], kp, d, n, o, os),
                _ => tile::<1, K>([xrow(t[0])], kp, d, n, o, os),
            }
        }
    });
}
