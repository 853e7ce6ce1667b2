//! `meft bench-gpu`: peak device memory, step time and adapter bytes per step of a dense PA,
//! MEFT and full offload on one device (see [`crate::gpu_bench`]).

use std::path::PathBuf;

use crate::gpu_bench::{self, BenchConfig, BenchShape, HostAdapterSize};

use super::WeightDtype;

/// Arguments of `meft bench-gpu`; left-out sizes take the shape's defaults.
#[derive(Debug, clap::Args)]
pub struct BenchGpuArgs {
    /// `cuda:N` (needs a build with the `cuda` feature) or `cpu` (a plumbing run).
    #[arg(long, default_value = "cuda:0")]
    pub device: String,
    /// Model shape, with seeded random weights.
    #[arg(long, value_enum, default_value_t = BenchShape::Llama7b)]
    pub shape: BenchShape,
    /// A real checkpoint instead of random weights (pinned name, .gguf or HF directory).
    #[arg(long)]
    pub model: Option<String>,
    /// Sequences per step.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Measured steps per adapter.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Unmeasured warm-up steps per adapter.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Device budget the dense PA is sized for, in GiB (llama7b/smollm2: 24, tiny: 0.05).
    #[arg(long)]
    pub budget_gib: Option<f64>,
    /// Frozen weight dtype (adapters are f32).
    #[arg(long, value_enum, default_value_t = WeightDtype::Bf16)]
    pub dtype: WeightDtype,
    /// Host adapter (MEFT, full offload) as a fraction of the frozen parameters (default 0.1).
    #[arg(long, conflicts_with = "neurons")]
    pub host_fraction: Option<f64>,
    /// Host adapter neurons per layer M, instead of --host-fraction (tiny: 4096).
    #[arg(long)]
    pub neurons: Option<usize>,
    /// Neurons kept per token K (tiny: 4, otherwise 64).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Experts probed per token P (tiny: 2, otherwise 8).
    #[arg(long)]
    pub top_p: Option<usize>,
    /// MEFT pre-look distance (0: route each layer from its own input).
    #[arg(long, default_value_t = 1)]
    pub pre_look: usize,
    /// Seed of weights, adapters and tokens.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory for bench-gpu-<shape>.json and .md.
    #[arg(long, default_value = "paper/gpu")]
    pub out: PathBuf,
}

impl BenchGpuArgs {
    /// The validated configuration.
    pub fn config(&self) -> anyhow::Result<BenchConfig> {
        let d = self.shape.defaults();
        let host_adapter = match (self.neurons, self.host_fraction) {
            (Some(m), _) => HostAdapterSize::Neurons(m),
            (None, Some(f)) => HostAdapterSize::Fraction(f),
            (None, None) => d.host_adapter,
        };
        let budget_gib = self.budget_gib.unwrap_or(d.budget_gib);
        if !(budget_gib.is_finite() && budget_gib > 0.0) {
            anyhow::bail!("bench-gpu: `--budget-gib` is {budget_gib}; give the device memory in GiB, e.g. 24");
        }
        let cfg = BenchConfig {
            device: gpu_bench::parse_device(&self.device)?,
            shape: self.shape,
            model: self.model.clone(),
            batch: self.batch,
            seq: self.seq,
            steps: self.steps,
            warmup: self.warmup,
            budget_bytes: (budget_gib * (1u64 << 30) as f64) as u64,
            dtype: self.dtype.dtype(),
            seed: self.seed,
            host_adapter,
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            pre_look: self.pre_look,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Runs `meft bench-gpu`; prints the Markdown table and where the files went.
pub fn run(args: &BenchGpuArgs) -> anyhow::Result<()> {
    let report = gpu_bench::run(&args.config()?)?;
    let (json, md) = report.write(&args.out)?;
    print!("{}", std::fs::read_to_string(&md)?);
    eprintln!("wrote {} and {}", json.display(), md.display());
    let failed: Vec<&str> = report.rows.iter().filter(|r| r.error.is_some()).map(|r| r.name).collect();
    if !failed.is_empty() {
        anyhow::bail!("bench-gpu: {} could not be measured (errors in {})", failed.join(", "), json.display());
    }
    Ok(())
}
