//! Products in bf16: inputs rounded to bfloat16, sums kept in f32 (the mixed precision of GPU
//! training), for the frozen projections and the output head of a model and for full
//! fine-tuning's updates.
//!
//! A [`Bf16Weight`] is the bf16 companion of one f32 weight `W` `(out, in)`. With Intel AMX
//! ([`amx`]) it holds `Wᵀ` packed into tile panels for `x·Wᵀ`, and builds `W`'s panels for the
//! input gradient `g·W` on the first backward. Without AMX it holds `W` rounded to bf16 values
//! (stored as f32) and runs the f32 product on rounded inputs: the same rounding, a different
//! order of f32 additions. [`matmul_tn`] gives the weight gradient `gᵀ·x` the same way.
//! [`matmul_slow`] is the reference all are tested against.
//! The companion remembers the tensor it was made from; layers use it only while their weight
//! is still that tensor.

use std::sync::OnceLock;

use candle_core::{CpuStorage, Result, Storage, Tensor, TensorId, bail};

mod amx;

use amx::Panels;
pub use amx::available as amx_available;

/// What a product does with the destination's previous contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dst {
    /// `dst = a·b`.
    Overwrite,
    /// `dst += a·b`.
    Accumulate,
}

/// `dst (m × n) (=|+=) a (m × k) · b`, `b` given by its element strides `(row, column)`: the
/// portable f32 product (the gemm crate) of the fallback path.
fn portable(dst: &mut [f32], mode: Dst, a: &[f32], (m, k, n): (usize, usize, usize), b: &[f32], (rs, cs): (usize, usize)) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if mode == Dst::Overwrite {
            dst.fill(0.0);
        }
        return;
    }
    let accumulate = mode == Dst::Accumulate;
    // SAFETY: the callers check `dst.len() == m·n`, `a.len() == m·k` and that `b` holds the
    // `k × n` matrix of the given strides; `dst` is a unique borrow aliasing neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            cs as isize,
            rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

/// The precision of the frozen products of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrozenPrecision {
    /// f32 weights and inputs (the reference; what the PyTorch fixtures check).
    #[default]
    F32,
    /// Inputs and weights rounded to bf16, sums in f32 (AMX tiles when the CPU has them).
    Bf16,
}

impl std::str::FromStr for FrozenPrecision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            o => Err(format!("`{o}` is not a frozen precision; use f32 or bf16")),
        }
    }
}

/// `x` rounded to the nearest bf16 (ties to even), as bits; NaN stays NaN.
#[inline(always)]
pub fn round_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let nearest = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((b >> 16) | 0x40) as u16;
    if x.is_nan() { quiet_nan } else { nearest }
}

/// `src` rounded to bf16 into `dst` (same length), vectorised.
pub fn round_into(src: &[f32], dst: &mut [u16]) {
    pulp::Arch::new().dispatch(
        #[inline(always)]
        || {
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = round_bf16(x);
            }
        },
    )
}

/// The f32 value of bf16 bits.
#[inline(always)]
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// `x` rounded to bf16 precision, as f32.
#[inline(always)]
fn rounded(x: f32) -> f32 {
    bf16_value(round_bf16(x))
}

/// What a [`Bf16Weight`] stores.
enum Store {
    /// AMX panels of `Wᵀ` (forward) and, after the first backward, of `W` (packed from
    /// `source`, the f32 weight, which the model keeps anyway).
    Tiles { fwd: Panels, bwd: OnceLock<Panels>, source: Tensor },
    /// `W` rounded to bf16 values, `(out, in)` row-major, for the portable f32 product.
    Rounded(Vec<f32>),
}

/// The bf16 companion of a frozen f32 weight `(out, in)`; see the module docs.
pub struct Bf16Weight {
    source: TensorId,
    out_dim: usize,
    in_dim: usize,
    store: Store,
}

impl Bf16Weight {
    /// Rounds and packs the contiguous f32 CPU weight `w` `(out, in)` (AMX panels when the CPU
    /// has AMX).
    pub fn new(w: &Tensor) -> Result<Self> {
        Self::build(w, amx::available())
    }

    fn build(w: &Tensor, tiles: bool) -> Result<Self> {
        let &[out_dim, in_dim] = w.dims() else { bail!("bf16 weight: expected a 2-d (out, in) weight, got {:?}", w.dims()) };
        let store = with_data(w, |data| {
            Ok(if tiles {
                Store::Tiles { fwd: Panels::transposed_of(data, out_dim, in_dim), bwd: OnceLock::new(), source: w.clone() }
            } else {
                Store::Rounded(data.iter().map(|&x| rounded(x)).collect())
            })
        })?;
        Ok(Self { source: w.id(), out_dim, in_dim, store })
    }

    /// Whether this companion was made from `w` (and so may stand in for it).
    pub fn is_for(&self, w: &Tensor) -> bool {
        w.id() == self.source
    }

