//! A bounds-checked wrapper over the `gemm` crate's strided f32 matrix product, for kernels that
//! multiply sub-matrices of their inputs without copying them into tensors first.

use candle_core::{Result, bail};
pub(super) use gemm::Parallelism;
use rayon::prelude::*;

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

/// What a product does with the destination's previous contents (`dst = scale · a·b` or
/// `dst += scale · a·b`); one enum shared with the bf16 products.
pub(super) use meft_core::bf16::Dst;

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
    check_shapes(dst.len(), d, (a.len(), ma), (b.len(), mb))?;
    if d.rows == 0 || d.cols == 0 {
        return Ok(());
    }
    if ma.cols == 0 {
        if mode == Dst::Overwrite {
            for r in 0..d.rows {
                for c in 0..d.cols {
                    dst[r * d.rs + c * d.cs] = 0.0;
                }
            }
        }
        return Ok(());
    }
    // SAFETY: `check_shapes` proved the three matrices lie inside their slices and agree in shape;
    // `dst` is a unique borrow that cannot alias `a` or `b`.
    unsafe { gemm_raw(dst.as_mut_ptr(), d, mode, (a.as_ptr(), ma), (b.as_ptr(), mb), scale, par) };
    Ok(())
}

/// [`matmul_into`] with `dst`'s columns split into one block per rayon thread, each block a
/// single-threaded product.
///
/// The gemm crate packs a strided operand on the calling thread before it parallelises
/// anything, and splits the work of small products unevenly: on two threads a whole product
/// ran 10–35 % slower than two half-width products for the projection shapes of SmolLM2. Each
/// block here packs its own part of `b` on the thread that uses it and writes its columns of
/// `dst` in place.
///
/// # Errors
/// Mismatched shapes, or a matrix that does not fit its buffer.
pub(super) fn matmul_column_split(dst: &mut [f32], d: Mat, mode: Dst, (a, ma): (&[f32], Mat), (b, mb): (&[f32], Mat), scale: f32) -> Result<()> {
    check_shapes(dst.len(), d, (a.len(), ma), (b.len(), mb))?;
    let blocks = rayon::current_num_threads().clamp(1, d.cols.max(1));
    if blocks == 1 || ma.cols == 0 || d.rows == 0 {
        return matmul_into(dst, d, mode, (a, ma), (b, mb), scale, Parallelism::None);
    }
    let width = d.cols.div_ceil(blocks);
    let out = SharedDst(dst.as_mut_ptr());
    (0..d.cols).step_by(width).collect::<Vec<_>>().into_par_iter().for_each(|c0| {
        let cols = width.min(d.cols - c0);
        let (d_block, b_block) = (Mat { cols, ..d }, Mat { cols, ..mb });
        // SAFETY: the blocks cover disjoint column ranges of `dst`, so no two threads write the
        // same element; each block is a sub-matrix of a matrix `check_shapes` proved in bounds.
        unsafe { gemm_raw(out.at(c0 * d.cs), d_block, mode, (a.as_ptr(), ma), (b.as_ptr().add(c0 * mb.cs), b_block), scale, Parallelism::None) };
    });
    Ok(())
}

/// The destination pointer shared by the threads of [`matmul_column_split`].
#[derive(Clone, Copy)]
struct SharedDst(*mut f32);

// SAFETY: the threads that share it write disjoint elements (see `matmul_column_split`).
unsafe impl Send for SharedDst {}
// SAFETY: as for `Send`: no element is written by two threads.
unsafe impl Sync for SharedDst {}

impl SharedDst {
    /// The pointer `offset` elements on.
    ///
    /// # Safety
    /// `offset` must stay inside the destination slice.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: the caller keeps `offset` inside the allocation.
        unsafe { self.0.add(offset) }
    }
}

/// Shapes that agree and matrices that fit buffers of the given lengths.
fn check_shapes(dst_len: usize, d: Mat, (a_len, ma): (usize, Mat), (b_len, mb): (usize, Mat)) -> Result<()> {
    if ma.rows != d.rows || mb.cols != d.cols || ma.cols != mb.rows {
        bail!("matmul: shapes {ma:?} · {mb:?} -> {d:?} do not agree")
    }
    if !d.fits(dst_len) || !ma.fits(a_len) || !mb.fits(b_len) {
        bail!("matmul: a matrix does not fit its buffer")
    }
    Ok(())
}

/// The gemm crate's product on raw pointers.
///
/// # Safety
/// Every element of the three matrices lies inside its allocation, the shapes agree with
/// `ma.cols > 0`, `dst` aliases neither input, and no other thread touches the elements of `d`.
unsafe fn gemm_raw(dst: *mut f32, d: Mat, mode: Dst, (a, ma): (*const f32, Mat), (b, mb): (*const f32, Mat), scale: f32, par: Parallelism) {
    let accumulate = mode == Dst::Accumulate;
    // SAFETY: the caller upholds this function's contract, which is gemm's (in-bounds strided
    // matrices, no aliasing of `dst`, exclusive access to its elements).
    unsafe {
        gemm::gemm(
            d.rows,
            d.cols,
            ma.cols,
            dst,
            d.cs as isize,
            d.rs as isize,
            accumulate,
            a,
            ma.cs as isize,
            ma.rs as isize,
            b,
            mb.cs as isize,
            mb.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            scale,
            false,
            false,
            false,
            par,
        );
    }
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
