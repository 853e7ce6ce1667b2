//! The dense Parallel Adapter: `y = act(x·Kᵀ)·V` beside the FFN (spec §2), all on the device.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Result, Tensor, Var};

use super::Trainable;
use crate::{AdapterHook, LinearSite};

/// Activation of the Parallel Adapter's hidden layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// ReLU (the paper's choice, default).
    #[default]
    Relu,
    /// SiLU (the authors' released code).
    Silu,
}

impl Activation {
    /// Applies the activation element-wise.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Relu => x.relu(),
            Self::Silu => x.silu(),
        }
    }
}

/// One adapted layer: keys `K` and values `V`, both `M×d`.
#[derive(Debug, Clone)]
pub struct ParallelAdapterLayer {
    /// Keys, `M×d` (row i = k_i).
    pub keys: Var,
    /// Values, `M×d` (row i = v_i).
    pub values: Var,
}

impl ParallelAdapterLayer {
    /// Spec §4 initialisation: keys ~ N(0, 0.02), values = 0.
    pub fn init(m: usize, d: usize, dtype: DType, device: &Device) -> Result<Self> {
        let keys = Var::from_tensor(&Tensor::randn(0f32, 0.02, (m, d), device)?.to_dtype(dtype)?)?;
        let values = Var::zeros((m, d), dtype, device)?;
        Ok(Self { keys, values })
    }

    /// `act(x·Kᵀ)·V` for `x` of shape `(.., d)`; see [`parallel_forward`].
    pub fn forward(&self, act: Activation, x: &Tensor) -> Result<Tensor> {
        parallel_forward(act, x, self.keys.as_tensor(), self.values.as_tensor())
    }
}

/// The dense adapter `act(x·Kᵀ)·V` for `x` of shape `(.., d)` and keys/values `M×d`.
///
/// The adapter computes in the dtype of its keys: a `bf16` model's `x` is widened to the
/// adapter's `f32` at the hook boundary and the result narrowed back to `x`'s dtype (both casts
/// are differentiable, and no-ops when the dtypes agree).
pub fn parallel_forward(act: Activation, x: &Tensor, keys: &Tensor, values: &Tensor) -> Result<Tensor> {
    let d = x.dim(candle_core::D::Minus1)?;
    let flat = x.reshape(((), d))?.to_dtype(keys.dtype())?;
    let h = act.apply(&flat.matmul(&keys.t()?)?)?;
    h.matmul(values)?.to_dtype(x.dtype())?.reshape(x.shape())
}

/// Dense Parallel Adapters on a set of layers.
#[derive(Debug, Clone)]
pub struct ParallelAdapter {
    act: Activation,
    layers: BTreeMap<usize, ParallelAdapterLayer>,
}

impl ParallelAdapter {
    /// Freshly initialised adapters with `m` neurons on each layer in `layers`.
    pub fn new(layers: &[usize], m: usize, d: usize, act: Activation, dtype: DType, device: &Device) -> Result<Self> {
        let layers = layers.iter().map(|&l| Ok((l, ParallelAdapterLayer::init(m, d, dtype, device)?))).collect::<Result<_>>()?;
        Ok(Self { act, layers })
    }

    /// Adapters from given parameters (e.g. copied from another run).
    pub fn from_layers(act: Activation, layers: BTreeMap<usize, ParallelAdapterLayer>) -> Self {
        Self { act, layers }
    }

    /// The adapter of `layer`, if adapted.
    pub fn layer(&self, layer: usize) -> Option<&ParallelAdapterLayer> {
        self.layers.get(&layer)
    }

    /// The activation in use.
    pub fn activation(&self) -> Activation {
        self.act
    }
}

impl AdapterHook for ParallelAdapter {
    fn ffn(&self, layer: usize, x: &Tensor) -> Result<Option<Tensor>> {
        self.layers.get(&layer).map(|l| l.forward(self.act, x)).transpose()
    }

    fn linear(&self, _layer: usize, _site: LinearSite, _x: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    fn adapts_projections(&self, _layer: usize) -> bool {
        false
    }
}

impl Trainable for ParallelAdapter {
    fn vars(&self) -> Vec<(String, Var)> {
        self.layers
            .iter()
            .flat_map(|(l, p)| {
                [(format!("layers.{l}.ffn_adapter.keys"), p.keys.clone()), (format!("layers.{l}.ffn_adapter.values"), p.values.clone())]
            })
            .collect()
    }
}
