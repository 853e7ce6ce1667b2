//! Stage two: the validated, typed [`TrainPlan`] built from a [`RawConfig`] and the model's
//! [`ModelConfig`]. Every rejection names the field and the fix.

use std::path::PathBuf;

use meft_core::LinearSite;
use meft_core::adapters::{Activation, LoraConfig};
use meft_core::optim::{AdamWConfig, OptimError};
use meft_core::sparse::Evaluation;
use meft_eval::LossMask;
use meft_models::ModelConfig;
use meft_offload::{HostOptimizer, MeftConfig, OffloadPlan};
use meft_router::Scoring;
use serde::Serialize;

use super::config::{ConfigError, MethodKind, RawConfig};
use super::memory::{self, MemoryPlan, Shape, SizeKnob};

/// How long to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Length {
    /// A fixed number of optimizer steps.
    Steps(u64),
    /// Passes over the training split.
    Epochs(u64),
}

/// After warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    /// Linear to 0 at the last step.
    Linear,
    /// Constant peak.
    Constant,
}

/// The adapter to train, fully specified.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodPlan {
    /// MEFT with its offload plan.
    Meft {
        /// Sizes, routing, optimizer.
        config: MeftConfig,
        /// Capacities and pre-look.
        offload: OffloadPlan,
    },
    /// Dense Parallel Adapter.
    Pa {
        /// Neurons per layer.
        size: usize,
        /// Activation.
        activation: Activation,
    },
    /// LoRA.
    Lora(LoraConfig),
    /// AdapterH with a bottleneck of `size` units.
    AdapterH {
        /// Bottleneck units per layer.
        size: usize,
    },
    /// Full fine-tuning of the projections `sites`.
    FullFt {
        /// Trained projections.
        sites: Vec<LinearSite>,
    },
    /// No adapter.
    None,
}

impl MethodPlan {
    /// A short description of the adapter's size for reports (`M = 64`, `r = 8`, ...).
    pub fn size_label(&self) -> String {
        match self {
            Self::Meft { config, offload } => {
                let c = offload.layers.first().map_or(0, |l| l.capacity);
                format!("M = {} host, C = {c} device rows, K = {}, N = {}", config.neurons, config.top_k, config.experts)
            }
            Self::Pa { size, .. } => format!("M = {size}"),
            Self::Lora(l) => format!("r = {} ({})", l.rank, l.sites.iter().map(|s| format!("{s:?}").to_lowercase()).collect::<Vec<_>>().join(", ")),
            Self::AdapterH { size } => format!("r = {size}"),
            Self::FullFt { sites } => format!("{} projections", sites.len()),
            Self::None => "-".into(),
        }
    }
}

/// A validated experiment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainPlan {
    /// The raw configuration it came from (saved with the run).
    pub raw: RawConfig,
    /// The adapted layers, ascending.
    pub layers: Vec<usize>,
    /// The adapter.
    pub method: MethodPlan,
    /// AdamW (peak lr) for every trainable parameter.
    pub adamw: AdamWConfig,
    /// Warm-up fraction.
    pub warmup: f64,
    /// Decay after warm-up.
    pub decay: Decay,
    /// Global gradient-norm clip.
    pub clip: Option<f64>,
    /// Training length.
    pub length: Length,
    /// Loss mask.
    pub loss_mask: LossMask,
    /// Output directory.
    pub output_dir: PathBuf,
    /// Device budget in bytes.
    pub budget: Option<u64>,
    /// The memory plan.
    pub memory: MemoryPlan,
    /// Layers `0..prefix_start` are frozen and run once per sequence (0: no prefix cache).
    pub prefix_start: usize,
}

fn invalid(field: &str, reason: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::invalid(field, reason, fix)
}

