//! The AdamW element kernel, compiled once per SIMD level and picked at run time.
//!
//! The update is written once ([`update_elem`]) as plain `f32` arithmetic with exact `sqrt` and
//! division; the span loop that calls it is compiled three times: with AVX-512F, with AVX2 and with
//! the portable baseline. The build stays portable (no `-C target-cpu`); the level is detected on
//! first use. Rust never contracts `a·b + c` into an FMA on its own, so every level rounds the same
//! way and produces bit-identical results (tested in `tests`).

use rayon::prelude::*;

use super::AdamWConfig;

/// Per-step scalars of the AdamW update, computed in `f64` and rounded once to `f32`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Coeffs {
    /// `1 − lr·wd`.
    decay: f32,
    /// `1 − β₁` (the `lerp` weight of PyTorch's first-moment update).
    one_minus_beta1: f32,
    /// `β₂`.
    beta2: f32,
    /// `1 − β₂`.
    one_minus_beta2: f32,
    /// `lr / (1 − β₁ᵗ)`.
    step_size: f32,
    /// `1 / √(1 − β₂ᵗ)`.
    inv_bc2_sqrt: f32,
    /// `eps`.
    eps: f32,
}

impl Coeffs {
    /// Scalars for the 1-based `step` (`step ≥ 1`, config already validated).
    pub(crate) fn new(cfg: &AdamWConfig, step: u64) -> Self {
        let t = step as f64;
        let bc1 = 1.0 - cfg.beta1.powf(t);
        let bc2 = 1.0 - cfg.beta2.powf(t);
        Self {
            decay: (1.0 - cfg.lr * cfg.weight_decay) as f32,
            one_minus_beta1: (1.0 - cfg.beta1) as f32,
            beta2: cfg.beta2 as f32,
            one_minus_beta2: (1.0 - cfg.beta2) as f32,
            step_size: (cfg.lr / bc1) as f32,
            inv_bc2_sqrt: (1.0 / bc2.sqrt()) as f32,
            eps: cfg.eps as f32,
        }
    }
}

/// One element of AdamW, in the order PyTorch applies it.
#[inline(always)]
fn update_elem(c: &Coeffs, p: &mut f32, g: f32, m: &mut f32, v: &mut f32) {
    let decayed = *p * c.decay;
    let m_new = *m + c.one_minus_beta1 * (g - *m);
    let v_new = *v * c.beta2 + c.one_minus_beta2 * (g * g);
    let denom = v_new.sqrt() * c.inv_bc2_sqrt + c.eps;
    *p = decayed - c.step_size * (m_new / denom);
    *m = m_new;
    *v = v_new;
}

/// The span loop; `#[inline(always)]` so each `target_feature` wrapper gets its own vector code.
#[inline(always)]
fn update_span_generic(c: &Coeffs, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        update_elem(c, &mut p[i], g[i], &mut m[i], &mut v[i]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn update_span_avx512(c: &Coeffs, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    update_span_generic(c, p, g, m, v);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn update_span_avx2(c: &Coeffs, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    update_span_generic(c, p, g, m, v);
}

/// An instruction-set level the kernel is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SimdLevel {
    /// 512-bit vectors (x86-64 AVX-512F).
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// 256-bit vectors (x86-64 AVX2).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Whatever the target's baseline gives (SSE2 on x86-64, NEON on aarch64).
    Portable,
}

impl SimdLevel {
    /// The best level this CPU supports (detection results are cached by `std`).
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    /// Every level this CPU can run, best first (for tests comparing them).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Self> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                out.push(Self::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                out.push(Self::Avx2);
            }
        }
        out.push(Self::Portable);
        out
    }
}

/// Updates one span in place at the given level. All slices must have `p.len()` elements or more.
pub(crate) fn update_span(level: SimdLevel, c: &Coeffs, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    match level {
        // SAFETY: `Avx512` is only produced by `detect`/`available` after the CPU reported AVX-512F.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { update_span_avx512(c, p, g, m, v) },
        // SAFETY: `Avx2` is only produced by `detect`/`available` after the CPU reported AVX2.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { update_span_avx2(c, p, g, m, v) },
        SimdLevel::Portable => update_span_generic(c, p, g, m, v),
    }
}

/// Elements per rayon task for streaming loops: 32 Ki `f32` (128 KiB per buffer) keeps the four
/// streams of one task inside L2 and gives thousands of tasks for large adapters.
pub(crate) const STREAM_CHUNK: usize = 1 << 15;

