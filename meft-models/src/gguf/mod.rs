//! GGUF model files: memory-mapped reading, dequantisation, configuration and tensor naming.
//!
//! [`GgufFile::open`] maps the file and parses its header ([`reader`]); [`GgufFile::config`] builds a
//! [`ModelConfig`] from the `llama.*` metadata ([`model`]); [`GgufFile::weights`] dequantises every
//! tensor ([`dequant`]) and renames it to the HF convention so that the model code reads one naming
//! scheme. GGUF stores Q/K rows permuted for adjacent-pair RoPE, so the config says
//! [`RopeLayout::Interleaved`](crate::RopeLayout::Interleaved) and the weights are used as stored.

pub mod dequant;
pub mod model;
pub mod reader;

use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;

use crate::error::ModelError;
pub use dequant::GgmlType;
pub use reader::{GgufHeader, MetaValue, TensorInfo};

/// An open, parsed GGUF file whose tensor data stays memory-mapped until dequantised.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    header: GgufHeader,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and parses `path`. Fails with a typed error on a truncated or garbled header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| ModelError::Io { file: path.clone(), source };
        let file = File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only and private to this process; meft never writes model
        // files while they are open, and a file truncated underneath us is the user's error.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let header = reader::parse_header(&map, &path)?;
        Ok(Self { path, map, header })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header (version, metadata, tensor infos).
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// Metadata value `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.header.metadata.get(key)
    }

    fn meta_err(&self, key: &str, problem: String) -> ModelError {
        ModelError::Metadata { file: self.path.clone(), key: key.to_string(), problem }
    }

    fn required(&self, key: &str) -> Result<&MetaValue, ModelError> {
        self.get(key).ok_or_else(|| self.meta_err(key, "missing".into()))
    }

    fn wrong_type(&self, key: &str, value: &MetaValue, expected: &str) -> ModelError {
        self.meta_err(key, format!("is {}, expected {expected}", value.type_name()))
    }

    /// Required non-negative integer metadata.
    pub fn get_usize(&self, key: &str) -> Result<usize, ModelError> {
        let v = self.required(key)?;
        v.as_u64().map(|x| x as usize).ok_or_else(|| self.wrong_type(key, v, "an unsigned integer"))
    }

    /// Required numeric metadata as f64.
    pub fn get_f64(&self, key: &str) -> Result<f64, ModelError> {
        let v = self.required(key)?;
        v.as_f64().ok_or_else(|| self.wrong_type(key, v, "a number"))
    }

    /// Required string metadata.
    pub fn get_str(&self, key: &str) -> Result<&str, ModelError> {
        match self.required(key)? {
            MetaValue::String(s) => Ok(s),
            v => Err(self.wrong_type(key, v, "a string")),
        }
    }

    /// Required array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, ModelError> {
        let v = self.required(key)?;
        let MetaValue::Array(items) = v else {
            return Err(self.wrong_type(key, v, "an array"));
        };
        items
            .iter()
            .map(|item| match item {
                MetaValue::String(s) => Ok(s.as_str()),
                other => Err(self.wrong_type(key, other, "an array of strings")),
            })
            .collect()
    }

    /// Required array of integers.
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>, ModelError> {
        let v = self.required(key)?;
        let MetaValue::Array(items) = v else {
            return Err(self.wrong_type(key, v, "an array"));
        };
        items
            .iter()
            .map(|item| match *item {
                MetaValue::I32(x) => Ok(x.into()),
                MetaValue::I64(x) => Ok(x),
                ref other => other.as_u64().map(|x| x as i64).ok_or_else(|| self.wrong_type(key, other, "an array of integers")),
            })
            .collect()
    }

    /// Optional boolean metadata (`None` when absent).
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, v, "a bool")),
        }
    }

    /// Tensor info by GGUF name.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.header.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor, checked against the file length and its type.
    fn tensor_bytes(&self, info: &TensorInfo) -> Result<(GgmlType, &[u8]), ModelError> {
        let ty = GgmlType::from_id(info.ggml_type).ok_or_else(|| ModelError::UnsupportedTensorType {
            file: self.path.clone(),
            tensor: info.name.clone(),
            kind: GgmlType::describe_id(info.ggml_type),
        })?;
        let n = info.n_elements() as usize;
        let len = ty.bytes_for(n).ok_or_else(|| ModelError::GgufHeader {
            file: self.path.clone(),
            reason: format!("tensor `{}` has {n} elements, not a whole number of {ty:?} blocks", info.name),
        })?;
        let start = (self.header.data_start as u64).checked_add(info.offset);
        let range = start.and_then(|s| Some(s as usize..(s as usize).checked_add(len)?));
        match range {
            Some(r) if r.end <= self.map.len() => Ok((ty, &self.map[r])),
            _ => Err(ModelError::Truncated { file: self.path.clone(), what: format!("the data of tensor `{}`", info.name) }),
        }
    }

    /// Dequantises one tensor into a row-major candle tensor of `dtype` on the CPU.
    pub fn dequantize(&self, info: &TensorInfo, dtype: DType) -> Result<Tensor, ModelError> {
        let (ty, bytes) = self.tensor_bytes(info)?;
        let values = dequant::dequantize(ty, bytes, info.n_elements() as usize);
        let tensor = Tensor::from_vec(values, info.shape(), &Device::Cpu)?;
        Ok(if dtype == DType::F32 { tensor } else { tensor.to_dtype(dtype)? })
    }

    /// Dequantises one tensor with the slow reference dequantiser (tests and checks only).
    pub fn dequantize_slow(&self, info: &TensorInfo) -> Result<Vec<f32>, ModelError> {
        let (ty, bytes) = self.tensor_bytes(info)?;
        Ok(dequant::dequantize_slow(ty, bytes, info.n_elements() as usize))
    }
}
