//! A named set of frozen tensors, produced by every loader (safetensors, GGUF) with HF tensor names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::ModelError;

/// Tensors keyed by their HF name (`model.layers.0.self_attn.q_proj.weight`, ...).
///
/// Loaders translate their own naming (GGUF `blk.0.attn_q.weight`) into HF names so that the model
/// code reads one convention. `source` names the file(s) for error messages.
#[derive(Debug)]
pub struct WeightMap {
    tensors: HashMap<String, Tensor>,
    source: PathBuf,
}

impl WeightMap {
    /// Wraps already-loaded tensors coming from `source`.
    pub fn new(tensors: HashMap<String, Tensor>, source: impl Into<PathBuf>) -> Self {
        Self { tensors, source: source.into() }
    }

    /// The file or directory the tensors came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Whether a tensor of that name is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Removes and returns tensor `name`, checking its shape and converting it to `dtype` on `device`.
    pub fn take(&mut self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor, ModelError> {
        let tensor = self.tensors.remove(name).ok_or_else(|| ModelError::MissingTensor { file: self.source.clone(), tensor: name.to_string() })?;
        if tensor.dims() != shape {
            return Err(ModelError::ShapeMismatch {
                file: self.source.clone(),
                tensor: name.to_string(),
                expected: shape.to_vec(),
                found: tensor.dims().to_vec(),
            });
        }
        Ok(tensor.to_dtype(dtype)?.to_device(device)?)
    }
}
