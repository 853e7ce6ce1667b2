//! Experiment 1: knowledge capacity under one device budget (the paper's Table 1 claim, scaled).
//!
//! One simulated device budget is set to what the largest dense Parallel Adapter of the scale
//! needs (frozen weights + activation estimate + the adapter's parameters, gradients and AdamW
//! moments). In that budget we train: LoRA (q, v) at the largest rank that fits, that dense PA,
//! and MEFT with a host adapter `meft_factor`× larger whose device working set is fitted to the
//! same budget. Each method gets a learning-rate sweep and the best rate is reported. We score
//! greedy exact match of the answer on the trained questions (knowledge absorbed) and on
//! held-out questions, beside the base model (the zero-initialised adapter before training).
//! The layers below the adapted ones are frozen and cached once ([`crate::train::forward`]).

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::output::{f64_column, md_table, scale_line, u64_column, write_h5};
use super::{Context, DataSource, ExperimentId, Profile, Section, plot};
use crate::train::config::MethodKind;
use crate::train::memory::{self, SizeKnob};
use crate::train::plan::site_dims;
use crate::train::trainer::Inputs;
use crate::train::{RawConfig, TrainPlan, Trainer};

/// The size of the experiment for a profile.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Scale {
    pub(super) datasets: Vec<&'static str>,
    pub(super) facts: usize,
    adapted_layers: usize,
    epochs: u64,
    micro: usize,
    max_length: usize,
    pa_neurons: usize,
    meft_factor: usize,
    top_k: usize,
    experts: usize,
    top_p: usize,
    lrs: Vec<f64>,
}

pub(super) fn scale(profile: Profile, source: &DataSource) -> Scale {
    let real = *source == DataSource::Real;
    let datasets = match (real, profile) {
        (false, _) => vec!["synthetic"],
        (true, Profile::Smoke) => vec!["nq_open"],
        (true, _) => vec!["nq_open", "trivia_qa"],
    };
    // (facts, epochs, adapted layers, PA neurons per layer, learning rates)
    let (facts, epochs, layers, pa_neurons, lrs) = match profile {
        Profile::Smoke => (if real { 40 } else { 64 }, 2, 1, 16, vec![1e-2]),
        Profile::Default => (400, 10, 2, 32, vec![1e-2, 3e-2]),
        Profile::Full => (1500, 10, 4, 32, vec![3e-3, 1e-2, 3e-2]),
    };
    Scale {
        datasets,
        facts,
        adapted_layers: if real { layers } else { 2 },
        epochs,
        micro: 8,
        max_length: 64,
        pa_neurons,
        meft_factor: 16,
        top_k: 4,
        experts: 16,
        top_p: 4,
        lrs,
    }
}

/// One trained (or base) configuration.
#[derive(Debug, Clone, Serialize)]
pub(super) struct RunResult {
    pub(super) dataset: String,
    pub(super) method: String,
    pub(super) size: String,
    pub(super) lr: Option<f64>,
    pub(super) trainable_params: u64,
    pub(super) device_adapter_bytes: u64,
    pub(super) train_em: f64,
    pub(super) held_out_em: f64,
    pub(super) held_out_loss: f64,
    pub(super) steps: u64,
    pub(super) wall_seconds: f64,
    /// MEFT: fraction of per-token top-K selections dropped because the union exceeded the
    /// device working set (0 for other methods).
    pub(super) dropped_fraction: f64,
}

