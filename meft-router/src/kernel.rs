//! The canonical dot product and the fast scoring kernel that reproduces it bit for bit.
//!
//! Every score in this crate is `dot(x, k)` with one fixed evaluation order, so the fast path, the
//! slow reference and the dense oracle agree exactly (ties included): 16 lanes, lane `l` accumulates
//! `x[j]·k[j]` with a fused multiply-add for `j ≡ l (mod 16)` in increasing `j` (the row is padded with
//! zeros to a multiple of 16), then the lanes are summed pairwise (`l, l+8`), (`l, l+4`), (`l, l+2`),
//! (`l, l+1`). The AVX-512 kernel keeps one 16-lane accumulator per (token, key) pair in a register
//! tile of up to 4 tokens × 6 keys; the AVX2 + FMA kernel ([`avx2`]) keeps the 16 lanes as two
//! 8-lane halves in a tile of up to 2 tokens × 3 keys; other machines use the scalar form.

use crate::inputs::{KeyElems, KeysView};

/// Lanes of the canonical dot product.
pub(crate) const LANES: usize = 16;

/// Keys per register tile.
const TILE_KEYS: usize = 6;
/// Tokens per register tile.
const TILE_TOKENS: usize = 4;

/// The canonical dot product of `x` with key row `i`, evaluated one element at a time.
pub(crate) fn dot_slow(x: &[f32], keys: &KeysView<'_>, i: usize) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let padded = x.len().div_ceil(LANES) * LANES;
    for j in 0..padded {
        let (a, b) = if j < x.len() { (x[j], keys.at(i, j)) } else { (0.0, 0.0) };
        lanes[j % LANES] = a.mul_add(b, lanes[j % LANES]);
    }
    reduce_lanes(lanes)
}

fn reduce_lanes(l: [f32; LANES]) -> f32 {
    let mut v8 = [0.0f32; 8];
    for i in 0..8 {
        v8[i] = l[i] + l[i + 8];
    }
    let v4 = [v8[0] + v8[4], v8[1] + v8[5], v8[2] + v8[6], v8[3] + v8[7]];
    let v2 = [v4[0] + v4[2], v4[1] + v4[3]];
    v2[0] + v2[1]
}

/// Scores `out[r·out_stride + c] = dot(x[tokens[r]], key b0 + c)` for every listed token and the
/// `nb` keys starting at `b0`. `x` is T×d row-major with d = `keys.dim()`.
pub(crate) fn score_block(x: &[f32], tokens: &[u32], keys: &KeysView<'_>, b0: usize, nb: usize, out: &mut [f32], out_stride: usize) {
    assert!(nb <= out_stride || tokens.len() <= 1, "score_block: out_stride < nb");
    assert!(tokens.is_empty() || out.len() >= (tokens.len() - 1) * out_stride + nb);
    assert!(b0 + nb <= keys.rows());
    let d = keys.dim();
    assert!(tokens.iter().all(|&t| (t as usize + 1) * d <= x.len()));
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU supports AVX-512F/BW (checked above); all token rows lie in `x`, the key rows
        // b0..b0+nb lie in the view (validated at construction) and `out` holds every written index
        // (asserted above).
        unsafe { simd::score_block(x, tokens, keys, b0, nb, out, out_stride) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above); bounds as for the AVX-512 call.
        unsafe { avx2::score_block(x, tokens, keys, b0, nb, out, out_stride) };
        return;
    }
    for (r, &t) in tokens.iter().enumerate() {
        let row = &x[t as usize * d..(t as usize + 1) * d];
        for c in 0..nb {
            out[r * out_stride + c] = dot_slow(row, keys, b0 + c);
        }
    }
}

/// The register-tile grid of one scoring block, shared by the SIMD kernels: for every group of
/// at most `keys_per_tile` key columns (`n` of them from column `c0`) and every group of at most
/// `tokens_per_tile` listed tokens (`rows`, from row `r0`), calls `tile(c0, n, r0, rows)`.
#[cfg(target_arch = "x86_64")]
fn for_each_tile(nb: usize, tokens: &[u32], keys_per_tile: usize, tokens_per_tile: usize, mut tile: impl FnMut(usize, usize, usize, &[u32])) {
    let mut c0 = 0;
    while c0 < nb {
        let n = (nb - c0).min(keys_per_tile);
        for (i, rows) in tokens.chunks(tokens_per_tile).enumerate() {
            tile(c0, n, i * tokens_per_tile, rows);
        }
        c0 += n;
    }
}

