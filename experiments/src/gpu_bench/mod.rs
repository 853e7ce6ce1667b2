//! `meft bench-gpu`: the paper's efficiency claims measured on one device (spec §5, §10).
//!
//! On one frozen model (a LLaMA-7B- or SmolLM2-shaped network with seeded random weights — device
//! memory and traffic do not depend on weight values — or a real checkpoint) three adapters train
//! for `warmup + steps` steps on random tokens, one after another:
//!
//! - **pa**: the largest dense Parallel Adapter that fits the device budget by the analytic memory
//!   model of `meft plan` ([`crate::train::memory::largest_fitting`]), all on the device;
//! - **meft**: the offloaded MEFT adapter with a host adapter of a fraction (default 10 %) of the
//!   frozen parameters, K = 64, N = round(4·√M), P = 8, and a working-set capacity C sized from
//!   the union measured in a probe step with C = M ([`sizing`]);
//! - **full_offload**: the same M-neuron adapter moved whole to the device and back every step
//!   (ZeRO-Offload style, [`meft_offload::FullOffloadAdapter`]).
//!
//! A step is forward (adapter as hook) → next-token loss → backward → the adapter's optimizer step,
//! timed with the device synchronised. Per step it records the adapter bytes copied host→device and
//! device→host (MEFT: its ledger; full offload: the copies it makes) and the peak device memory:
//! on CUDA *sampled* from the driver after forward and after backward, on the CPU the simulated
//! device's *accounted* bytes (frozen weights, the activation estimate, what each adapter charges).
//! [`report`] writes JSON and a Markdown table beside the paper's numbers; a CPU run says plainly
//! that it is a plumbing run, not a GPU measurement.

mod model;
pub mod report;
mod run;
pub mod sizing;
mod table;

use candle_core::DType;
use meft_offload::DeviceKind;

pub use model::BenchShape;
pub use report::BenchReport;
pub use run::run;

/// A bad `bench-gpu` argument: the field, what is wrong, and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("bench-gpu: `{field}` {problem}; {fix}")]
pub struct BenchArgError {
    /// The argument as written on the command line.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

fn bad(field: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> BenchArgError {
    BenchArgError { field, problem: problem.into(), fix: fix.into() }
}

/// How many neurons M the host adapter (MEFT and full offload) has per layer.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostAdapterSize {
    /// A fraction of the frozen parameters: M·2d·layers ≈ fraction × frozen params.
    Fraction(f64),
    /// M given directly.
    Neurons(usize),
}

/// A validated benchmark run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Where to run.
    pub device: DeviceKind,
    /// The model shape (ignored when `model` names a checkpoint).
    pub shape: BenchShape,
    /// A real checkpoint (pinned name, .gguf or HF directory) instead of random weights.
    pub model: Option<String>,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Measured steps per adapter.
    pub steps: usize,
    /// Unmeasured steps before them.
    pub warmup: usize,
    /// Device budget the dense adapter is sized for.
    pub budget_bytes: u64,
    /// Frozen weight dtype (adapters are f32).
    pub dtype: DType,
    /// Seed of weights, adapters and tokens.
    pub seed: u64,
    /// Host adapter size.
    pub host_adapter: HostAdapterSize,
    /// Neurons kept per token K.
    pub top_k: usize,
    /// Experts probed per token P (capped at N).
    pub top_p: usize,
    /// MEFT pre-look distance p (0: route each layer from its own input).
    pub pre_look: usize,
}

impl BenchConfig {
    /// Checks every field that could make the run meaningless or fail late.
    pub fn validate(&self) -> Result<(), BenchArgError> {
        let positive = [("--batch", self.batch), ("--steps", self.steps), ("--top-k", self.top_k), ("--top-p", self.top_p)];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(bad(field, "is 0", "give a value of at least 1"));
        }
        if self.seq < 2 {
            return Err(bad("--seq", format!("is {}", self.seq), "give at least 2 tokens (the loss predicts token t+1 from t)"));
        }
        if self.budget_bytes == 0 {
            return Err(bad("--budget-gib", "is 0", "give the device memory to size the dense adapter for, e.g. 24"));
        }
        match self.host_adapter {
            HostAdapterSize::Fraction(f) if !(f.is_finite() && f > 0.0) => {
                Err(bad("--host-fraction", format!("is {f}"), "give a positive fraction of the frozen parameters, e.g. 0.1"))
            }
            HostAdapterSize::Neurons(0) => Err(bad("--neurons", "is 0", "give at least one neuron per layer")),
            _ => Ok(()),
        }
    }
}

/// Parses `cpu` or `cuda:N` (`cuda` alone is ordinal 0).
pub fn parse_device(text: &str) -> Result<DeviceKind, BenchArgError> {
    let fix = "write `cpu` or `cuda:0`";
    match text.trim() {
        "cpu" => Ok(DeviceKind::Simulated { budget_bytes: u64::MAX }),
        "cuda" => Ok(DeviceKind::Cuda { ordinal: 0 }),
        t => match t.strip_prefix("cuda:").map(str::parse) {
            Some(Ok(ordinal)) => Ok(DeviceKind::Cuda { ordinal }),
            _ => Err(bad("--device", format!("`{t}` is not a device"), fix)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BenchConfig {
        BenchConfig {
            device: DeviceKind::Cpu,
            shape: BenchShape::Tiny,
            model: None,
            batch: 2,
            seq: 256,
            steps: 2,
            warmup: 1,
            budget_bytes: 1 << 30,
            dtype: DType::F32,
            seed: 0,
            host_adapter: HostAdapterSize::Fraction(0.1),
            top_k: 64,
            top_p: 8,
            pre_look: 1,
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let cases: [(&str, BenchConfig); 4] = [
            ("--seq", BenchConfig { seq: 0, ..config() }),
            ("--batch", BenchConfig { batch: 0, ..config() }),
            ("--host-fraction", BenchConfig { host_adapter: HostAdapterSize::Fraction(-1.0), ..config() }),
            ("--budget-gib", BenchConfig { budget_bytes: 0, ..config() }),
        ];
        for (field, cfg) in cases {
            let msg = cfg.validate().unwrap_err().to_string();
            assert!(msg.contains(field), "{msg}");
        }
        assert!(config().validate().is_ok());
    }

    #[test]
    fn devices_parse() {
        assert_eq!(parse_device("cuda:1").unwrap(), DeviceKind::Cuda { ordinal: 1 });
        assert!(matches!(parse_device("cpu").unwrap(), DeviceKind::Simulated { .. }));
        assert!(parse_device("tpu:0").unwrap_err().to_string().contains("--device"));
    }
}