/// Runs experiment 1.
pub fn run(ctx: &Context) -> Result<Section> {
    let s = scale(ctx.profile, &ctx.source);
    let mut runs = Vec::new();
    for dataset in &s.datasets {
        runs.extend(run_dataset(ctx, &s, dataset).with_context(|| format!("experiment 1 on {dataset}"))?);
    }
    let best = best_per_method(&runs);
    let mut figures = Vec::new();
    figures.extend(absorbed_figure(ctx, &s, &best)?);
    if s.lrs.len() > 1 {
        figures.extend(lr_figure(ctx, &runs)?);
    }
    let config = serde_json::to_value(&s)?;
    let h5 = write_h5(ctx, "capacity", "Experiment 1: knowledge capacity under one device budget", &config, &[h5_table(&runs)])?;
    let markdown = markdown(ctx, &s, &runs, &best, &h5);
    let results = serde_json::json!({ "scale": s, "runs": runs, "best": best });
    Ok(Section { id: ExperimentId::Capacity, title: "1. Knowledge capacity under one device budget".into(), markdown, figures, results, wall_seconds: 0.0 })
}

/// The config shared by every method on `dataset`.
pub(super) fn base_config(ctx: &Context, s: &Scale, dataset: &str) -> RawConfig {
    let mut raw = RawConfig { seed: ctx.seed, epochs: s.epochs, eval_examples: 64, layers: format!("last:{}", s.adapted_layers), ..RawConfig::default() };
    raw.model.name = ctx.model_name().into();
    raw.dataset.name = dataset.into();
    raw.dataset.held_out = 0.2;
    raw.dataset.loss_mask = "response".into();
    if dataset == "synthetic" {
        raw.dataset.facts = s.facts;
    } else {
        raw.dataset.limit = s.facts;
    }
    raw.batch.micro = s.micro;
    raw.batch.max_length = s.max_length;
    raw.optim.warmup = 0.05;
    raw.checkpoint.keep_last = 1;
    raw.pa.size = s.pa_neurons;
    raw.meft.neurons = s.pa_neurons * s.meft_factor;
    (raw.meft.top_k, raw.meft.experts, raw.meft.top_p) = (s.top_k, s.experts, s.top_p);
    raw
}

/// The budgeted config of `dataset` (device budget = the dense PA's need, LoRA rank fitted to
/// it), the model's config, and the shared trainer inputs.
pub(super) fn budgeted(ctx: &Context, s: &Scale, dataset: &str) -> Result<(RawConfig, meft_models::ModelConfig, Inputs)> {
    let mut raw = base_config(ctx, s, dataset);
    raw.method = MethodKind::Pa;
    let cfg = crate::train::build::model(&raw.model.name, raw.seed)?.model.config;
    let budget = TrainPlan::new(raw.clone(), &cfg)?.memory.total_device;
    raw.device.budget = format!("{budget}B");
    raw.lora.rank = largest_lora_rank(&raw, &cfg, budget)?;
    eprintln!("[capacity] {dataset}: device budget {budget} B (PA {} neurons); LoRA rank {}", s.pa_neurons, raw.lora.rank);
    let inputs = Inputs::load(&TrainPlan::new(raw.clone(), &cfg)?)?;
    Ok((raw, cfg, inputs))
}

fn run_dataset(ctx: &Context, s: &Scale, dataset: &str) -> Result<Vec<RunResult>> {
    let (raw, cfg, inputs) = budgeted(ctx, s, dataset)?;
    let mut out = vec![base_model(ctx, &raw, &cfg, &inputs, dataset)?];
    for method in [MethodKind::Lora, MethodKind::Pa, MethodKind::Meft] {
        for &lr in &s.lrs {
            let mut r = raw.clone();
            (r.method, r.optim.lr) = (method, lr);
            r.output_dir = ctx.runs_dir.join(format!("capacity/{dataset}/{}-lr{lr:e}", method_name(method)));
            out.push(train_one(r, &cfg, &inputs, dataset)?);
        }
    }
    Ok(out)
}