impl TrainPlan {
    /// Validates `raw` against the model `model`.
    pub fn new(raw: RawConfig, model: &ModelConfig) -> Result<Self, ConfigError> {
        let layers = parse_layers(&raw.layers, model.num_hidden_layers)?;
        let adamw = optimizer(&raw)?;
        check_batch(&raw)?;
        let length = match (raw.steps, raw.epochs) {
            (0, 0) => return Err(invalid("steps", "both `steps` and `epochs` are 0", "set steps = N or epochs = N")),
            (s, 0) => Length::Steps(s),
            (0, e) => Length::Epochs(e),
            _ => return Err(invalid("steps", "both `steps` and `epochs` are set", "set only one of them")),
        };
        let loss_mask = match raw.dataset.loss_mask.as_str() {
            "whole" => LossMask::WholeSequence,
            "response" => LossMask::ResponseOnly,
            o => return Err(invalid("dataset.loss_mask", format!("`{o}` is unknown"), "use whole or response")),
        };
        let budget = match raw.device.budget.trim() {
            "" => None,
            b => Some(memory::parse_bytes(b).ok_or_else(|| invalid("device.budget", format!("`{b}` is not a size"), "write e.g. 2GiB or 512MiB"))?),
        };
        let shape = Shape { micro: raw.batch.micro, max_length: raw.batch.max_length, layers: layers.len(), weight_bytes: 4 };
        let (method, memory) = method_plan(&raw, model, &layers, adamw, &shape, budget)?;
        if let (Some(b), true) = (budget, memory.total_device > budget.unwrap_or(u64::MAX)) {
            return Err(invalid(
                "device.budget",
                format!("{b} bytes < {} bytes needed ({memory:?})", memory.total_device),
                "raise the budget, or shrink the adapter, micro-batch or max_length",
            ));
        }
        let decay = match raw.optim.decay.as_str() {
            "linear" => Decay::Linear,
            "constant" => Decay::Constant,
            o => return Err(invalid("optim.decay", format!("`{o}` is unknown"), "use linear or constant")),
        };
        let clip = (raw.optim.clip > 0.0).then_some(raw.optim.clip);
        let prefix_start = prefix_start(&raw, &layers)?;
        Ok(Self {
            warmup: raw.optim.warmup,
            output_dir: raw.output_dir.clone(),
            raw,
            layers,
            method,
            adamw,
            decay,
            clip,
            length,
            loss_mask,
            budget,
            memory,
            prefix_start,
        })
    }
}

/// The first layer that must run every step: the lowest adapted layer, less MEFT's pre-look
/// (layer ℓ − p dispatches ℓ's routing).
fn prefix_start(raw: &RawConfig, layers: &[usize]) -> Result<usize, ConfigError> {
    let lowest = layers.first().copied().unwrap_or(0);
    let look = if raw.method == MethodKind::Meft { raw.meft.pre_look } else { 0 };
    match raw.batch.prefix_cache.as_str() {
        "auto" => Ok(lowest.saturating_sub(look)),
        "off" => Ok(0),
        o => Err(invalid("batch.prefix_cache", format!("`{o}` is unknown"), "use auto or off")),
    }
}

fn optimizer(raw: &RawConfig) -> Result<AdamWConfig, ConfigError> {
    let o = &raw.optim;
    if !(o.lr > 0.0 && o.lr.is_finite()) {
        return Err(invalid("optim.lr", format!("= {} must be > 0", o.lr), "set a positive peak learning rate, e.g. 1e-4"));
    }
    if !(0.0..1.0).contains(&o.warmup) || o.clip < 0.0 {
        return Err(invalid("optim.warmup", format!("warmup = {}, clip = {}", o.warmup, o.clip), "warmup in [0, 1), clip ≥ 0 (0 = off)"));
    }
    let adamw = AdamWConfig { lr: o.lr, beta1: o.beta1, beta2: o.beta2, eps: o.eps, weight_decay: o.weight_decay, ..AdamWConfig::default() };
    adamw.validate().map_err(|e| match e {
        OptimError::InvalidConfig { field, value, expected } => invalid(
            &format!("optim.{field}"),
            format!("= {value} is not {expected}"),
            "use the paper's AdamW: beta1 0.9, beta2 0.999, eps 1e-8, weight_decay 0",
        ),
        other => invalid("optim", other.to_string(), "fix the AdamW settings"),
    })?;
    Ok(adamw)
}

fn check_batch(raw: &RawConfig) -> Result<(), ConfigError> {
    let b = &raw.batch;
    if b.micro == 0 {
        return Err(invalid("batch.micro", "is 0", "use at least 1 sequence per micro-batch"));
    }
    if b.accumulation == 0 {
        return Err(invalid("batch.accumulation", "is 0", "use 1 for no accumulation"));
    }
    if b.max_length < 2 {
        return Err(invalid("batch.max_length", format!("= {} is too short", b.max_length), "use ≥ 2 tokens"));
    }
    if raw.checkpoint.keep_last == 0 {
        return Err(invalid("checkpoint.keep_last", "is 0", "keep at least 1 checkpoint"));
    }
    if !(0.0..1.0).contains(&raw.dataset.held_out) {
        return Err(invalid("dataset.held_out", format!("= {}", raw.dataset.held_out), "use a fraction in [0, 1)"));
    }
    Ok(())
}

