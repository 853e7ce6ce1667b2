//! A branch-free `exp` for f32 that the compiler vectorises, and the reductions built on it
//! (masked softmax, log-sum-exp, sigmoid).
//!
//! `f32::exp` is a libm call per element, which keeps every loop around it scalar: softmax,
//! cross-entropy and SwiGLU spent ~5 % of a SmolLM2 forward + backward in `__expf_fma`. This
//! version reduces `x = n·ln2 + r` with `|r| ≤ ln2/2`, evaluates a degree-6 polynomial for `e^r`
//! and builds `2^n` from the exponent bits: relative error below 4e-7 (a few ulp) on the whole
//! range, checked against `f32::exp` in the tests below. Inputs below −87.3 give 0 (as the
//! softmax of a masked score must), above 88.37 saturate at `e^88.37`, NaN stays NaN.

/// Runs `f` compiled for the widest vector unit this CPU has (AVX-512, else AVX2 + FMA, else the
/// baseline), picked at run time. The workspace builds for baseline x86-64 (its binaries also
/// run on the GPU hosts), which leaves the loops of these kernels 4 lanes wide and the `exp`
/// clamps partly scalar; inside `f`, the same code compiles to 16-lane AVX-512.
#[inline(always)]
pub(super) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// Smallest input with a normal result; below it the result is 0.
const MIN_INPUT: f32 = -87.33;
/// Largest input computed exactly; larger inputs saturate near `2.4e38` (keeps `2^n`
/// within the f32 exponent range).
const MAX_INPUT: f32 = 88.37;

/// `e^x` (see the module docs for accuracy); inlines into vectorised loops.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    /// 1.5·2²³: adding and subtracting it rounds to the nearest integer without a libm call.
    const ROUND: f32 = 12_582_912.0;
    let below = x < MIN_INPUT;
    let xc = x.clamp(MIN_INPUT, MAX_INPUT);
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // `n` as an integer straight from the bits of `shifted` (its ulp is 1, so the low mantissa
    // bits hold `n` plus a constant): `n as i32` is a saturating conversion that compiles to a
    // scalar instruction per lane.
    let n_int = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    let y = p * scale;
    let y = if below { 0.0 } else { y };
    if x.is_nan() { x } else { y }
}

/// `1 / (1 + e^−x)`.
#[inline(always)]
pub(super) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Independent accumulators of the reductions: one AVX-512 register of f32 lanes.
const LANES: usize = 16;

/// Sum of `f(x)` over a slice with [`LANES`] independent accumulators (vectorises; the order
/// differs from a plain left fold by rounding only).
#[inline(always)]
fn sum_of(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ a·b` over two slices (lane-wise like [`sum_of`]; the shorter length counts).
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a[..n].chunks_exact(LANES), b[..n].chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for ((s, &xv), &yv) in acc.iter_mut().zip(x).zip(y) {
            *s += xv * yv;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum of a slice (see [`sum_of`]).
#[inline]
fn sum(xs: &[f32]) -> f32 {
    sum_of(xs, |x| x)
}

/// Largest element, NaNs ignored (−∞ for an empty slice). Lane-wise like [`sum_of`]: a plain
/// `fold(f32::max)` is one serial chain of scalar comparisons.
#[inline]
fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// `xs[i] = e^(xs[i] − shift)`, returning their sum.
#[inline]
fn exp_shifted_in_place(xs: &mut [f32], shift: f32) -> f32 {
    xs.iter_mut().for_each(|v| *v = exp(*v - shift));
    sum(xs)
}

/// Softmax of `row[a..b]` in place; every entry outside that range becomes exactly 0.
pub(super) fn softmax_visible(row: &mut [f32], (a, b): (usize, usize)) {
    vectorized(
        #[inline(always)]
        || {
            let m = max(&row[a..b]);
            let inv = 1.0 / exp_shifted_in_place(&mut row[a..b], m);
            row[a..b].iter_mut().for_each(|v| *v *= inv);
            row[..a].fill(0.0);
            row[b..].fill(0.0);
        },
    )
}

/// `log Σ e^x` of a row, stable for large inputs.
pub(super) fn log_sum_exp(row: &[f32]) -> f32 {
    vectorized(
        #[inline(always)]
        || {
            let m = max(row);
            m + sum_of(row, |x| exp(x - m)).ln()
        },
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn rel_err(got: f32, want: f32) -> f32 {
        if want == 0.0 { got.abs() } else { ((got - want) / want).abs() }
    }

    #[test]
    fn exp_matches_libm_on_a_dense_grid() {
        let mut worst = 0f32;
        for i in -87_000..=88_000 {
            let x = i as f32 * 1e-3 + 0.000_37;
            worst = worst.max(rel_err(exp(x), x.exp()));
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 2e38);
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
        assert!(sigmoid(-1000.0) < 1e-37);
        assert_eq!(sigmoid(1000.0), 1.0);
    }

    proptest! {
        #[test]
        fn reductions_match_plain_loops(xs in proptest::collection::vec(-30f32..30.0, 0..70)) {
            let plain_lse = {
                let m = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                m + xs.iter().map(|&x| (x - m).exp()).sum::<f32>().ln()
            };
            if !xs.is_empty() {
                prop_assert!((log_sum_exp(&xs) - plain_lse).abs() <= 1e-5 * plain_lse.abs().max(1.0));
            }
            prop_assert_eq!(max(&xs), xs.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            let rev: Vec<f32> = xs.iter().rev().copied().collect();
            let plain_dot: f32 = xs.iter().zip(&rev).map(|(a, b)| a * b).sum();
            prop_assert!((dot(&xs, &rev) - plain_dot).abs() <= 1e-4 * xs.iter().map(|x| x * x).sum::<f32>().max(1.0));
            let plain_sum: f32 = xs.iter().sum();
            prop_assert!((sum(&xs) - plain_sum).abs() <= 1e-4 * xs.iter().map(|x| x.abs()).sum::<f32>().max(1.0));
            let mut shifted = xs.clone();
            let total = exp_shifted_in_place(&mut shifted, 3.0);
            let want: f32 = xs.iter().map(|&x| (x - 3.0).exp()).sum();
            prop_assert!((total - want).abs() <= 1e-5 * want.max(1e-30));
            for (&s, &x) in shifted.iter().zip(&xs) {
                prop_assert!(rel_err(s, (x - 3.0).exp()) < 1e-6);
            }
        }
    }
}