fn largest_lora_rank(raw: &RawConfig, cfg: &meft_models::ModelConfig, budget: u64) -> Result<usize> {
    let mut lora = raw.clone();
    lora.method = MethodKind::Lora;
    let plan = TrainPlan::new(lora, cfg)?;
    let fixed = plan.memory.total_device - plan.memory.adapter_working_set - plan.memory.device_optimizer;
    let sites: Vec<_> = raw.lora.targets.iter().map(|t| crate::train::plan::parse_site(t).map(|x| site_dims(cfg, x))).collect::<Result<_, _>>()?;
    let rank = memory::largest_fitting(budget, fixed, SizeKnob::LoraRank, cfg, raw_layers(raw, cfg)?, &sites, 0).context("no LoRA rank fits the budget")?;
    Ok(rank as usize)
}

fn raw_layers(raw: &RawConfig, cfg: &meft_models::ModelConfig) -> Result<u64> {
    Ok(crate::train::plan::parse_layers(&raw.layers, cfg.num_hidden_layers)?.len() as u64)
}

/// The base model: the PA run's zero-initialised adapter (its output is exactly zero) before training.
fn base_model(ctx: &Context, raw: &RawConfig, cfg: &meft_models::ModelConfig, inputs: &Inputs, dataset: &str) -> Result<RunResult> {
    let mut r = raw.clone();
    r.output_dir = ctx.runs_dir.join(format!("capacity/{dataset}/base"));
    let start = std::time::Instant::now();
    let t = Trainer::from_inputs(TrainPlan::new(r, cfg)?, inputs.clone())?;
    let e = t.evaluate_now(0)?;
    Ok(RunResult {
        dataset: dataset.into(),
        method: "base".into(),
        size: "-".into(),
        lr: None,
        trainable_params: 0,
        device_adapter_bytes: 0,
        train_em: e.train_em.unwrap_or(0.0),
        held_out_em: e.held_out_em.unwrap_or(0.0),
        held_out_loss: e.held_out_loss.unwrap_or(f64::NAN),
        steps: 0,
        wall_seconds: start.elapsed().as_secs_f64(),
        dropped_fraction: 0.0,
    })
}

pub(super) fn train_one(raw: RawConfig, cfg: &meft_models::ModelConfig, inputs: &Inputs, dataset: &str) -> Result<RunResult> {
    let (method, lr) = (raw.method, raw.optim.lr);
    let plan = TrainPlan::new(raw, cfg)?;
    let size = plan.method.size_label();
    let device_adapter_bytes = plan.memory.adapter_working_set + plan.memory.device_optimizer;
    let top_k = plan.raw.meft.top_k;
    eprintln!("[capacity] {dataset}: {} {size} lr {lr:e}", method_name(method));
    let start = std::time::Instant::now();
    let mut t = Trainer::from_inputs(plan, inputs.clone())?;
    let summary = t.run()?;
    let e = t.evaluate_now(0)?;
    Ok(RunResult {
        dataset: dataset.into(),
        method: method_name(method).into(),
        size,
        lr: Some(lr),
        trainable_params: t.adapter().param_count(),
        device_adapter_bytes,
        train_em: e.train_em.unwrap_or(0.0),
        held_out_em: e.held_out_em.unwrap_or(0.0),
        held_out_loss: e.held_out_loss.unwrap_or(f64::NAN),
        steps: summary.steps,
        wall_seconds: start.elapsed().as_secs_f64(),
        dropped_fraction: dropped_fraction(&t, top_k),
    })
}

/// Dropped selections over all selections (tokens × K) in the run's MEFT ledger.
fn dropped_fraction(t: &Trainer, top_k: usize) -> f64 {
    let Some(ledger) = t.adapter().ledger() else { return 0.0 };
    let layers = ledger.steps.iter().flat_map(|s| &s.layers);
    let (drops, selections) = layers.fold((0usize, 0usize), |(d, n), l| (d + l.drops, n + l.tokens * top_k));
    drops as f64 / selections.max(1) as f64
}

fn method_name(m: MethodKind) -> &'static str {
    m.label()
}