/// `all`, `a..b` or `last:N`.
pub fn parse_layers(text: &str, n: usize) -> Result<Vec<usize>, ConfigError> {
    let fix = format!("use all, a..b with b ≤ {n}, or last:N with N ≤ {n}");
    let t = text.trim();
    let range = if t.is_empty() || t == "all" {
        0..n
    } else if let Some(k) = t.strip_prefix("last:") {
        let k: usize = k.parse().map_err(|_| invalid("layers", format!("`{t}` is not last:N"), fix.clone()))?;
        n.saturating_sub(k)..n
    } else {
        let (a, b) = t.split_once("..").ok_or_else(|| invalid("layers", format!("`{t}` is not a layer set"), fix.clone()))?;
        let parse = |s: &str| s.trim().parse::<usize>().map_err(|_| invalid("layers", format!("`{t}` has a bad bound"), fix.clone()));
        parse(a)?..parse(b)?
    };
    if range.is_empty() || range.end > n {
        return Err(invalid("layers", format!("`{t}` selects no valid layer of {n}"), fix));
    }
    Ok(range.collect())
}

fn method_plan(
    raw: &RawConfig,
    c: &ModelConfig,
    layers: &[usize],
    adamw: AdamWConfig,
    s: &Shape,
    budget: Option<u64>,
) -> Result<(MethodPlan, MemoryPlan), ConfigError> {
    let l = layers.len() as u64;
    match raw.method {
        MethodKind::None => Ok((MethodPlan::None, MemoryPlan::new(c, s, None, &[], 0, 0))),
        MethodKind::Pa => {
            let p = &raw.pa;
            if p.size == 0 {
                return Err(invalid("pa.size", "is 0", "use ≥ 1 neuron"));
            }
            let activation = match p.activation.as_str() {
                "relu" => Activation::Relu,
                "silu" => Activation::Silu,
                o => return Err(invalid("pa.activation", format!("`{o}` is unknown"), "use relu or silu")),
            };
            let mem = MemoryPlan::new(c, s, Some((SizeKnob::PaNeurons, p.size as u64)), &[], 0, 0);
            Ok((MethodPlan::Pa { size: p.size, activation }, mem))
        }
        MethodKind::Lora => {
            let r = &raw.lora;
            let sites = r.targets.iter().map(|t| parse_site(t)).collect::<Result<Vec<_>, _>>()?;
            let cfg = LoraConfig { rank: r.rank, alpha: r.alpha, dropout: r.dropout, sites, layers: layers.to_vec() };
            if cfg.rank == 0 || !(0.0..1.0).contains(&cfg.dropout) || cfg.sites.is_empty() {
                return Err(invalid(
                    "lora.rank",
                    format!("rank {}, dropout {}, {} targets", r.rank, r.dropout, r.targets.len()),
                    "rank ≥ 1, dropout in [0, 1), at least one target",
                ));
            }
            let dims: Vec<_> = cfg.sites.iter().map(|&site| site_dims(c, site)).collect();
            let mem = MemoryPlan::new(c, s, Some((SizeKnob::LoraRank, r.rank as u64)), &dims, 0, 0);
            Ok((MethodPlan::Lora(cfg), mem))
        }
        MethodKind::AdapterH => {
            let size = raw.adapter_h.size;
            if size == 0 {
                return Err(invalid("adapter_h.size", "is 0", "use ≥ 1 bottleneck unit"));
            }
            let mem = MemoryPlan::new(c, s, Some((SizeKnob::AdapterHUnits, size as u64)), &[], 0, 0);
            Ok((MethodPlan::AdapterH { size }, mem))
        }
        MethodKind::FullFt => {
            let sites = raw.full_ft.targets.iter().map(|t| parse_site_of("full_ft.targets", t)).collect::<Result<Vec<_>, _>>()?;
            if sites.is_empty() {
                return Err(invalid("full_ft.targets", "is empty", "list the projections to train, e.g. ['q', 'k', 'v', 'o', 'gate', 'up', 'down']"));
            }
            let dims: Vec<_> = sites.iter().map(|&site| site_dims(c, site)).collect();
            let mem = MemoryPlan::new(c, s, Some((SizeKnob::FullProjections, 1)), &dims, 0, 0);
            Ok((MethodPlan::FullFt { sites }, mem))
        }
        MethodKind::Meft => meft_plan(raw, c, layers, adamw, s, budget, l),
    }
}