    /// Bytes held (packed panels or rounded values).
    pub fn bytes(&self) -> usize {
        match &self.store {
            Store::Tiles { fwd, bwd, .. } => fwd.bytes() + bwd.get().map_or(0, Panels::bytes),
            Store::Rounded(w) => 4 * w.len(),
        }
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.out_dim, self.in_dim)
    }

    /// `y (=|+=) x·Wᵀ` for `x` of `rows × in` and `y` of `rows × out`.
    pub fn forward_into(&self, x: &[f32], y: &mut [f32], mode: Dst) -> Result<()> {
        let rows = self.rows_of(x.len(), self.in_dim, y.len(), self.out_dim)?;
        match &self.store {
            Store::Tiles { fwd, .. } => done(amx::matmul(y, mode, x, rows, fwd)),
            Store::Rounded(w) => {
                let xr: Vec<f32> = x.iter().map(|&v| rounded(v)).collect();
                portable(y, mode, &xr, (rows, self.in_dim, self.out_dim), w, (1, self.in_dim));
                Ok(())
            }
        }
    }

    /// `g·W` for `g` of `rows × out`: the input gradient, `rows × in`.
    pub fn backward(&self, g: &[f32]) -> Result<Vec<f32>> {
        let rows = g.len() / self.out_dim.max(1);
        let mut dx = vec![0f32; rows * self.in_dim];
        self.rows_of(g.len(), self.out_dim, dx.len(), self.in_dim)?;
        match &self.store {
            Store::Tiles { bwd, source, .. } => {
                let panels = match bwd.get() {
                    Some(p) => p,
                    None => {
                        let packed = with_data(source, |w| Ok(Panels::of(w, self.out_dim, self.in_dim)))?;
                        bwd.get_or_init(|| packed)
                    }
                };
                done(amx::matmul(&mut dx, Dst::Overwrite, g, rows, panels))?;
            }
            Store::Rounded(w) => {
                let gr: Vec<f32> = g.iter().map(|&v| rounded(v)).collect();
                portable(&mut dx, Dst::Overwrite, &gr, (rows, self.out_dim, self.in_dim), w, (self.in_dim, 1));
            }
        }
        Ok(dx)
    }

    /// The row count of an input of `len` elements of width `width` whose output has `out_len`
    /// elements of width `out_width`.
    fn rows_of(&self, len: usize, width: usize, out_len: usize, out_width: usize) -> Result<usize> {
        let rows = len / width.max(1);
        if len != rows * width || out_len != rows * out_width {
            bail!("bf16 product: {len} input / {out_len} output elements do not fit a ({}, {}) weight", self.out_dim, self.in_dim)
        }
        Ok(rows)
    }
}

impl std::fmt::Debug for Bf16Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.store {
            Store::Tiles { .. } => "AMX tiles",
            Store::Rounded(_) => "rounded f32",
        };
        write!(f, "Bf16Weight({} × {}, {kind})", self.out_dim, self.in_dim)
    }
}

/// Runs `f` on the values of the contiguous f32 CPU tensor `w`.
fn with_data<R>(w: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = w.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) = (&*storage, layout.contiguous_offsets()) else {
        bail!("bf16 weight: the weight must be a contiguous f32 CPU tensor")
    };
    f(&v[a..b])
}

fn done(ok: bool) -> Result<()> {
    if !ok {
        bail!("bf16 product: the AMX kernel refused its operands (shape mismatch)")
    }
    Ok(())
}

/// `aᵀ·b` in bf16 for `a` of `rows × m` and `b` of `rows × n` (the weight gradient `gᵀ·x` of a
/// trained projection); returns `m × n`.
///
/// # Errors
/// Lengths that do not fit the shapes.
pub fn matmul_tn(a: &[f32], b: &[f32], rows: usize, m: usize, n: usize) -> Result<Vec<f32>> {
    if a.len() != rows * m || b.len() != rows * n {
        bail!("bf16 aᵀ·b: {} / {} elements do not fit {rows} rows of {m} / {n}", a.len(), b.len());
    }
    let mut at = vec![0f32; m * rows];
    for (r, row) in a.chunks(m.max(1)).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            at[c * rows + r] = v;
        }
    }
    let mut out = vec![0f32; m * n];
    if amx::available() {
        let panels = Panels::of(b, rows, n);
        done(amx::matmul(&mut out, Dst::Overwrite, &at, m, &panels))?;
    } else {
        let (ar, br): (Vec<f32>, Vec<f32>) = (at.iter().map(|&v| rounded(v)).collect(), b.iter().map(|&v| rounded(v)).collect());
        portable(&mut out, Dst::Overwrite, &ar, (m, rows, n), &br, (n, 1));
    }
    Ok(out)
}

