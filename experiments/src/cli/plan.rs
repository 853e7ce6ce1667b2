//! `meft plan`: the device memory plan of a method on a model, and the largest adapter of that
//! method that fits a budget, without running anything.

use anyhow::Context;
use clap::ValueEnum;

use crate::train::build;
use crate::train::config::{MethodKind, RawConfig};
use crate::train::memory::{self, MemoryPlan, Shape, SizeKnob};
use crate::train::plan::{TrainPlan, parse_site, site_dims};

/// Methods `meft plan` sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanMethod {
    /// MEFT (sizes the working-set capacity C; the host adapter M is free on the device).
    Meft,
    /// Dense Parallel Adapter (sizes its neurons).
    Pa,
    /// LoRA (sizes its rank).
    Lora,
    /// AdapterH (sizes its bottleneck).
    AdapterH,
}

/// Arguments of `meft plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Model: `tiny-random`, `smollm2-135m-instruct`, a .gguf file or an HF directory.
    #[arg(long, short)]
    pub model: String,
    /// The method.
    #[arg(long, value_enum)]
    pub method: PlanMethod,
    /// Device budget, e.g. 2GiB.
    #[arg(long)]
    pub budget: String,
    /// Extra config overrides (`meft.neurons=65536`, `layers=last:10`, `batch.micro=2`).
    pub overrides: Vec<String>,
}

/// Runs `meft plan`; prints the plan as JSON.
pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    let method = match args.method {
        PlanMethod::Meft => "meft",
        PlanMethod::Pa => "pa",
        PlanMethod::Lora => "lora",
        PlanMethod::AdapterH => "adapter_h",
    };
    let mut overrides = vec![format!("method='{method}'"), "steps=1".to_string()];
    overrides.extend(args.overrides.iter().cloned());
    let raw = RawConfig::parse("", "meft plan", &overrides)?;
    let cfg = match args.model.as_str() {
        build::TINY_RANDOM => build::tiny_config(),
        name => meft_models::resolve::load(&meft_models::resolve::resolve(name)?, candle_core::DType::F32)?.config,
    };
    let budget = memory::parse_bytes(&args.budget).with_context(|| format!("--budget {}: not a size (write e.g. 2GiB)", args.budget))?;
    let layers = crate::train::plan::parse_layers(&raw.layers, cfg.num_hidden_layers)?;
    let shape = Shape { micro: raw.batch.micro, max_length: raw.batch.max_length, layers: layers.len(), weight_bytes: 4 };
    let fixed = MemoryPlan::new(&cfg, &shape, None, &[], 0, 0);
    let sites = raw.lora.targets.iter().map(|t| parse_site(t).map(|s| site_dims(&cfg, s))).collect::<Result<Vec<_>, _>>()?;
    let (knob, experts) = match raw.method {
        MethodKind::Meft => (SizeKnob::MeftCapacity, (raw.meft.neurons as f64).sqrt() / raw.meft.expert_factor),
        MethodKind::Pa => (SizeKnob::PaNeurons, 0.0),
        MethodKind::AdapterH => (SizeKnob::AdapterHUnits, 0.0),
        _ => (SizeKnob::LoraRank, 0.0),
    };
    let largest = memory::largest_fitting(budget, fixed.total_device, knob, &cfg, layers.len() as u64, &sites, experts.round() as u64);
    let mut with_budget = raw.clone();
    with_budget.device.budget = args.budget.clone();
    let configured = TrainPlan::new(with_budget, &cfg).map(|p| p.memory).map_err(|e| e.to_string());
    let out = serde_json::json!({
        "model": args.model,
        "method": method,
        "budget_bytes": budget,
        "adapted_layers": layers.len(),
        "without_adapter": fixed,
        "configured": match &configured { Ok(m) => serde_json::to_value(m)?, Err(e) => serde_json::json!({ "error": e }) },
        "largest_fitting": { "knob": knob, "value": largest },
        "note": "activations are an f32 estimate for one micro-batch; MEFT's host adapter (M rows) does not use device memory",
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
