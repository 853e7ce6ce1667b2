//! A bounds-checked wrapper over the `gemm` crate's strided f32 matrix product, for kernels that
//! multiply sub-matrices of their inputs without copying them into tensors first.

use candle_core::{bail, Result};
pub(super) use gemm::Parallelism;

/// Logical shape and element strides of a matrix inside a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mat {
    pub rows: usize,
    pub cols: usize,
    /// Distance between rows, in elements.
    pub rs: usize,
    /// Distance between columns, in elements.
    pub cs: usize,
}

impl Mat {
    /// A dense row-major `rows × cols` matrix.
    pub fn dense(rows: usize, cols: usize) -> Self {
        Self { rows, cols, rs: cols, cs: 1 }
    }

    /// Row-major rows with a wider stride (a column block of a larger matrix).
    pub fn strided(rows: usize, cols: usize, rs: usize) -> Self {
        Self { rows, cols, rs, cs: 1 }
    }

    /// The transpose (same data, strides swapped).
    pub fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    /// Whether every element lies inside a slice of `len` elements.
    fn fits(&self, len: usize) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < len
    }
}

/// What a product does with the destination's previous contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dst {
    /// `dst = scale · a·b`.
    Overwrite,
    /// `dst += scale · a·b`.
    Accumulate,
}

/// `dst = scale · a·b`, overwriting `dst`.
///
/// # Errors
/// Mismatched shapes, or a matrix that does not fit its slice.
pub(super) fn matmul(dst: &mut [f32], d: Mat, a: (&[f32], Mat), b: (&[f32], Mat), scale: f32, par: Parallelism) -> Result<()> {
    matmul_into(dst, d, Dst::Overwrite, a, b, scale, par)
}

/// `dst (=|+=) scale · a·b` as `mode` says.
///
/// # Errors
/// Mismatched shapes, or a matrix that does not fit its slice.
pub(super) fn matmul_into(
    dst: &mut [f32],
    d: Mat,
    mode: Dst,
    (a, ma): (&[f32], Mat),
    (b, mb): (&[f32], Mat),
    scale: f32,
    par: Parallelism,
) -> Result<()> {
    if ma.rows != d.rows || mb.cols != d.cols || ma.cols != mb.rows {
        bail!("matmul: shapes {ma:?} · {mb:?} -> {d:?} do not agree")
    }
    if !d.fits(dst.len()) || !ma.fits(a.len()) || !mb.fits(b.len()) {
        bail!("matmul: a matrix does not fit its buffer")
    }
    if d.rows == 0 || d.cols == 0 {
        return Ok(());
    }
    if ma.cols == 0 {
        if mode == Dst::Accumulate {
            return Ok(());
        }
        for r in 0..d.rows {
            for c in 0..d.cols {
                dst[r * d.rs + c * d.cs] = 0.0;
            }
        }
        return Ok(());
    }
    // SAFETY: the three matrices were checked to lie inside their slices (`fits`), the shapes
    // agree, and `dst` is a unique borrow that cannot alias `a` or `b`; it is read only when
    // accumulating, and then every element it covers is initialised (it is a slice).
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            ma.cols,
            dst.as_mut_ptr(),
            d.cs as isize,
            d.rs as isize,
            mode == Dst::Accumulate,
            a.as_ptr(),
            ma.cs as isize,
            ma.rs as isize,
            b.as_ptr(),
            mb.cs as isize,
            mb.rs as isize,
            if mode == Dst::Accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_product_matches_naive_loops() {
        // a: 3×4 block (row stride 6) of a larger buffer; b given transposed.
        let a: Vec<f32> = (0..18).map(|i| i as f32 * 0.5 - 3.0).collect();
        let bt: Vec<f32> = (0..20).map(|i| (i % 7) as f32 - 2.0).collect(); // 5×4, row-major
        let ma = Mat::strided(3, 4, 6);
        let mb = Mat::dense(5, 4).t();
        let mut out = vec![0f32; 15];
        matmul(&mut out, Mat::dense(3, 5), (&a, ma), (&bt, mb), 2.0, Parallelism::None).unwrap();
        for r in 0..3 {
            for c in 0..5 {
                let want: f32 = (0..4).map(|k| a[r * 6 + k] * bt[c * 4 + k]).sum::<f32>() * 2.0;
                assert!((out[r * 5 + c] - want).abs() < 1e-4, "({r},{c}): {} vs {want}", out[r * 5 + c]);
            }
        }
    }

    #[test]
    fn out_of_bounds_is_an_error() {
        let a = vec![0f32; 5];
        let mut out = vec![0f32; 4];
        let r = matmul(&mut out, Mat::dense(2, 2), (&a, Mat::dense(2, 3)), (&a, Mat::dense(3, 2)), 1.0, Parallelism::None);
        assert!(r.is_err());
    }
}