/// Pointers to the `TK` key rows of a tile whose `n` real rows start at row `first` of `k`
/// (row stride `stride`); a short tile repeats its last row, whose results are not written.
#[cfg(target_arch = "x86_64")]
fn tile_rows<K, const TK: usize>(k: &[K], stride: usize, first: usize, n: usize) -> [*const K; TK] {
    std::array::from_fn(|b| k.as_ptr().wrapping_add((first + b.min(n - 1)) * stride))
}

/// Which kernel [`score_block`] uses on this machine.
pub fn kernel_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        return "avx512";
    }
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        return "avx2";
    }
    "scalar"
}

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{KeyElems, KeysView, TILE_KEYS, TILE_TOKENS};
    use half::bf16;
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
    }

    /// Loads 16 key values (masked lanes read as zero) widened to f32.
    trait KeyLoad: Copy {
        /// # Safety
        /// AVX-512F/BW present; `p` valid for the unmasked lanes.
        unsafe fn load(p: *const Self, mask: __mmask16) -> __m512;
    }

    impl KeyLoad for f32 {
        #[inline(always)]
        unsafe fn load(p: *const f32, mask: __mmask16) -> __m512 {
            // SAFETY: the caller guarantees the features and the readable lanes.
            unsafe { load_f32(p, mask) }
        }
    }

    impl KeyLoad for bf16 {
        #[inline(always)]
        unsafe fn load(p: *const bf16, mask: __mmask16) -> __m512 {
            // SAFETY: the caller guarantees the features and the readable lanes.
            unsafe { load_bf16(p, mask) }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn load_f32(p: *const f32, mask: __mmask16) -> __m512 {
        // SAFETY: masked lanes are not read; the caller guarantees the others.
        unsafe { _mm512_maskz_loadu_ps(mask, p) }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn load_bf16(p: *const bf16, mask: __mmask16) -> __m512 {
        // SAFETY: masked lanes are not read; the caller guarantees the others. bf16 → f32 is a
        // 16-bit left shift of the bit pattern (exact).
        unsafe {
            let raw = _mm256_maskz_loadu_epi16(mask, p.cast());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    fn hsum(v: __m512) -> f32 {
        let lo = _mm512_castps512_ps256(v);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        let s8 = _mm256_add_ps(lo, hi);
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<1>(s2, s2));
        _mm_cvtss_f32(s1)
    }

    /// One register tile: `TA` token rows × `TILE_KEYS` key rows over the whole of d.
    ///
    /// # Safety
    /// AVX-512F/BW present; every pointer valid for `d` elements; `out` valid for the written
    /// `TA × nb` entries at stride `os`.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn tile<const TA: usize, K: KeyLoad>(xp: [*const f32; TA], kp: [*const K; TILE_KEYS], d: usize, nb: usize, out: *mut f32, os: usize) {
        let mut acc = [[_mm512_setzero_ps(); TILE_KEYS]; TA];
        let full = d / 16;
        let step = |acc: &mut [[__m512; TILE_KEYS]; TA], j: usize, mask: __mmask16| {
            let mut xv = [_mm512_setzero_ps(); TA];
            for a in 0..TA {
                // SAFETY: x rows hold d values; masked lanes are not read.
                xv[a] = unsafe { _mm512_maskz_loadu_ps(mask, xp[a].add(j)) };
            }
            for b in 0..TILE_KEYS {
                // SAFETY: key rows hold d values; masked lanes are not read.
                let kv = unsafe { K::load(kp[b].add(j), mask) };
                for a in 0..TA {
                    acc[a][b] = _mm512_fmadd_ps(xv[a], kv, acc[a][b]);
                }
            }
        };
        for blk in 0..full {
            step(&mut acc, blk * 16, 0xffff);
        }
        let rem = d % 16;
        if rem > 0 {
            step(&mut acc, full * 16, ((1u32 << rem) - 1) as __mmask16);
        }
        for (a, row) in acc.iter().enumerate() {
            for (b, &v) in row.iter().enumerate().take(nb) {
                // SAFETY: a < TA and b < nb are inside the caller's output block.
                unsafe { *out.add(a * os + b) = hsum(v) };
            }
        }
    }

    /// # Safety
    /// AVX-512F/BW present; the arguments satisfy the checks of [`super::score_block`].
    pub(super) unsafe fn score_block(x: &[f32], tokens: &[u32], keys: &KeysView<'_>, b0: usize, nb: usize, out: &mut [f32], os: usize) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match keys.elems() {
                KeyElems::F32(k) => blocks(x, tokens, k, keys.stride(), keys.dim(), b0, nb, out, os),
                KeyElems::Bf16(k) => blocks(x, tokens, k, keys.stride(), keys.dim(), b0, nb, out, os),
            }
        }
    }

    /// # Safety
    /// As [`score_block`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn blocks<K: KeyLoad>(x: &[f32], tokens: &[u32], k: &[K], stride: usize, d: usize, b0: usize, nb: usize, out: &mut [f32], os: usize) {
        let xrow = |t: u32| x.as_ptr().wrapping_add(t as usize * d);
        super::for_each_tile(nb, tokens, TILE_KEYS, TILE_TOKENS, |c0, n, r0, t| {
            let kp = super::tile_rows::<K, TILE_KEYS>(k, stride, b0 + c0, n);
            let o = out.as_mut_ptr().wrapping_add(r0 * os + c0);
            // SAFETY: rows and output entries are in bounds (see score_block's checks).
            unsafe {
                match t.len() {
                    4 => tile::<4, K>([xrow(t[0]), xrow(t[1]), xrow(t[2]), xrow(t[3])], kp, d, n, o, os),
                    3 => tile::<3, K>([xrow(t[0]), xrow(t[1]), xrow(t[2])], kp, d, n, o, os),
                    2 => tile::<2, K>([xrow(t[0]), xrow(t[1])], kp, d, n, o, os),
                    _ => tile::<1, K>([xrow(t[0])], kp, d, n, o, os),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) - 0.5
            })
            .collect()
    }

    /// Signature of a scoring kernel under test (that of [`score_block`]).
    type Kernel = dyn Fn(&[f32], &[u32], &KeysView<'_>, usize, usize, &mut [f32], usize);

    /// Checks `kernel` against `dot_slow`, bit for bit, on f32 and bf16 keys of several shapes
    /// (tails shorter than 16, strides above d, d = 0, the model's d = 576).
    fn assert_bitwise_canonical(kernel: &Kernel) {
        for &(t, m, d, stride) in &[(7, 13, 37, 40), (4, 6, 16, 16), (9, 20, 100, 200), (3, 8, 576, 576), (1, 1, 3, 3), (5, 7, 0, 0)] {
            let x = data(t * d, 1);
            let kd = data(m * stride.max(1), 2);
            let kb: Vec<bf16> = kd.iter().map(|&v| bf16::from_f32(v)).collect();
            let tokens: Vec<u32> = (0..t as u32).rev().collect();
            for keys in [KeysView::f32(&kd, m, d, stride).unwrap(), KeysView::bf16(&kb, m, d, stride).unwrap()] {
                let mut out = vec![f32::NAN; t * (m + 2)];
                kernel(&x, &tokens, &keys, 1, m - 1, &mut out, m + 2);
                for (r, &tok) in tokens.iter().enumerate() {
                    for c in 0..m - 1 {
                        let want = dot_slow(&x[tok as usize * d..(tok as usize + 1) * d], &keys, 1 + c);
                        assert_eq!(out[r * (m + 2) + c].to_bits(), want.to_bits(), "t{r} c{c} d{d}");
                    }
                }
            }
        }
    }

    /// The AVX2 kernel on its own (it is the fast path only on machines without AVX-512, so this
    /// test keeps it checked on those that have it too).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernel_is_bitwise_canonical() {
        if !avx2::available() {
            eprintln!("skipped: this CPU has no AVX2 + FMA");
            return;
        }
        // SAFETY: AVX2 and FMA are present; the shapes keep the bounds of `score_block`.
        assert_bitwise_canonical(&|x, t, k, b0, nb, out, os| unsafe { avx2::score_block(x, t, k, b0, nb, out, os) });
    }

    #[test]
    fn fast_kernel_is_bitwise_canonical() {
        assert_bitwise_canonical(&score_block);
    }
}