fn meft_plan(
    raw: &RawConfig,
    c: &ModelConfig,
    layers: &[usize],
    adamw: AdamWConfig,
    s: &Shape,
    budget: Option<u64>,
    l: u64,
) -> Result<(MethodPlan, MemoryPlan), ConfigError> {
    let r = &raw.meft;
    let m = r.neurons;
    if m == 0 {
        return Err(invalid("meft.neurons", "is 0", "use e.g. 4096"));
    }
    if r.top_k == 0 || r.top_k > m {
        return Err(invalid("meft.top_k", format!("K = {} is outside 1..={m} (M)", r.top_k), "choose K ≤ M (default 64)"));
    }
    let experts = match r.experts {
        0 if r.expert_factor > 0.0 => ((m as f64).sqrt() / r.expert_factor).round().max(1.0) as usize,
        0 => return Err(invalid("meft.expert_factor", format!("= {} must be > 0", r.expert_factor), "use 0.25 (N = 4·√M) or set meft.experts")),
        n => n,
    };
    if !m.is_multiple_of(experts) {
        let near: Vec<usize> = (m.saturating_sub(4 * experts)..=m + 4 * experts).filter(|v| *v > 0 && v % experts == 0).take(6).collect();
        return Err(invalid(
            "meft.experts",
            format!("N = {experts} does not divide M = {m}"),
            format!("pick M among {near:?} or set meft.experts to a divisor of M"),
        ));
    }
    if r.top_p == 0 || r.top_p > experts {
        return Err(invalid("meft.top_p", format!("P = {} is outside 1..={experts} (N)", r.top_p), "probe fewer experts"));
    }
    let pick = |field: &str, v: &str, a: &str, b: &str| match v {
        x if x == a => Ok(true),
        x if x == b => Ok(false),
        o => Err(invalid(field, format!("`{o}` is unknown"), format!("use {a} or {b}"))),
    };
    let scoring = if pick("meft.scoring", &r.scoring, "gated", "plain")? { Scoring::Gated } else { Scoring::Plain };
    let evaluation = if pick("meft.evaluation", &r.evaluation, "per_token", "union")? { Evaluation::PerToken } else { Evaluation::Union };
    let host_optimizer = if pick("meft.host_optimizer", &r.host_optimizer, "dense", "lazy")? { HostOptimizer::Dense } else { HostOptimizer::Lazy };
    let config =
        MeftConfig { hidden: c.hidden_size, neurons: m, experts, top_k: r.top_k, top_p: r.top_p, scoring, evaluation, host_optimizer, adamw };
    let tokens = s.micro * s.max_length;
    let capacity = match (r.capacity, budget) {
        (0, None) => m.min(tokens * r.top_k),
        (0, Some(b)) => {
            let fixed = MemoryPlan::new(c, s, None, &[], 0, 0).total_device;
            memory::largest_fitting(b, fixed, SizeKnob::MeftCapacity, c, l, &[], experts as u64)
                .map(|cap| (cap as usize).min(m).min(tokens * r.top_k))
                .filter(|&cap| cap >= r.top_k)
                .ok_or_else(|| {
                    invalid(
                        "device.budget",
                        format!("{b} bytes leave no room for {} working-set rows per layer", r.top_k),
                        "raise the budget or lower micro-batch / max_length",
                    )
                })?
        }
        (cap, _) if cap > m => return Err(invalid("meft.capacity", format!("C = {cap} > M = {m}"), "use C ≤ M, or 0 to fit the budget")),
        (cap, _) => cap,
    };
    let offload = OffloadPlan::uniform(layers, capacity, r.pre_look);
    offload.validate(&config).map_err(|e| invalid("meft", e.to_string(), "fix the MEFT parameters"))?;
    let host = 16 * (m * 2 * c.hidden_size) as u64 * l;
    let mem = MemoryPlan::new(c, s, Some((SizeKnob::MeftCapacity, capacity as u64)), &[], experts as u64, host);
    Ok((MethodPlan::Meft { config, offload }, mem))
}

/// `q k v o gate up down` to a [`LinearSite`] (a `lora.targets` entry).
pub fn parse_site(t: &str) -> Result<LinearSite, ConfigError> {
    parse_site_of("lora.targets", t)
}

/// `q k v o gate up down` to a [`LinearSite`]; errors name `field`.
fn parse_site_of(field: &str, t: &str) -> Result<LinearSite, ConfigError> {
    Ok(match t {
        "q" => LinearSite::Query,
        "k" => LinearSite::Key,
        "v" => LinearSite::Value,
        "o" => LinearSite::Output,
        "gate" => LinearSite::Gate,
        "up" => LinearSite::Up,
        "down" => LinearSite::Down,
        o => return Err(invalid(field, format!("`{o}` is not a projection"), "use q, k, v, o, gate, up, down")),
    })
}

/// `(fan_in, fan_out)` of a projection.
pub fn site_dims(c: &ModelConfig, site: LinearSite) -> (usize, usize) {
    let (d, f) = (c.hidden_size, c.intermediate_size);
    let (q, kv) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
    match site {
        LinearSite::Query => (d, q),
        LinearSite::Key | LinearSite::Value => (d, kv),
        LinearSite::Output => (q, d),
        LinearSite::Gate | LinearSite::Up => (d, f),
        LinearSite::Down => (f, d),
    }
}
