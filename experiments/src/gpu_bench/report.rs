//! The results of `bench-gpu`: per-step samples, one row per adapter, the comparison with the
//! paper (spec §10), written as `bench-gpu-<shape>.json` and `.md`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use meft_models::ModelConfig;
use meft_offload::{DeviceKind, DriverInfo, MeftConfig};
use serde::Serialize;

use super::BenchConfig;
use super::sizing::PaSize;
use crate::train::memory::frozen_params;

/// The paper's efficiency numbers (LLaMA-7B, batch 2 × 256).
#[derive(Debug, Clone, Serialize)]
pub struct PaperNumbers {
    /// MEFT-10 % trains in this much device memory (GB), where PA-10 % needs 48 GB.
    pub meft_device_gb: f64,
    /// MEFT's throughput is at least this share of the all-device adapter's.
    pub min_speed_of_all_device: f64,
    /// Full offload moves this many times MEFT's bytes per step.
    pub traffic_ratio_full_over_meft: f64,
}

const PAPER: PaperNumbers = PaperNumbers { meft_device_gb: 24.0, min_speed_of_all_device: 0.63, traffic_ratio_full_over_meft: 3.57 };

/// One measured training step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepSample {
    /// Wall time of forward, backward and optimizer step, device synchronised.
    pub seconds: f64,
    /// The training loss (a sanity check: finite).
    pub loss: f64,
    /// Adapter bytes host→device.
    pub h2d_bytes: u64,
    /// Adapter bytes device→host.
    pub d2h_bytes: u64,
    /// MEFT only: FFN inputs and gate scores copied to the host for routing.
    pub route_input_bytes: u64,
    /// MEFT only: the largest per-layer union |U| of the step.
    pub max_union: Option<usize>,
    /// Peak of the device accounting (frozen weights, activation estimate, adapter charges).
    pub peak_accounted_bytes: u64,
    /// CUDA only: the most device memory in use (driver) after forward or after backward.
    pub peak_sampled_bytes: Option<u64>,
}

/// One adapter's result.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigRow {
    /// `pa`, `meft` or `full_offload`.
    pub name: &'static str,
    /// Trainable scalars (MEFT: host rows + device gates).
    pub trainable_params: Option<u64>,
    /// PA: the memory model's planned device bytes.
    pub planned_device_bytes: Option<u64>,
    /// MEFT: the working-set capacity C used.
    pub capacity: Option<usize>,
    /// Peak device bytes over the measured steps (sampled on CUDA, accounted on the CPU).
    pub peak_device_bytes: Option<u64>,
    /// Whether that peak is within the budget.
    pub fits_budget: Option<bool>,
    /// Median step time in seconds.
    pub median_step_s: Option<f64>,
    /// Median adapter bytes per step, host→device plus device→host.
    pub bytes_per_step: Option<u64>,
    /// Median routing-input bytes per step (MEFT; not adapter rows, counted apart).
    pub route_input_bytes_per_step: Option<u64>,
    /// The measured steps (warm-up excluded).
    pub steps: Vec<StepSample>,
    /// Why this adapter could not be measured.
    pub error: Option<String>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

impl ConfigRow {
    /// The row of `name` from its trainable-parameter count and measured steps, or its error.
    pub fn new(name: &'static str, measured: Result<(u64, Vec<StepSample>)>, budget: u64) -> Self {
        let (params, steps, error) = match measured {
            Ok((p, s)) => (Some(p), s, None),
            Err(e) => (None, Vec::new(), Some(format!("{e:#}"))),
        };
        let med = |f: &dyn Fn(&StepSample) -> f64| median(steps.iter().map(f).collect());
        let peak = steps.iter().map(|s| s.peak_sampled_bytes.unwrap_or(s.peak_accounted_bytes)).max();
        Self {
            name,
            trainable_params: params,
            planned_device_bytes: None,
            capacity: None,
            peak_device_bytes: peak,
            fits_budget: peak.map(|p| p <= budget),
            median_step_s: med(&|s| s.seconds),
            bytes_per_step: med(&|s| (s.h2d_bytes + s.d2h_bytes) as f64).map(|b| b as u64),
            route_input_bytes_per_step: med(&|s| s.route_input_bytes as f64).map(|b| b as u64),
            steps,
            error,
        }
    }
}

/// The checkout's revision, or the one `cargo xtask gpu-bundle` built from (`MEFT_GIT_REVISION` at
/// build time) when the binary runs outside a repository, as on the GPU machine.
fn revision() -> String {
    match meft_eval::results::git_revision() {
        r if r == "unknown" => option_env!("MEFT_GIT_REVISION").unwrap_or("unknown").to_string(),
        r => r,
    }
}