/// Largest `|x|` bit pattern in a chunk; NaN and ±inf are exactly the patterns `≥ 0x7f80_0000`.
/// A branch-free max reduction, so it vectorises.
#[inline(always)]
fn max_abs_bits_generic(x: &[f32]) -> u32 {
    x.iter().fold(0u32, |acc, v| acc.max(v.to_bits() & 0x7fff_ffff))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn max_abs_bits_avx512(x: &[f32]) -> u32 {
    max_abs_bits_generic(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn max_abs_bits_avx2(x: &[f32]) -> u32 {
    max_abs_bits_generic(x)
}

/// Whether a chunk holds a NaN or an infinity, at the given level.
fn chunk_has_non_finite(level: SimdLevel, x: &[f32]) -> bool {
    let max = match level {
        // SAFETY: `Avx512` is only produced by `detect`/`available` after the CPU reported AVX-512F.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { max_abs_bits_avx512(x) },
        // SAFETY: `Avx2` is only produced by `detect`/`available` after the CPU reported AVX2.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { max_abs_bits_avx2(x) },
        SimdLevel::Portable => max_abs_bits_generic(x),
    };
    max >= 0x7f80_0000
}

/// Index of the first NaN or ±inf in `x`, or `None` when every value is finite.
///
/// Parallel over 32 Ki-element chunks for large inputs; the scan is a branch-free reduction per
/// chunk, so it runs at memory bandwidth.
pub fn first_non_finite(x: &[f32]) -> Option<usize> {
    let level = SimdLevel::detect();
    let has_bad = |c: &[f32]| chunk_has_non_finite(level, c);
    let chunk =
        if x.len() >= 4 * STREAM_CHUNK { x.par_chunks(STREAM_CHUNK).position_first(has_bad) } else { x.chunks(STREAM_CHUNK).position(has_bad) }?;
    let start = chunk * STREAM_CHUNK;
    let offset = x[start..].iter().position(|v| !v.is_finite())?;
    Some(start + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn every_simd_level_is_bit_identical() {
        let cfg = AdamWConfig { lr: 1e-2, weight_decay: 0.1, ..Default::default() };
        let c = Coeffs::new(&cfg, 3);
        let mut seed = 7;
        for n in [0, 1, 7, 15, 16, 17, 33, 1000, 1023] {
            let g: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let p0: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let m0: Vec<f32> = (0..n).map(|_| lcg(&mut seed) * 0.1).collect();
            let v0: Vec<f32> = (0..n).map(|_| lcg(&mut seed).abs() * 0.01).collect();
            let mut results = Vec::new();
            for level in SimdLevel::available() {
                let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
                update_span(level, &c, &mut p, &g, &mut m, &mut v);
                let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                results.push((level, bits(&p), bits(&m), bits(&v)));
            }
            for r in &results[1..] {
                assert_eq!((&r.1, &r.2, &r.3), (&results[0].1, &results[0].2, &results[0].3), "{:?} n={n}", r.0);
            }
        }
    }

    #[test]
    fn first_non_finite_finds_the_first_bad_value() {
        for n in [0usize, 1, 5, STREAM_CHUNK - 1, 5 * STREAM_CHUNK + 3] {
            let mut x = vec![0.5f32; n];
            assert_eq!(first_non_finite(&x), None, "n={n}");
            if n == 0 {
                continue;
            }
            let mut first = usize::MAX;
            for (pos, bad) in [(n - 1, f32::NAN), (n / 2, f32::INFINITY), (n / 3, f32::NEG_INFINITY)] {
                x[pos] = bad;
                first = first.min(pos);
                assert_eq!(first_non_finite(&x), Some(first), "n={n} pos={pos}");
            }
        }
        assert_eq!(first_non_finite(&[f32::MAX, f32::MIN_POSITIVE, -0.0, 1e-45]), None);
    }

    #[test]
    fn every_level_classifies_special_values() {
        let finite = [0.0f32, -0.0, 1e-45, -1e-45, f32::MIN_POSITIVE, f32::MAX, f32::MIN, 1.0];
        let bad = [f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001), f32::from_bits(0xffc0_1234), f32::INFINITY, f32::NEG_INFINITY];
        for level in SimdLevel::available() {
            for len in [1usize, 15, 16, 17, 64, 100] {
                let mut x: Vec<f32> = (0..len).map(|i| finite[i % finite.len()]).collect();
                assert!(!chunk_has_non_finite(level, &x), "{level:?} len {len}");
                for b in bad {
                    let keep = x[len - 1];
                    x[len - 1] = b;
                    assert!(chunk_has_non_finite(level, &x), "{level:?} len {len} {:#x}", b.to_bits());
                    x[len - 1] = keep;
                }
            }
        }
    }
}
