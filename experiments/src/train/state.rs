//! Named tensors of adapter and optimizer state, stored as safetensors, and atomic file writes.
//!
//! Values are kept as raw little-endian `f32`/`u64`, so a save/load round trip is bit-exact.
//! [`write_atomic`] writes a temporary file in the target directory, fsyncs it, renames it over
//! the target and fsyncs the directory: a reader (or a resumed run after SIGKILL) sees either the
//! old file or the new one, never a torn one.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// One tensor's values and shape.
#[derive(Debug, Clone, PartialEq)]
pub enum StateTensor {
    /// `f32` values.
    F32(Vec<f32>, Vec<usize>),
    /// `u64` values (step counters).
    U64(Vec<u64>, Vec<usize>),
}

impl StateTensor {
    /// Copies a candle tensor (converted to `f32`).
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let v = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self::F32(v, t.dims().to_vec()))
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Self::F32(v, _) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::U64(v, _) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// Tensors by name (sorted, so files are deterministic).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateMap(pub BTreeMap<String, StateTensor>);

impl StateMap {
    /// Adds or replaces `name`.
    pub fn insert(&mut self, name: String, t: StateTensor) {
        self.0.insert(name, t);
    }

    /// Whether there is no tensor.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn get(&self, name: &str) -> Result<&StateTensor> {
        self.0.get(name).with_context(|| format!("state has no tensor `{name}` (checkpoint from another config?)"))
    }

    /// `f32` values of `name`, checking the shape.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match self.get(name)? {
            StateTensor::F32(v, s) if s == shape => Ok(v.clone()),
            other => bail!("state tensor `{name}` is {other:?}-shaped, expected f32 {shape:?}", other = shape_of(other)),
        }
    }

    /// `u64` values of `name`, checking the shape.
    pub fn u64(&self, name: &str, shape: &[usize]) -> Result<Vec<u64>> {
        match self.get(name)? {
            StateTensor::U64(v, s) if s == shape => Ok(v.clone()),
            other => bail!("state tensor `{name}` is {other:?}-shaped, expected u64 {shape:?}", other = shape_of(other)),
        }
    }

    /// A single `u64`.
    pub fn scalar_u64(&self, name: &str) -> Result<u64> {
        Ok(self.u64(name, &[1])?[0])
    }

    /// `name` as a CPU candle tensor of `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.f32(name, shape)?, shape, &Device::Cpu)?)
    }

    /// Serialises to safetensors bytes with `metadata`.
    pub fn to_safetensors(&self, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
        let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = self
            .0
            .iter()
            .map(|(n, t)| {
                let (dtype, shape) = match t {
                    StateTensor::F32(_, s) => (Dtype::F32, s.clone()),
                    StateTensor::U64(_, s) => (Dtype::U64, s.clone()),
                };
                (n.clone(), dtype, shape, t.bytes())
            })
            .collect();
        let views = bytes.iter().map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?))).collect::<Result<Vec<_>>>()?;
        Ok(safetensors::serialize(views, Some(metadata))?)
    }

    /// Parses safetensors bytes (F32 and U64 tensors only).
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)?;
        let mut map = Self::default();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let t = match view.dtype() {
                Dtype::F32 => StateTensor::F32(view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(), shape),
                Dtype::U64 => {
                    StateTensor::U64(view.data().chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(), shape)
                }
                d => bail!("tensor `{name}` has dtype {d:?}; only F32 and U64 are written by meft"),
            };
            map.insert(name, t);
        }
        Ok(map)
    }
}

fn shape_of(t: &StateTensor) -> String {
    match t {
        StateTensor::F32(_, s) => format!("f32 {s:?}"),
        StateTensor::U64(_, s) => format!("u64 {s:?}"),
    }
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("fsync {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("fsync directory {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_round_trip_is_bit_exact() {
        let mut m = StateMap::default();
        m.insert("a".into(), StateTensor::F32(vec![1.5, -0.0, f32::MIN_POSITIVE, 3e-39], vec![2, 2]));
        m.insert("b".into(), StateTensor::U64(vec![u64::MAX, 7], vec![2]));
        let bytes = m.to_safetensors(HashMap::new()).expect("serialise");
        let back = StateMap::from_safetensors(&bytes).expect("parse");
        assert_eq!(format!("{m:?}"), format!("{back:?}"));
        assert!(back.f32("a", &[4]).is_err(), "shape is checked");
    }
}