/// Per dataset and method, the run with the best trained-facts EM (ties: lower held-out loss).
fn best_per_method(runs: &[RunResult]) -> Vec<RunResult> {
    let mut best: Vec<RunResult> = Vec::new();
    for r in runs {
        match best.iter_mut().find(|b| b.dataset == r.dataset && b.method == r.method) {
            Some(b) if (r.train_em, -r.held_out_loss) > (b.train_em, -b.held_out_loss) => *b = r.clone(),
            Some(_) => {}
            None => best.push(r.clone()),
        }
    }
    best
}

/// The paper's LLaMA-7B NQ EM (Table 1, 24 GB rows) for a method.
fn paper_nq(method: &str) -> &'static str {
    match method {
        "base" => "0.164",
        "LoRA" => "0.305 (LoRA-24G-2%)",
        "PA" => "0.387 (PA-24G-2%)",
        "MEFT" => "0.413 (MEFT-24G-10%)",
        _ => "-",
    }
}

fn markdown(ctx: &Context, s: &Scale, runs: &[RunResult], best: &[RunResult], h5: &str) -> String {
    let mut md = format!(
        "{}\n\n**Setup.** {} facts per dataset (question → first answer, ChatML template, loss on the answer), \
         80 % trained / 20 % held out by hashed id; adapters on the last {} layer(s), the layers below frozen and cached; \
         {} epochs, micro-batch {}, AdamW, warm-up 5 % then linear decay, clip 1.0, learning rates {:?} per method (best shown). \
         One simulated device budget for all: the bytes the dense PA with {} neurons per layer needs. \
         MEFT keeps {}× more neurons ({} per layer) in host memory, top-{} per token through {} Key-Experts (top-{} probed). \
         EM is greedy exact match of the whole answer (computed teacher-forced, which equals greedy decoding's exact match); \
         the paper's EM is substring match on generated text of a 7B model on the NQ test set, so only the ordering of methods is comparable.\n\n",
        scale_line(ctx),
        s.facts,
        s.adapted_layers,
        s.epochs,
        s.micro,
        s.lrs,
        s.pa_neurons,
        s.meft_factor,
        s.pa_neurons * s.meft_factor,
        s.top_k,
        s.experts,
        s.top_p
    );
    let rows: Vec<Vec<String>> = best
        .iter()
        .map(|r| {
            vec![
                r.dataset.clone(),
                r.method.clone(),
                r.size.clone(),
                r.trainable_params.to_string(),
                r.device_adapter_bytes.to_string(),
                r.lr.map_or("-".into(), |l| format!("{l:e}")),
                format!("{:.3}", r.train_em),
                format!("{:.3}", r.held_out_em),
                if r.dataset == "nq_open" { paper_nq(&r.method).into() } else { "-".into() },
            ]
        })
        .collect();
    md += &md_table(
        &["dataset", "method", "size", "trainable params", "device adapter bytes", "best lr", "EM trained facts", "EM held-out", "paper NQ EM (7B)"],
        &rows,
    );
    md += "\n**Every run** (learning-rate sweep):\n\n";
    let all: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let lr = r.lr.map_or("-".into(), |l| format!("{l:e}"));
            vec![
                r.dataset.clone(),
                r.method.clone(),
                lr,
                format!("{:.3}", r.train_em),
                format!("{:.3}", r.held_out_em),
                format!("{:.3}", r.held_out_loss),
                format!("{:.3}", r.dropped_fraction),
                r.steps.to_string(),
                format!("{:.0}", r.wall_seconds),
            ]
        })
        .collect();
    md += &md_table(&["dataset", "method", "lr", "EM trained", "EM held-out", "held-out loss", "MEFT dropped selections", "steps", "wall s"], &all);
    md += &format!("\nPer-run data: `{h5}` and `results/capacity.json`.\n");
    md
}