/// Reference: `a (m × k) · b (k × n)` with both rounded to bf16 and the sums taken in f64.
pub fn matmul_slow(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for r in 0..m {
        for c in 0..n {
            let s: f64 = (0..k).map(|j| f64::from(rounded(a[r * k + j])) * f64::from(rounded(b[j * n + c]))).sum();
            out[r * n + c] = s as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn rounding_is_to_nearest_even_and_keeps_specials() {
        assert_eq!(round_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(round_bf16(f32::INFINITY), 0x7f80);
        assert!(bf16_value(round_bf16(f32::NAN)).is_nan());
        assert!(bf16_value(round_bf16(-f32::from_bits(0x7f80_0001))).is_nan());
        assert_eq!(bf16_value(round_bf16(-2.5)), -2.5);
    }

    /// Largest `|got − want|` allowed: f32 summation error of `k` terms of the sizes given.
    fn tolerance(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let abs_a: Vec<f32> = a.iter().map(|x| x.abs()).collect();
        let abs_b: Vec<f32> = b.iter().map(|x| x.abs()).collect();
        matmul_slow(&abs_a, &abs_b, m, k, n).into_iter().map(|s| 2e-7 * (k as f32 + 2.0) * s + 1e-30).collect()
    }

    fn check(got: &[f32], want: &[f32], tol: &[f32]) -> std::result::Result<(), TestCaseError> {
        for (i, ((g, w), t)) in got.iter().zip(want).zip(tol).enumerate() {
            prop_assert!((g - w).abs() <= *t, "element {i}: {g} vs {w} (tolerance {t})");
        }
        Ok(())
    }

    fn values(n: usize) -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(-4f32..4f32, n)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Forward `x·Wᵀ` (overwrite and accumulate) and backward `g·W` of the companion match
        /// the bf16 reference on odd shapes (partial tiles in every dimension).
        #[test]
        fn bf16_products_match_the_reference(
            (m, k, n, x, w, g, base) in (1usize..70, 1usize..100, 1usize..80).prop_flat_map(|(m, k, n)| {
                (Just(m), Just(k), Just(n), values(m * k), values(n * k), values(m * n), values(m * n))
            })
        ) {
            let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
            let w_t: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect(); // Wᵀ, k × n
            let want = matmul_slow(&x, &w_t, m, k, n);
            let tol = tolerance(&x, &w_t, m, k, n);
            let want_acc: Vec<f32> = want.iter().zip(&base).map(|(a, b)| a + b).collect();
            let tol_acc: Vec<f32> = tol.iter().zip(&base).map(|(t, b)| t + 1e-6 * b.abs()).collect();
            let want_dx = matmul_slow(&g, &w, m, n, k);
            let tol_dx = tolerance(&g, &w, m, n, k);
            // The portable kernel always; the AMX tiles where this CPU has them.
            for tiles in [false, amx::available()].into_iter().collect::<std::collections::BTreeSet<_>>() {
                let weight = Bf16Weight::build(&wt, tiles).unwrap();
                prop_assert!(weight.is_for(&wt));
                let mut y = vec![f32::NAN; m * n];
                weight.forward_into(&x, &mut y, Dst::Overwrite).unwrap();
                check(&y, &want, &tol)?;
                let mut acc = base.clone();
                weight.forward_into(&x, &mut acc, Dst::Accumulate).unwrap();
                check(&acc, &want_acc, &tol_acc)?;
                check(&weight.backward(&g).unwrap(), &want_dx, &tol_dx)?;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        /// `aᵀ·b` (the weight-gradient product) matches the bf16 reference on odd shapes.
        #[test]
        fn transposed_product_matches_the_reference(
            (rows, m, n, a, b) in (1usize..70, 1usize..50, 1usize..60).prop_flat_map(|(r, m, n)| {
                (Just(r), Just(m), Just(n), values(r * m), values(r * n))
            })
        ) {
            let at: Vec<f32> = (0..m * rows).map(|i| a[(i % rows) * m + i / rows]).collect(); // m × rows
            let want = matmul_slow(&at, &b, m, rows, n);
            check(&matmul_tn(&a, &b, rows, m, n).unwrap(), &want, &tolerance(&at, &b, m, rows, n))?;
        }
    }

    #[test]
    fn mismatched_operands_are_errors() {
        let w = Tensor::zeros((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let weight = Bf16Weight::new(&w).unwrap();
        let mut y = vec![0f32; 6];
        assert!(weight.forward_into(&[0.0; 7], &mut y, Dst::Overwrite).is_err());
        assert!(weight.backward(&[0.0; 5]).is_err());
        assert!(matmul_tn(&[0.0; 6], &[0.0; 5], 2, 3, 3).is_err());
        assert!(!weight.is_for(&w.clone().contiguous().unwrap().affine(1.0, 0.0).unwrap()));
    }
}
