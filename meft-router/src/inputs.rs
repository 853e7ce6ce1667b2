//! Borrowed input views: token rows, strided key rows (f32 or bf16) and the gate source.

use crate::error::{Operand, Result, RouteError};
use half::bf16;

/// A contiguous row-major f32 matrix view (`rows × cols`).
///
/// ```
/// use meft_router::Rows;
/// let x = Rows::new(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3)?;
/// assert_eq!(x.row(1), &[4.0, 5.0, 6.0]);
/// # Ok::<(), meft_router::RouteError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
}

impl<'a> Rows<'a> {
    /// Wraps `data` as `rows × cols`; `data` must hold at least `rows·cols` values.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        check_len(Operand::X, data.len(), rows, cols, cols)?;
        Ok(Self { data, rows, cols })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r`.
    pub fn row(&self, r: usize) -> &'a [f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// All `rows·cols` values.
    pub fn as_slice(&self) -> &'a [f32] {
        &self.data[..self.rows * self.cols]
    }

    pub(crate) fn check_finite(&self, what: Operand) -> Result<()> {
        first_non_finite(self.as_slice(), self.cols).map_or(Ok(()), |(row, col, value)| Err(RouteError::NonFinite { what, row, col, value }))
    }

    pub(crate) fn expect(&self, what: Operand, rows: usize, cols: usize) -> Result<()> {
        if self.cols != cols {
            return Err(RouteError::DimMismatch { what, expected: cols, got: self.cols });
        }
        if self.rows != rows {
            return Err(RouteError::RowsMismatch { what, expected: rows, got: self.rows });
        }
        Ok(())
    }
}

/// Element storage of a keys view.
#[derive(Debug, Clone, Copy)]
pub enum KeyElems<'a> {
    /// f32 keys.
    F32(&'a [f32]),
    /// bf16 keys (widened exactly to f32 before scoring).
    Bf16(&'a [bf16]),
}

/// A strided view of M key rows of length d: row i starts at element `i·stride`.
///
/// The host store keeps each neuron bundled as `[k_i | v_i]` (2·d values per row), so the keys are
/// the view with `stride = 2·d` over the bundled buffer: nothing is copied.
///
/// ```
/// use meft_router::KeysView;
/// // two bundled neurons [k | v] with d = 2
/// let bundled = [1.0f32, 2.0, 9.0, 9.0, 3.0, 4.0, 9.0, 9.0];
/// let keys = KeysView::f32(&bundled, 2, 2, 4)?;
/// let mut row = [0.0; 2];
/// keys.row_into(1, &mut row);
/// assert_eq!(row, [3.0, 4.0]);
/// # Ok::<(), meft_router::RouteError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct KeysView<'a> {
    elems: KeyElems<'a>,
    rows: usize,
    dim: usize,
    stride: usize,
}

impl<'a> KeysView<'a> {
    /// f32 keys: `rows` rows of `dim` values, row i at `data[i·stride..]`.
    pub fn f32(data: &'a [f32], rows: usize, dim: usize, stride: usize) -> Result<Self> {
        Self::checked(KeyElems::F32(data), data.len(), rows, dim, stride)
    }

    /// bf16 keys: `rows` rows of `dim` values, row i at `data[i·stride..]`.
    pub fn bf16(data: &'a [bf16], rows: usize, dim: usize, stride: usize) -> Result<Self> {
        Self::checked(KeyElems::Bf16(data), data.len(), rows, dim, stride)
    }

    fn checked(elems: KeyElems<'a>, len: usize, rows: usize, dim: usize, stride: usize) -> Result<Self> {
        if stride < dim {
            return Err(RouteError::StrideTooShort { what: Operand::Keys, stride, cols: dim });
        }
        check_len(Operand::Keys, len, rows, dim, stride)?;
        Ok(Self { elems, rows, dim, stride })
    }

    /// Rows (neurons) M.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row length d.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Elements between the starts of consecutive rows.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The element storage.
    pub fn elems(&self) -> KeyElems<'a> {
        self.elems
    }

    /// Copies row `i`, widened to f32, into `out` (length d).
    pub fn row_into(&self, i: usize, out: &mut [f32]) {
        let start = i * self.stride;
        match self.elems {
            KeyElems::F32(v) => out.copy_from_slice(&v[start..start + self.dim]),
            KeyElems::Bf16(v) => {
                for (o, b) in out.iter_mut().zip(&v[start..start + self.dim]) {
                    *o = b.to_f32();
                }
            }
        }
    }

    /// Key element (i, j) widened to f32.
    pub(crate) fn at(&self, i: usize, j: usize) -> f32 {
        match self.elems {
            KeyElems::F32(v) => v[i * self.stride + j],
            KeyElems::Bf16(v) => v[i * self.stride + j].to_f32(),
        }
    }

    pub(crate) fn expect_rows(&self, rows: usize) -> Result<()> {
        if self.rows != rows {
            return Err(RouteError::RowsMismatch { what: Operand::Keys, expected: rows, got: self.rows });
        }
        Ok(())
    }

    /// The first non-finite element of row `i`, if any.
    pub(crate) fn row_non_finite(&self, i: usize) -> Option<(usize, f32)> {
        (0..self.dim).map(|j| (j, self.at(i, j))).find(|(_, v)| !v.is_finite())
    }

    pub(crate) fn check_rows_finite(&self, rows: std::ops::Range<usize>) -> Result<()> {
        for i in rows {
            if let Some((col, value)) = self.row_non_finite(i) {
                return Err(RouteError::NonFinite { what: Operand::Keys, row: i, col, value });
            }
        }
        Ok(())
    }
}

/// Where the expert gate scores come from.
#[derive(Debug, Clone, Copy)]
pub enum GateSource<'a> {
    /// The gate matrix G (N×d); scores g = G·x are computed here.
    Gates(Rows<'a>),
    /// Gate scores already computed elsewhere (T×N), e.g. on the device.
    Scores(Rows<'a>),
}

/// Everything one routing call reads.
#[derive(Debug, Clone, Copy)]
pub struct RouteInputs<'a> {
    /// Token activations x (T×d): the FFN input of the adapted layer.
    pub x: Rows<'a>,
    /// Keys (M×d).
    pub keys: KeysView<'a>,
    /// Gates or gate scores.
    pub gates: GateSource<'a>,
}

fn check_len(what: Operand, got: usize, rows: usize, cols: usize, stride: usize) -> Result<()> {
    let need = if rows == 0 { 0 } else { (rows - 1) * stride + cols };
    if got < need {
        return Err(RouteError::BufferTooShort { what, rows, cols, stride, need, got });
    }
    Ok(())
}

fn first_non_finite(data: &[f32], cols: usize) -> Option<(usize, usize, f32)> {
    let pos = data.iter().position(|v| !v.is_finite())?;
    Some((pos / cols.max(1), pos % cols.max(1), data[pos]))
}
