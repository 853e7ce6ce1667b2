//! Sizes of the three adapters of a benchmark: the dense PA fitted to the budget by the analytic
//! memory model, the MEFT/full-offload host adapter from a fraction of the frozen parameters, and
//! the MEFT working-set capacity from a measured union.

use meft_core::optim::AdamWConfig;
use meft_core::sparse::Evaluation;
use meft_models::ModelConfig;
use meft_offload::{HostOptimizer, MeftConfig};
use meft_router::{ExpertLayout, Scoring};
use serde::Serialize;

use super::{BenchArgError, BenchConfig, HostAdapterSize, bad};
use crate::train::memory::{self, MemoryPlan, Shape, SizeKnob};

/// Head-room over the measured union when sizing C (the union varies from batch to batch):
/// C = ⌈|U| · 11/10⌉.
pub const CAPACITY_HEADROOM: (usize, usize) = (11, 10);

/// The dense Parallel Adapter of the budget.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PaSize {
    /// Neurons per layer (the analytic fit).
    pub neurons: usize,
    /// The memory plan of that size (frozen weights, activation estimate, adapter, optimizer).
    pub plan: MemoryPlan,
    /// Always "analytic fit": the size comes from the memory model, not from probing the device.
    pub method: &'static str,
}

/// The memory model's shape of a run with every layer adapted.
pub fn shape(c: &ModelConfig, cfg: &BenchConfig) -> Shape {
    Shape { micro: cfg.batch, max_length: cfg.seq, layers: c.num_hidden_layers, weight_bytes: cfg.dtype.size_in_bytes() as u64 }
}

/// The largest dense PA on every layer whose planned device bytes fit `cfg.budget_bytes`.
pub fn pa_size(c: &ModelConfig, cfg: &BenchConfig) -> Result<PaSize, BenchArgError> {
    let s = shape(c, cfg);
    let fixed = MemoryPlan::new(c, &s, None, &[], 0, 0).total_device;
    let layers = s.layers as u64;
    let neurons = memory::largest_fitting(cfg.budget_bytes, fixed, SizeKnob::PaNeurons, c, layers, &[], 0).ok_or_else(|| {
        bad(
            "--budget-gib",
            format!("leaves no room for a one-neuron adapter: the frozen weights and activations alone plan {fixed} B"),
            "raise the budget, shorten --seq or lower --batch",
        )
    })?;
    let plan = MemoryPlan::new(c, &s, Some((SizeKnob::PaNeurons, neurons)), &[], 0, 0);
    Ok(PaSize { neurons: neurons as usize, plan, method: "analytic fit" })
}

/// Neurons M per layer for `size`: the nearest M to the request for which N = round(4·√M)
/// divides M.
pub fn host_neurons(c: &ModelConfig, frozen_params: u64, size: HostAdapterSize) -> usize {
    let wanted = match size {
        HostAdapterSize::Neurons(m) => m,
        HostAdapterSize::Fraction(f) => {
            let per_neuron = 2 * c.hidden_size * c.num_hidden_layers;
            ((f * frozen_params as f64 / per_neuron as f64).round() as usize).max(1)
        }
    };
    let valid = |m: usize| m > 0 && ExpertLayout::with_default_factor(m).is_ok();
    (0..).flat_map(|delta| [wanted.saturating_sub(delta), wanted + delta]).find(|&m| valid(m)).unwrap_or(wanted)
}

/// The MEFT adapter of the benchmark: M neurons, N = round(4·√M), K and P from `cfg` (P capped
/// at N), gated per-token evaluation, dense host AdamW (the paper's setup).
pub fn meft_config(c: &ModelConfig, neurons: usize, cfg: &BenchConfig) -> Result<MeftConfig, BenchArgError> {
    let layout = ExpertLayout::with_default_factor(neurons).map_err(|e| bad("--neurons", e.to_string(), "pick one of the listed neighbours"))?;
    if cfg.top_k > neurons {
        return Err(bad(
            "--top-k",
            format!("is {} but the host adapter has only M = {neurons} neurons", cfg.top_k),
            "lower --top-k or enlarge the host adapter",
        ));
    }
    Ok(MeftConfig {
        hidden: c.hidden_size,
        neurons,
        experts: layout.experts(),
        top_k: cfg.top_k,
        top_p: cfg.top_p.min(layout.experts()),
        scoring: Scoring::Gated,
        evaluation: Evaluation::PerToken,
        host_optimizer: HostOptimizer::Dense,
        adamw: AdamWConfig::default(),
    })
}

/// The working-set capacity C for a measured largest union: `ceil(1.1·|U|)`, at most M.
pub fn capacity_for(max_union: usize, neurons: usize) -> usize {
    let (num, den) = CAPACITY_HEADROOM;
    (max_union * num).div_ceil(den).clamp(1, neurons)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu_bench::BenchShape;
    use crate::train::memory::frozen_params;

    #[test]
    fn llama7b_host_adapter_is_ten_percent_with_a_valid_layout() {
        let c = BenchShape::Llama7b.config();
        let frozen = frozen_params(&c);
        let m = host_neurons(&c, frozen, HostAdapterSize::Fraction(0.1));
        let layout = ExpertLayout::with_default_factor(m).unwrap();
        assert_eq!(layout.experts(), (4.0 * (m as f64).sqrt()).round() as usize);
        let fraction = (2 * c.hidden_size * c.num_hidden_layers * m) as f64 / frozen as f64;
        assert!((fraction - 0.1).abs() < 0.005, "{fraction}");
        assert_eq!((m, layout.experts()), (2691, 207), "the configuration paper/gpu/README.md states");
    }

    #[test]
    fn llama7b_pa_is_the_largest_that_the_memory_model_fits_in_24_gib() {
        let c = BenchShape::Llama7b.config();
        let cfg = BenchConfig {
            device: meft_offload::DeviceKind::Cuda { ordinal: 0 },
            shape: BenchShape::Llama7b,
            model: None,
            batch: 2,
            seq: 256,
            steps: 1,
            warmup: 0,
            budget_bytes: 24 << 30,
            dtype: candle_core::DType::BF16,
            seed: 0,
            host_adapter: HostAdapterSize::Fraction(0.1),
            top_k: 64,
            top_p: 8,
            pre_look: 1,
        };
        let pa = pa_size(&c, &cfg).unwrap();
        let s = shape(&c, &cfg);
        let one_more = MemoryPlan::new(&c, &s, Some((SizeKnob::PaNeurons, pa.neurons as u64 + 1)), &[], 0, 0);
        assert!(pa.plan.total_device <= cfg.budget_bytes && one_more.total_device > cfg.budget_bytes);
        assert_eq!(pa.neurons, 1615, "the configuration paper/gpu/README.md states");
    }

    #[test]
    fn capacity_has_headroom_and_stays_within_m() {
        assert_eq!(capacity_for(100, 4096), 110);
        assert_eq!(capacity_for(4000, 4096), 4096);
        assert_eq!(capacity_for(0, 16), 1);
    }
}