/// What was run, on what.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// UTC date of the run.
    pub date: String,
    /// `git rev-parse HEAD` of the checkout, or of the bundle's build on the GPU machine.
    pub git_revision: String,
    /// Device kind.
    pub device: DeviceKind,
    /// The driver's view before the model was loaded (CUDA only).
    pub driver_before_model: Option<DriverInfo>,
    /// `shape` name.
    pub shape: String,
    /// Where the weights came from.
    pub weights: String,
    /// Hidden size, layers, FFN size, vocabulary.
    pub model_dims: [usize; 4],
    /// Frozen parameters.
    pub frozen_params: u64,
    /// Frozen weight dtype.
    pub dtype: String,
    /// Sequences per step, tokens per sequence, warm-up steps, measured steps.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Unmeasured steps per adapter.
    pub warmup: usize,
    /// Measured steps per adapter.
    pub steps: usize,
    /// The device budget the PA was sized for.
    pub budget_bytes: u64,
    /// The PA size and its memory plan.
    pub pa: PaSize,
    /// The MEFT (and full-offload) adapter.
    pub meft: MeftConfig,
    /// Host adapter parameters as a share of the frozen parameters.
    pub host_fraction: f64,
    /// MEFT pre-look distance.
    pub pre_look: usize,
    /// The largest per-layer union of the probe step at C = M.
    pub probe_max_union: Option<usize>,
}

impl Setup {
    /// Collects the facts of a run.
    pub fn new(
        cfg: &BenchConfig,
        c: &ModelConfig,
        weights: String,
        before: Option<DriverInfo>,
        pa: &PaSize,
        meft: &MeftConfig,
        probe: Option<usize>,
    ) -> Self {
        let frozen = frozen_params(c);
        let host = 2 * meft.neurons * meft.hidden * c.num_hidden_layers;
        Self {
            date: crate::repro::report::utc_date(std::time::SystemTime::now()),
            git_revision: revision(),
            device: cfg.device,
            driver_before_model: before,
            shape: match &cfg.model {
                Some(m) => m.clone(),
                None => format!("{:?}", cfg.shape).to_lowercase(),
            },
            weights,
            model_dims: [c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size],
            frozen_params: frozen,
            dtype: format!("{:?}", cfg.dtype).to_lowercase(),
            batch: cfg.batch,
            seq: cfg.seq,
            warmup: cfg.warmup,
            steps: cfg.steps,
            budget_bytes: cfg.budget_bytes,
            pa: pa.clone(),
            meft: meft.clone(),
            host_fraction: host as f64 / frozen as f64,
            pre_look: cfg.pre_look,
            probe_max_union: probe,
        }
    }
}

/// The whole result of one `bench-gpu` run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// "GPU measurement" or a plain statement that this is a CPU plumbing run.
    pub kind: String,
    /// How peak device memory was obtained.
    pub peak_memory_source: &'static str,
    /// What was run.
    pub setup: Setup,
    /// PA, MEFT, full offload.
    pub rows: Vec<ConfigRow>,
    /// The driver's view after the last adapter (CUDA only).
    pub driver_after: Option<DriverInfo>,
    /// MEFT's speed as a share of the dense PA's (median step times).
    pub meft_speed_of_pa: Option<f64>,
    /// Full offload's bytes per step over MEFT's.
    pub traffic_ratio_full_over_meft: Option<f64>,
    /// The paper's numbers beside ours.
    pub paper: PaperNumbers,
}

impl BenchReport {
    /// The report of `rows` measured under `setup`.
    pub fn new(setup: Setup, rows: Vec<ConfigRow>, driver_after: Option<DriverInfo>) -> Self {
        let on_cuda = matches!(setup.device, DeviceKind::Cuda { .. });
        let row = |n: &str| rows.iter().find(|r| r.name == n);
        let time = |n: &str| row(n).and_then(|r| r.median_step_s);
        let bytes = |n: &str| row(n).and_then(|r| r.bytes_per_step).filter(|&b| b > 0);
        Self {
            kind: match on_cuda {
                true => "GPU measurement".into(),
                false => "CPU plumbing run: the model and adapters ran on the CPU; these are not GPU measurements".into(),
            },
            peak_memory_source: if on_cuda { "sampled (driver, after forward and after backward)" } else { "accounted (CPU)" },
            meft_speed_of_pa: time("pa").zip(time("meft")).map(|(pa, meft)| pa / meft),
            traffic_ratio_full_over_meft: bytes("full_offload").zip(bytes("meft")).map(|(f, m)| f as f64 / m as f64),
            setup,
            rows,
            driver_after,
            paper: PAPER,
        }
    }

    /// Writes `bench-gpu-<shape>.json` and `.md` into `dir`; returns both paths.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = format!("bench-gpu-{}", self.setup.shape.replace(['/', '.'], "_"));
        let json = dir.join(format!("{stem}.json"));
        let md = dir.join(format!("{stem}.md"));
        std::fs::write(&json, serde_json::to_string_pretty(self)?).with_context(|| format!("writing {}", json.display()))?;
        std::fs::write(&md, super::table::markdown(self)).with_context(|| format!("writing {}", md.display()))?;
        Ok((json, md))
    }
}
