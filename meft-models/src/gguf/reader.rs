//! Parser for the GGUF container (versions 2 and 3, little-endian): header, metadata key/values,
//! tensor infos and the aligned data section.
//!
//! Layout (all integers little-endian):
//! `magic "GGUF" | version u32 | n_tensors u64 | n_kv u64 | kv* | tensor_info* | pad | data`.
//! A key/value is `string key | u32 type | value`; a tensor info is
//! `string name | u32 n_dims | u64 dims[n_dims] | u32 ggml_type | u64 offset` where `dims[0]` is the
//! fastest-varying axis and `offset` is relative to the data section, which starts at the next
//! multiple of `general.alignment` (default 32) after the last tensor info.
//!
//! The parser works on a byte slice (the mmap of the file, or a test buffer) and never panics on
//! bad input: every read is bounds-checked and reports what it was reading.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::ModelError;

/// Default alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Guard against absurd counts in a garbled header (more would not fit any real file).
const MAX_COUNT: u64 = 1 << 24;

/// One metadata value. Arrays hold values of a single element type.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `uint8`
    U8(u8),
    /// `int8`
    I8(i8),
    /// `uint16`
    U16(u16),
    /// `int16`
    I16(i16),
    /// `uint32`
    U32(u32),
    /// `int32`
    I32(i32),
    /// `float32`
    F32(f32),
    /// `bool`
    Bool(bool),
    /// UTF-8 `string`
    String(String),
    /// `array` of one element type
    Array(Vec<MetaValue>),
    /// `uint64`
    U64(u64),
    /// `int64`
    I64(i64),
    /// `float64`
    F64(f64),
}

impl MetaValue {
    /// The GGUF type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::F32(_) => "f32",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F64(_) => "f64",
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// GGUF tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in GGUF order (`dims[0]` fastest); reverse for the row-major shape.
    pub dims: Vec<u64>,
    /// Raw GGML type id.
    pub ggml_type: u32,
    /// Byte offset relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Row-major shape (slowest axis first), as candle and HF use it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// Everything before the data section.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata, sorted by key.
    pub metadata: BTreeMap<String, MetaValue>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute byte offset of the data section.
    pub data_start: usize,
}

/// Bounds-checked little-endian reader over a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    file: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], ModelError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| ModelError::Truncated { file: self.file.into(), what: what() })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], ModelError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must be plausible (guards allocations against garbled input).
    fn count(&mut self, what: &dyn Fn() -> String) -> Result<usize, ModelError> {
        let n = self.u64(what)?;
        if n > MAX_COUNT || n > self.bytes.len() as u64 {
            return Err(header_err(self.file, format!("{} claims {n} entries", what())));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, ModelError> {
        let len = self.count(what)?;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| header_err(self.file, format!("{} is not valid UTF-8", what())))
    }

    fn value(&mut self, ty: u32, what: &dyn Fn() -> String) -> Result<MetaValue, ModelError> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(what)?[0]),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => MetaValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => MetaValue::String(self.string(what)?),
            9 => {
                let elem = self.u32(what)?;
                if elem == 9 {
                    return Err(header_err(self.file, format!("{}: nested arrays", what())));
                }
                let n = self.count(what)?;
                let items = (0..n).map(|_| self.value(elem, what)).collect::<Result<_, _>>()?;
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(header_err(self.file, format!("{}: unknown value type {other}", what())));
            }
        })
    }
}

fn header_err(file: &Path, reason: String) -> ModelError {
    ModelError::GgufHeader { file: PathBuf::from(file), reason }
}

/// Parses the header, metadata and tensor infos of a GGUF file held in `bytes`.
///
/// `file` is only used in error messages.
pub fn parse_header(bytes: &[u8], file: &Path) -> Result<GgufHeader, ModelError> {
    let mut cur = Cursor { bytes, pos: 0, file };
    let magic = cur.array::<4>(&|| "the magic number".into())?;
    if &magic != b"GGUF" {
        return Err(header_err(file, format!("magic is {magic:?}, expected \"GGUF\"")));
    }
    let version = cur.u32(&|| "the version".into())?;
    if !(2..=3).contains(&version) {
        let hint = if version.swap_bytes() <= 3 { " (big-endian files are not supported)" } else { "" };
        return Err(header_err(file, format!("version {version} is not 2 or 3{hint}")));
    }
    let n_tensors = cur.count(&|| "the tensor count".into())?;
    let n_kv = cur.count(&|| "the metadata count".into())?;
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = cur.string(&|| format!("metadata key #{i}"))?;
        let what = || format!("metadata `{key}`");
        let ty = cur.u32(&what)?;
        let value = cur.value(ty, &what)?;
        metadata.insert(key, value);
    }
    let tensors = (0..n_tensors).map(|i| read_tensor_info(&mut cur, i)).collect::<Result<Vec<_>, _>>()?;
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => v
            .as_u64()
            .filter(|a| *a > 0 && a.is_power_of_two())
            .ok_or_else(|| header_err(file, format!("general.alignment {v:?} is not a power of two")))?,
    };
    let data_start = (cur.pos as u64).div_ceil(alignment) * alignment;
    Ok(GgufHeader { version, metadata, tensors, data_start: data_start as usize })
}

fn read_tensor_info(cur: &mut Cursor<'_>, index: usize) -> Result<TensorInfo, ModelError> {
    let name = cur.string(&|| format!("the name of tensor #{index}"))?;
    let what = || format!("tensor info `{name}`");
    let n_dims = cur.u32(&what)?;
    if n_dims == 0 || n_dims > 4 {
        return Err(header_err(cur.file, format!("tensor `{name}` has {n_dims} dimensions (1..=4 allowed)")));
    }
    let dims = (0..n_dims).map(|_| cur.u64(&what)).collect::<Result<Vec<_>, _>>()?;
    if dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).is_none() {
        return Err(header_err(cur.file, format!("tensor `{name}` dims {dims:?} overflow")));
    }
    let ggml_type = cur.u32(&what)?;
    let offset = cur.u64(&what)?;
    Ok(TensorInfo { name, dims, ggml_type, offset })
}
