//! The training loop: micro-batches with gradient accumulation, global-norm clipping over every
//! trainable parameter (MEFT host rows included), warm-up + linear decay, held-out evaluation,
//! JSONL metrics, a progress bar, checkpoints and exact resume.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{D, Device};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use meft_core::adapters::Phase;
use meft_models::Llama;
use meft_offload::OffloadDevice;
use serde::Serialize;

use super::adapter::TrainableAdapter;
use super::build;
use super::checkpoint::{self, AdapterManifest, TrainerState};
use super::data::{self, Data, DataPosition, Sequence};
use super::plan::{Length, TrainPlan};
use super::schedule::lr_at;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    /// Optimizer step (1-based).
    pub step: u64,
    /// Mean training loss over the step's micro-batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens per second of this step.
    pub tokens_per_s: f64,
    /// Peak (simulated) device bytes.
    pub device_bytes: u64,
    /// MEFT union rows summed over layers.
    pub union_rows: u64,
    /// Bytes moved host ↔ device.
    pub moved_bytes: u64,
    /// Held-out loss, when evaluated at this step.
    pub eval_loss: Option<f64>,
    /// Exact match (greedy, teacher-forced) of completions on training examples.
    pub train_em: Option<f64>,
    /// The same on held-out examples.
    pub held_out_em: Option<f64>,
}

/// A ready-to-run training job.
pub struct Trainer {
    plan: TrainPlan,
    model: Llama,
    adapter: Box<dyn TrainableAdapter>,
    device: Arc<OffloadDevice>,
    data: Data,
    total_steps: u64,
    step: u64,
    pos: DataPosition,
}

/// Summary of a finished run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Steps run in total.
    pub steps: u64,
    /// The step the run resumed from (0 for a fresh run).
    pub resumed_from: u64,
    /// The last metrics line.
    pub last: Option<Metrics>,
    /// Where the adapter was exported.
    pub adapter_dir: PathBuf,
}

impl Trainer {
    /// Builds model, data and adapter for `plan`, resuming from the latest checkpoint when
    /// `plan.output_dir` has one written with the same config.
    pub fn new(plan: TrainPlan) -> Result<Self> {
        let frozen = build::model(&plan.raw.model.name, plan.raw.seed)?;
        let data = load_data(&plan, &frozen)?;
        let model = frozen.model;
        let device = build::device(&plan, &model.config)?;
        let adapter = build::adapter(&plan, &model.config, &device)?;
        let per_epoch = (data.train.len() as u64).div_ceil((plan.raw.batch.micro * plan.raw.batch.accumulation) as u64);
        let total_steps = match plan.length {
            Length::Steps(s) => s,
            Length::Epochs(e) => e * per_epoch.max(1),
        };
        let mut t = Self { plan, model, adapter, device, data, total_steps, step: 0, pos: DataPosition::default() };
        t.resume()?;
        Ok(t)
    }

    fn config_json(&self) -> Result<String> {
        Ok(serde_json::to_string(&self.plan.raw)?)
    }

    fn resume(&mut self) -> Result<()> {
        let out = self.plan.output_dir.clone();
        let Some(&last) = checkpoint::list(&out)?.last() else { return Ok(()) };
        let (tensors, state) = checkpoint::load(&out, last)?;
        if state.config != self.config_json()? {
            bail!("{} holds checkpoints of another config; use a new output_dir", out.display());
        }
        self.adapter.load_state(&tensors).context("restoring adapter and optimizer state")?;
        (self.step, self.pos) = (state.step, state.position);
        truncate_metrics(&out.join("metrics.jsonl"), self.step)?;
        eprintln!("resuming from step {} ({})", self.step, checkpoint::dir(&out).display());
        Ok(())
    }