fn absorbed_figure(ctx: &Context, s: &Scale, best: &[RunResult]) -> Result<Vec<String>> {
    let groups: Vec<String> = s.datasets.iter().map(|d| d.to_string()).collect();
    let series: Vec<(String, Vec<f64>)> = ["base", "LoRA", "PA", "MEFT"]
        .iter()
        .map(|m| {
            let v = groups.iter().map(|g| best.iter().find(|r| &r.dataset == g && r.method == *m).map_or(0.0, |r| r.train_em)).collect();
            (m.to_string(), v)
        })
        .collect();
    let names = plot::bar_chart(&ctx.figures_dir(), "capacity_em", "Trained facts recalled (exact match), one device budget", "EM", &groups, &series)?;
    Ok(super::output::figure_paths(&names))
}

fn lr_figure(ctx: &Context, runs: &[RunResult]) -> Result<Vec<String>> {
    let mut series = Vec::new();
    for r in runs.iter().filter(|r| r.lr.is_some()) {
        let label = format!("{} {}", r.method, r.dataset);
        let point = (r.lr.unwrap_or(1.0), r.train_em);
        match series.iter_mut().find(|s: &&mut plot::Series| s.label == label) {
            Some(s) => s.points.push(point),
            None => series.push(plot::Series { label, points: vec![point] }),
        }
    }
    let names = plot::line_chart(&ctx.figures_dir(), "capacity_lr", "Learning-rate sweep", "peak learning rate", "EM on trained facts", &series, plot::AxisScale::Log)?;
    Ok(super::output::figure_paths(&names))
}

fn h5_table(runs: &[RunResult]) -> meft_eval::h5::Table {
    let text = |f: fn(&RunResult) -> String| meft_eval::h5::ColumnValues::Text(runs.iter().map(f).collect());
    let col = meft_eval::h5::Column::new;
    meft_eval::h5::Table {
        name: "runs".into(),
        description: "one row per trained configuration (and the base model)".into(),
        columns: vec![
            col("dataset", "1", "dataset name", text(|r| r.dataset.clone())),
            col("method", "1", "base, LoRA, PA or MEFT", text(|r| r.method.clone())),
            f64_column("lr", "1", "peak learning rate (NaN for the base model)", runs.iter().map(|r| r.lr.unwrap_or(f64::NAN)).collect()),
            u64_column("trainable_params", "1", "trainable scalars", runs.iter().map(|r| r.trainable_params).collect()),
            u64_column("device_adapter_bytes", "bytes", "adapter parameters, gradients and optimizer state on the device", runs.iter().map(|r| r.device_adapter_bytes).collect()),
            f64_column("train_em", "1", "greedy exact match on trained questions", runs.iter().map(|r| r.train_em).collect()),
            f64_column("held_out_em", "1", "greedy exact match on held-out questions", runs.iter().map(|r| r.held_out_em).collect()),
            f64_column("wall_seconds", "s", "training and evaluation time", runs.iter().map(|r| r.wall_seconds).collect()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The synthetic smoke run trains every method, and the base model knows no fact.
    #[test]
    fn synthetic_smoke_run_reports_every_method() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = Context::synthetic_in(dir.path(), Profile::Smoke, "test");
        let s = run(&ctx).expect("experiment 1");
        let best = s.results["best"].as_array().expect("best");
        let methods: Vec<&str> = best.iter().filter_map(|r| r["method"].as_str()).collect();
        assert_eq!(methods, ["base", "LoRA", "PA", "MEFT"]);
        assert_eq!(best[0]["train_em"].as_f64(), Some(0.0));
        for r in best {
            let em = r["train_em"].as_f64().expect("em");
            assert!((0.0..=1.0).contains(&em), "{r}");
        }
        assert!(s.markdown.contains("| synthetic | MEFT |"), "{}", s.markdown);
        assert!(s.figures.iter().all(|f| ctx.paper_dir.join(f).is_file()), "{:?}", s.figures);
        assert!(ctx.results_dir().join("capacity.h5").is_file());
    }
}