    /// The adapter (for inspection after `run`).
    pub fn adapter(&self) -> &dyn TrainableAdapter {
        self.adapter.as_ref()
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    /// Runs to the end, then exports the adapter.
    pub fn run(&mut self) -> Result<Summary> {
        let out = self.plan.output_dir.clone();
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        std::fs::write(out.join("plan.json"), serde_json::to_string_pretty(&self.plan)?)?;
        let resumed_from = self.step;
        let bar = progress(self.total_steps, self.step);
        let mut metrics_file = std::fs::OpenOptions::new().create(true).append(true).open(out.join("metrics.jsonl"))?;
        let mut last = None;
        while self.step < self.total_steps {
            let mut m = self.train_step()?;
            let every = self.plan.raw.eval_every;
            if (every > 0 && m.step % every == 0) || m.step == self.total_steps {
                self.evaluate(&mut m)?;
            }
            writeln!(metrics_file, "{}", serde_json::to_string(&m)?)?;
            bar.set_position(m.step);
            bar.set_message(format!("loss {:.4} lr {:.2e} {:.0} tok/s dev {} B", m.loss, m.lr, m.tokens_per_s, m.device_bytes));
            let every = self.plan.raw.checkpoint.every;
            if (every > 0 && m.step % every == 0) || m.step == self.total_steps {
                self.save_checkpoint()?;
            }
            last = Some(m);
        }
        bar.finish_and_clear();
        self.export(&out)?;
        Ok(Summary { steps: self.step, resumed_from, last, adapter_dir: out })
    }

    /// One optimizer step over `accumulation` micro-batches; the loop body fits on a screen.
    fn train_step(&mut self) -> Result<Metrics> {
        let start = Instant::now();
        let (micro, accum) = (self.plan.raw.batch.micro, self.plan.raw.batch.accumulation);
        let lr = lr_at(self.step, self.total_steps, self.plan.adamw.lr, self.plan.warmup, self.plan.decay);
        self.adapter.set_phase(Phase::Train);
        let (mut loss_sum, mut tokens) = (0.0, 0usize);
        for _ in 0..accum {
            let idx = data::next_batch(&mut self.pos, self.data.train.len(), micro, self.plan.raw.seed);
            let seqs: Vec<&Sequence> = idx.iter().map(|&i| &self.data.train[i]).collect();
            let (x, mask) = data::collate(&seqs, &Device::Cpu)?;
            tokens += x.elem_count();
            let logits = self.model.forward(&x, self.adapter.hook())?;
            let loss = self.model.next_token_loss(&logits, &x, Some(&mask))?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            let grads = (loss / accum as f64)?.backward()?;
            self.adapter.after_backward(&grads)?;
        }
        let grad_norm = self.adapter.grad_sq_norm()?.sqrt();
        if let Some(clip) = self.plan.clip.filter(|&c| grad_norm > c) {
            self.adapter.scale_grads(clip / (grad_norm + 1e-6))?;
        }
        let facts = self.adapter.step(lr)?;
        self.step += 1;
        let report = self.device.report();
        Ok(Metrics {
            step: self.step,
            loss: loss_sum / accum as f64,
            lr,
            grad_norm,
            tokens_per_s: tokens as f64 / start.elapsed().as_secs_f64().max(1e-9),
            device_bytes: facts.device_peak_bytes.max(report.peak_total),
            union_rows: facts.union_rows,
            moved_bytes: facts.moved_bytes,
            eval_loss: None,
            train_em: None,
            held_out_em: None,
        })
    }

    /// Held-out loss and teacher-forced greedy exact match (equal to greedy decoding's exact
    /// match of the completion: greedy reproduces the target iff every argmax is the target).
    fn evaluate(&self, m: &mut Metrics) -> Result<()> {
        self.adapter.set_phase(Phase::Eval);
        let cap = 64;
        let held: Vec<&Sequence> = self.data.held_out.iter().take(cap).collect();
        let train: Vec<&Sequence> = self.data.train.iter().take(cap).collect();
        let (loss, held_em) = self.eval_set(&held)?;
        let (_, train_em) = self.eval_set(&train)?;
        (m.eval_loss, m.held_out_em, m.train_em) = (loss, held_em, train_em);
        self.adapter.set_phase(Phase::Train);
        Ok(())
    }

    fn eval_set(&self, seqs: &[&Sequence]) -> Result<(Option<f64>, Option<f64>)> {
        if seqs.is_empty() {
            return Ok((None, None));
        }
        let (mut loss, mut hits, mut batches) = (0.0, 0usize, 0usize);
        for chunk in seqs.chunks(self.plan.raw.batch.micro) {
            let (x, mask) = data::collate(chunk, &Device::Cpu)?;
            let logits = self.model.forward(&x, self.adapter.hook())?;
            self.adapter.discard_forward();
            loss += self.model.next_token_loss(&logits, &x, Some(&mask))?.to_scalar::<f32>()? as f64;
            batches += 1;
            let pred = logits.argmax(D::Minus1)?.to_vec2::<u32>()?;
            for (s, p) in chunk.iter().zip(pred) {
                let hit = (s.prompt_len.max(1)..s.tokens.len()).all(|t| p[t - 1] == s.tokens[t]);
                hits += usize::from(hit);
            }
        }
        Ok((Some(loss / batches as f64), Some(hits as f64 / seqs.len() as f64)))
    }

    fn save_checkpoint(&self) -> Result<()> {
        let state = TrainerState { step: self.step, total_steps: self.total_steps, position: self.pos, config: self.config_json()? };
        checkpoint::save(&self.plan.output_dir, &self.adapter.state()?, &state, self.plan.raw.checkpoint.keep_last)?;
        Ok(())
    }

    fn export(&self, out: &std::path::Path) -> Result<()> {
        let manifest = AdapterManifest {
            format: 1,
            model: self.plan.raw.model.name.clone(),
            config_toml: toml::to_string(&self.plan.raw)?,
            params: self.adapter.param_count(),
        };
        checkpoint::export(out, &self.adapter.export()?, &manifest)
    }
}

fn load_data(plan: &TrainPlan, frozen: &build::Frozen) -> Result<Data> {
    let cfg = &plan.raw.dataset;
    let (seqs, ids) = if cfg.name == "synthetic" {
        let s = data::synthetic(cfg.facts, frozen.model.config.vocab_size, plan.raw.seed, plan.loss_mask)?;
        let ids = (0..s.len()).map(|i| format!("fact-{i}")).collect::<Vec<_>>();
        (s, ids)
    } else {
        let (tok, chat) = frozen.text.as_ref().context("real datasets need a model with a tokenizer (not tiny-random)")?;
        let examples = data::load_examples(cfg)?;
        let ids = examples.iter().map(|e| e.id().to_string()).collect::<Vec<_>>();
        (data::tokenise(&examples, tok, chat, plan.loss_mask, plan.raw.batch.max_length)?, ids)
    };
    let (train, held_out) = data::split(seqs, &ids, cfg)?;
    if train.is_empty() {
        bail!("dataset `{}` has no training example after the split (held_out = {})", cfg.name, cfg.held_out);
    }
    Ok(Data { train, held_out })
}

fn progress(total: u64, done: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{bar:30} {pos}/{len} ETA {eta} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_position(done);
    bar
}

/// Drops metrics lines after `step` (a resumed run rewrites them).
fn truncate_metrics(path: &std::path::Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let keep: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s <= step))
        .collect();
    let mut out = keep.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    super::state::write_atomic(path, out.as_bytes())
}
