//! The training loop: micro-batches with gradient accumulation, global-norm clipping over every
//! trainable parameter (MEFT host rows included), warm-up + linear decay, held-out evaluation,
//! JSONL metrics, a progress bar, checkpoints and exact resume.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use meft_core::AdapterHook;
use meft_core::adapters::Phase;
use meft_models::Llama;
use meft_offload::OffloadDevice;
use serde::Serialize;

use super::adapter::TrainableAdapter;
use super::build;
use super::checkpoint::{self, AdapterManifest, TrainerState};
use super::data::{self, Data, DataPosition, Sequence};
use super::forward::{Completions, FrozenPrefix, Positions, head_outputs, run_layers};
use super::plan::{Length, TrainPlan};
use super::schedule::lr_at;

/// A training step whose loss or gradient norm is not finite (NaN or ±∞). The step's update is
/// not applied, so the adapter and the checkpoints on disk are intact; the run stops here.
#[derive(Debug, thiserror::Error)]
#[error(
    "step {step}: the loss ({loss}) or gradient norm ({grad_norm}) is not finite at lr {lr:e}; the update was not applied \
     (last checkpoint: {last_checkpoint}). Lower optim.lr or set optim.clip (e.g. 1.0) and run again: training resumes from that checkpoint"
)]
pub struct NonFiniteStep {
    /// The step that failed (1-based).
    pub step: u64,
    /// Its mean micro-batch loss.
    pub loss: f64,
    /// Its global gradient norm.
    pub grad_norm: f64,
    /// Its learning rate.
    pub lr: f64,
    /// The step of the newest checkpoint on disk (0: none).
    pub last_checkpoint: u64,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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

/// Greedy exact match and loss of one evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Evaluation {
    /// Mean loss over the held-out examples scored.
    pub held_out_loss: Option<f64>,
    /// Exact match (greedy, teacher-forced) on training examples.
    pub train_em: Option<f64>,
    /// The same on held-out examples.
    pub held_out_em: Option<f64>,
    /// Training examples scored.
    pub train_examples: usize,
    /// Held-out examples scored.
    pub held_out_examples: usize,
    /// Per scored training example (in split order): greedy reproduces its completion.
    #[serde(skip)]
    pub train_exact: Vec<bool>,
    /// The same for the held-out examples.
    #[serde(skip)]
    pub held_out_exact: Vec<bool>,
}

/// Sequences outside the run's splits, with their frozen-prefix cache: probes of what a trained
/// adapter does to other inputs (e.g. questions the base model already answered, plain text).
#[derive(Clone)]
pub struct Probe {
    /// The sequences (loss weights select the scored tokens, the completion the exact-match span).
    pub seqs: Vec<Sequence>,
    prefix: FrozenPrefix,
}

impl Probe {
    /// Caches the frozen prefix of `seqs` for runs built on `inputs`.
    pub fn new(inputs: &Inputs, seqs: Vec<Sequence>) -> Result<Self> {
        let prefix = FrozenPrefix::build(&inputs.model, &seqs, inputs.prefix[0].start(), 16)?;
        Ok(Self { seqs, prefix })
    }

    /// Per sequence: the base model (no adapter) reproduces its completion greedily.
    pub fn base_exact(&self, inputs: &Inputs) -> Result<Vec<bool>> {
        let mut exact = Vec::with_capacity(self.seqs.len());
        let idx: Vec<usize> = (0..self.seqs.len()).collect();
        for chunk in idx.chunks(16) {
            let refs: Vec<&Sequence> = chunk.iter().map(|&i| &self.seqs[i]).collect();
            let (x, _) = data::collate(&refs, &Device::Cpu)?;
            let h0 = self.prefix.input(&inputs.model, chunk, &x)?;
            let h = run_layers(&inputs.model, &h0, self.prefix.start()..inputs.model.layers.len(), &meft_core::NoAdapters)?;
            exact.extend(head_outputs(&inputs.model, &h, &Positions::of(&refs, x.dim(1)?, Completions::Include))?.exact);
        }
        Ok(exact)
    }
}

/// What a run's adapter does on a [`Probe`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeScore {
    /// Per sequence: greedy reproduces its completion.
    pub exact: Vec<bool>,
    /// Mean loss over the weighted tokens.
    pub mean_loss: f64,
}

/// A ready-to-run training job.
pub struct Trainer {
    plan: TrainPlan,
    model: Llama,
    adapter: Box<dyn TrainableAdapter>,
    device: Arc<OffloadDevice>,
    data: Data,
    prefix: [FrozenPrefix; 2],
    total_steps: u64,
    step: u64,
    pos: DataPosition,
    last_eval: Option<Evaluation>,
    /// Token count of every training sequence (for length-grouped batches).
    train_lens: Vec<usize>,
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
        let inputs = Inputs::load(&plan)?;
        Self::from_inputs(plan, inputs)
    }

    /// [`Self::new`] with model, data and prefix cache already built (shared by runs that differ
    /// only in the method or optimizer).
    pub fn from_inputs(plan: TrainPlan, inputs: Inputs) -> Result<Self> {
        if inputs.key != Inputs::key_of(&plan) {
            bail!("trainer inputs were built for another model, dataset, batch or layer range: {} vs {}", inputs.key, Inputs::key_of(&plan));
        }
        let Inputs { model, data, prefix, .. } = inputs;
        let device = build::device(&plan, &model.config)?;
        let adapter = build::adapter(&plan, &model.config, &device)?;
        let per_epoch = (data.train.len() as u64).div_ceil((plan.raw.batch.micro * plan.raw.batch.accumulation) as u64);
        let total_steps = match plan.length {
            Length::Steps(s) => s,
            Length::Epochs(e) => e * per_epoch.max(1),
        };
        let train_lens = data.train.iter().map(|s| s.tokens.len()).collect();
        let mut t =
            Self { plan, model, adapter, device, data, prefix, total_steps, step: 0, pos: DataPosition::default(), last_eval: None, train_lens };
        t.resume()?;
        Ok(t)
    }

    /// The model (frozen).
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// The plan it runs.
    pub fn plan(&self) -> &TrainPlan {
        &self.plan
    }

    /// Optimizer steps done (after a resume: the checkpoint's step).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The (simulated) device the run accounts its bytes on.
    pub fn device(&self) -> &OffloadDevice {
        &self.device
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
        if let Some(ledger) = state.ledger {
            self.adapter.restore_ledger(ledger);
        }
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
        let batching = data::Batching { micro, group_window: self.plan.raw.batch.group_by_length };
        let batches: Vec<Vec<usize>> = (0..accum).map(|_| data::next_batch(&mut self.pos, &self.train_lens, batching, self.plan.raw.seed)).collect();
        // A micro-batch whose every completion lies past max_length has nothing to learn; the
        // step averages over the others.
        let live = live_micro_batches(&batches, |i| self.data.train[i].weights.iter().any(|&w| w != 0));
        let (mut loss_sum, mut tokens) = (0.0, 0usize);
        for &(m, idx) in &live {
            self.adapter.reseed(dropout_seed(self.plan.raw.seed, self.step, m));
            let seqs: Vec<&Sequence> = idx.iter().map(|&i| &self.data.train[i]).collect();
            let (x, _) = data::collate(&seqs, &Device::Cpu)?;
            tokens += x.elem_count();
            let h = self.top_layers(SplitIndex::Train, idx, &x)?;
            let pos = Positions::of(&seqs, x.dim(1)?, Completions::Skip);
            let loss = head_outputs(&self.model, &h, &pos)?.loss;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            let grads = (loss / live.len() as f64)?.backward()?;
            self.adapter.after_backward(&grads)?;
        }
        let grad_norm = self.adapter.grad_sq_norm()?.sqrt();
        let loss = loss_sum / live.len().max(1) as f64;
        if !(loss.is_finite() && grad_norm.is_finite()) {
            // The update is not applied: the adapter and every checkpoint stay as they were.
            return Err(NonFiniteStep { step: self.step + 1, loss, grad_norm, lr, last_checkpoint: self.last_checkpoint_step() }.into());
        }
        if let Some(clip) = self.plan.clip.filter(|&c| grad_norm > c) {
            self.adapter.scale_grads(clip / (grad_norm + 1e-6))?;
        }
        let facts = self.adapter.step(lr)?;
        self.step += 1;
        let report = self.device.report();
        Ok(Metrics {
            step: self.step,
            loss,
            lr,
            grad_norm,
            tokens_per_s: tokens as f64 / start.elapsed().as_secs_f64().max(1e-9),
            device_bytes: facts.device_peak_bytes.max(report.peak_total),
            union_rows: facts.union_rows,
            moved_bytes: facts.moved_bytes(),
            eval_loss: None,
            train_em: None,
            held_out_em: None,
        })
    }

    /// Layers `prefix_start..` over sequences `idx` of `split` (collated tokens `x`).
    fn top_layers(&self, split: SplitIndex, idx: &[usize], x: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        let prefix = &self.prefix[split as usize];
        let h0 = prefix.input(&self.model, idx, x)?;
        run_layers(&self.model, &h0, prefix.start()..self.model.layers.len(), self.adapter.hook())
    }

    fn evaluate(&mut self, m: &mut Metrics) -> Result<()> {
        let e = self.evaluate_now(self.plan.raw.eval_examples)?;
        (m.eval_loss, m.held_out_em, m.train_em) = (e.held_out_loss, e.held_out_em, e.train_em);
        self.last_eval = Some(e);
        Ok(())
    }

    /// The last evaluation [`Self::run`] made (at its final step), if any.
    pub fn last_evaluation(&self) -> Option<&Evaluation> {
        self.last_eval.as_ref()
    }

    /// Held-out loss and teacher-forced greedy exact match (equal to greedy decoding's exact
    /// match of the completion: greedy reproduces the target iff every argmax is the target) on
    /// the first `limit` examples of each split (0: all).
    pub fn evaluate_now(&self, limit: usize) -> Result<Evaluation> {
        self.adapter.set_phase(Phase::Eval);
        let cap = |n: usize| if limit == 0 { n } else { n.min(limit) };
        let held = self.score_split(SplitIndex::HeldOut, cap(self.data.held_out.len()))?;
        let train = self.score_split(SplitIndex::Train, cap(self.data.train.len()))?;
        self.adapter.set_phase(Phase::Train);
        let em = |s: &Option<ProbeScore>| s.as_ref().map(|s| s.exact.iter().filter(|&&e| e).count() as f64 / s.exact.len() as f64);
        Ok(Evaluation {
            held_out_loss: held.as_ref().map(|s| s.mean_loss),
            train_em: em(&train),
            held_out_em: em(&held),
            train_examples: cap(self.data.train.len()),
            held_out_examples: cap(self.data.held_out.len()),
            train_exact: train.map(|s| s.exact).unwrap_or_default(),
            held_out_exact: held.map(|s| s.exact).unwrap_or_default(),
        })
    }

    /// The first `count` examples of `split`, scored (`None` when `count` is 0).
    fn score_split(&self, split: SplitIndex, count: usize) -> Result<Option<ProbeScore>> {
        let all = match split {
            SplitIndex::Train => &self.data.train,
            SplitIndex::HeldOut => &self.data.held_out,
        };
        if count == 0 {
            return Ok(None);
        }
        Ok(Some(self.score_sequences(&all[..count], &self.prefix[split as usize])?))
    }

    /// The adapter's greedy exact match and loss on a probe (evaluation mode).
    pub fn score_probe(&self, probe: &Probe) -> Result<ProbeScore> {
        if probe.prefix.start() != self.prefix[0].start() {
            bail!("the probe's frozen prefix ends at layer {}, this run's at {}", probe.prefix.start(), self.prefix[0].start());
        }
        self.adapter.set_phase(Phase::Eval);
        let score = self.score_sequences(&probe.seqs, &probe.prefix);
        self.adapter.set_phase(Phase::Train);
        score
    }

    /// The FFN inputs of `layers` (each `tokens × d`, padding dropped) for the first `count`
    /// training sequences, computed through this run's adapter (evaluation mode); also the
    /// sequence lengths, in order.
    pub fn ffn_inputs(&self, layers: &[usize], count: usize) -> Result<(Vec<Vec<f32>>, Vec<usize>)> {
        let seqs = &self.data.train[..count.min(self.data.train.len())];
        let recorder = Recording {
            inner: self.adapter.hook(),
            layers: layers.to_vec(),
            lens: std::sync::Mutex::default(),
            seen: std::sync::Mutex::new(vec![Vec::new(); layers.len()]),
        };
        let batch = match self.plan.raw.batch.eval_micro {
            0 => self.plan.raw.batch.micro,
            n => n,
        };
        self.adapter.set_phase(Phase::Eval);
        let idx: Vec<usize> = (0..seqs.len()).collect();
        for chunk in idx.chunks(batch) {
            let refs: Vec<&Sequence> = chunk.iter().map(|&i| &seqs[i]).collect();
            let (x, _) = data::collate(&refs, &Device::Cpu)?;
            let prefix = &self.prefix[SplitIndex::Train as usize];
            let h0 = prefix.input(&self.model, chunk, &x)?;
            *recorder.lens.lock().unwrap_or_else(|e| e.into_inner()) = refs.iter().map(|s| s.tokens.len()).collect();
            run_layers(&self.model, &h0, prefix.start()..self.model.layers.len(), &recorder)?;
            self.adapter.discard_forward();
        }
        self.adapter.set_phase(Phase::Train);
        let lens = seqs.iter().map(|s| s.tokens.len()).collect();
        Ok((recorder.seen.into_inner().unwrap_or_else(|e| e.into_inner()), lens))
    }

    /// Greedy exact match per sequence and mean loss over `seqs`, whose prefix cache is `prefix`.
    fn score_sequences(&self, seqs: &[Sequence], prefix: &FrozenPrefix) -> Result<ProbeScore> {
        let (mut loss, mut batches, mut exact) = (0.0, 0usize, vec![false; seqs.len()]);
        // Batches of similar lengths pad less; results go back to sequence order.
        let mut idx: Vec<usize> = (0..seqs.len()).collect();
        idx.sort_by_key(|&i| (seqs[i].tokens.len(), i));
        let batch = match self.plan.raw.batch.eval_micro {
            0 => self.plan.raw.batch.micro,
            n => n,
        };
        for chunk in idx.chunks(batch) {
            let refs: Vec<&Sequence> = chunk.iter().map(|&i| &seqs[i]).collect();
            let (x, _) = data::collate(&refs, &Device::Cpu)?;
            let pos = Positions::of(&refs, x.dim(1)?, Completions::Include);
            if pos.loss.is_empty() {
                // Every completion lies past max_length: nothing to score, and none can be
                // reproduced, so these sequences stay misses and add no loss.
                continue;
            }
            let h0 = prefix.input(&self.model, chunk, &x)?;
            let h = run_layers(&self.model, &h0, prefix.start()..self.model.layers.len(), self.adapter.hook())?;
            self.adapter.discard_forward();
            let out = head_outputs(&self.model, &h, &pos)?;
            loss += out.loss.to_scalar::<f32>()? as f64;
            batches += 1;
            for (&i, e) in chunk.iter().zip(out.exact) {
                exact[i] = e;
            }
        }
        Ok(ProbeScore { exact, mean_loss: loss / batches.max(1) as f64 })
    }

    /// The newest checkpoint's step on disk (0: none, or the directory cannot be read).
    fn last_checkpoint_step(&self) -> u64 {
        checkpoint::list(&self.plan.output_dir).ok().and_then(|s| s.last().copied()).unwrap_or(0)
    }

    fn save_checkpoint(&self) -> Result<()> {
        let ledger = self.adapter.ledger().cloned();
        let state = TrainerState { step: self.step, total_steps: self.total_steps, position: self.pos, config: self.config_json()?, ledger };
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
        checkpoint::export(out, &self.adapter.export()?, &manifest)?;
        if let Some(ledger) = self.adapter.ledger().filter(|l| !l.steps.is_empty()) {
            let meta = meft_eval::results::RunMetadata {
                config_json: self.config_json()?,
                git_revision: meft_eval::results::git_revision(),
                description: "per-step MEFT transfer ledger of a `meft train` run".into(),
            };
            let path = out.join("ledger.h5");
            meft_eval::h5::write_tables(&path, &meta, &[super::ledger_table::ledger_table(ledger)])
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// What a run needs besides its adapter: the frozen model, the tokenised splits and their
/// frozen-prefix caches. Cheap to clone (tensors share storage).
#[derive(Clone)]
pub struct Inputs {
    model: Llama,
    text: Option<(meft_models::Tokenizer, meft_models::chat::ChatTemplate)>,
    data: Data,
    prefix: [FrozenPrefix; 2],
    key: String,
}

impl Inputs {
    /// Loads the model and data of `plan` and runs its frozen prefix once.
    pub fn load(plan: &TrainPlan) -> Result<Self> {
        let frozen = build::model(&plan.raw.model.name, plan.raw.seed)?;
        let data = load_data(plan, &frozen)?;
        let mut model = frozen.model;
        model.set_frozen_precision(plan.raw.model.precision)?;
        let chunk = 16;
        let prefix = [
            FrozenPrefix::build(&model, &data.train, plan.prefix_start, chunk)?,
            FrozenPrefix::build(&model, &data.held_out, plan.prefix_start, chunk)?,
        ];
        let text = frozen.text.map(|(tok, chat)| (tok, chat_for(plan, &chat)));
        Ok(Self { model, text, data, prefix, key: Self::key_of(plan) })
    }

    /// The frozen model.
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// The tokenizer and the chat template the data was rendered with (none for `tiny-random`).
    pub fn text(&self) -> Option<&(meft_models::Tokenizer, meft_models::chat::ChatTemplate)> {
        self.text.as_ref()
    }

    /// The model and frozen prefix the caches were built for (runs whose probes can share one
    /// prefix cache have the same key).
    pub fn prefix_key(&self) -> String {
        format!("{}|{}", self.key.split('|').next().unwrap_or(""), self.prefix[0].start())
    }

    /// Everything [`Self::load`] depends on.
    pub fn key_of(plan: &TrainPlan) -> String {
        let r = &plan.raw;
        let data = serde_json::to_string(&r.dataset).unwrap_or_default();
        let model = serde_json::to_string(&r.model).unwrap_or_default();
        format!("{model}|{}|{data}|{}|{}|{}|{:?}", r.seed, r.batch.max_length, r.batch.micro, plan.prefix_start, plan.loss_mask)
    }

    /// Training and held-out sequences.
    pub fn data(&self) -> &Data {
        &self.data
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
        let chat = chat_for(plan, chat);
        let examples = data::load_examples(cfg)?;
        let ids = examples.iter().map(|e| e.id().to_string()).collect::<Vec<_>>();
        (data::tokenise(&examples, tok, &chat, plan.loss_mask, plan.raw.batch.max_length)?, ids)
    };
    let (train, held_out) = data::split(seqs, &ids, cfg)?;
    if train.is_empty() {
        bail!("dataset `{}` has no training example after the split (held_out = {})", cfg.name, cfg.held_out);
    }
    Ok(Data { train, held_out })
}

/// The chat template of `plan`'s data: the model's, without its default system prompt when
/// `dataset.system_prompt = none`.
fn chat_for(plan: &TrainPlan, chat: &meft_models::chat::ChatTemplate) -> meft_models::chat::ChatTemplate {
    match plan.raw.dataset.system_prompt {
        super::config::SystemPrompt::Model => chat.clone(),
        super::config::SystemPrompt::None => chat.without_default_system(),
    }
}

/// The dropout seed of micro-batch `micro` of optimizer step `step` (a function of the position
/// alone, so a resumed run draws the masks an uninterrupted one would).
fn dropout_seed(seed: u64, step: u64, micro: usize) -> u64 {
    seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (step << 20) ^ micro as u64
}

/// A hook that copies the FFN input of some layers (real tokens only) and delegates to `inner`.
struct Recording<'a> {
    inner: &'a dyn AdapterHook,
    layers: Vec<usize>,
    /// Real tokens of each sequence of the current batch.
    lens: std::sync::Mutex<Vec<usize>>,
    seen: std::sync::Mutex<Vec<Vec<f32>>>,
}

impl AdapterHook for Recording<'_> {
    fn ffn(&self, layer: usize, x: &candle_core::Tensor) -> candle_core::Result<Option<candle_core::Tensor>> {
        self.record(layer, x)?;
        self.inner.ffn(layer, x)
    }

    fn linear(&self, layer: usize, site: meft_core::LinearSite, x: &candle_core::Tensor) -> candle_core::Result<Option<candle_core::Tensor>> {
        self.inner.linear(layer, site, x)
    }

    fn adapts_projections(&self, layer: usize) -> bool {
        self.inner.adapts_projections(layer)
    }

    fn ffn_output(&self, layer: usize, y: &candle_core::Tensor) -> candle_core::Result<Option<candle_core::Tensor>> {
        self.inner.ffn_output(layer, y)
    }

    fn adapts_ffn_output(&self, layer: usize) -> bool {
        self.inner.adapts_ffn_output(layer)
    }
}

impl Recording<'_> {
    fn record(&self, layer: usize, x: &candle_core::Tensor) -> candle_core::Result<()> {
        let Some(slot) = self.layers.iter().position(|&l| l == layer) else { return Ok(()) };
        let (b, s, d) = x.dims3()?;
        let rows = x.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let lens = self.lens.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..b {
            let len = lens.get(i).copied().unwrap_or(s).min(s);
            seen[slot].extend_from_slice(&rows[i * s * d..(i * s + len) * d]);
        }
        Ok(())
    }
}

/// Which split a prefix cache or an evaluation refers to (indexes `Trainer::prefix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SplitIndex {
    Train = 0,
    HeldOut = 1,
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

/// The micro-batches of a step (with their index in the step) that hold at least one sequence
/// with a loss target (`has_target(sequence)`); when none does, the first one, so the forward
/// reports the empty batch as an error.
fn live_micro_batches(batches: &[Vec<usize>], has_target: impl Fn(usize) -> bool) -> Vec<(usize, &Vec<usize>)> {
    let live: Vec<(usize, &Vec<usize>)> = batches.iter().enumerate().filter(|(_, idx)| idx.iter().any(|&i| has_target(i))).collect();
    if live.is_empty() { batches.iter().enumerate().take(1).collect() } else { live }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_without_loss_targets_are_skipped_unless_all_are_empty() {
        let batches = vec![vec![0, 1], vec![2, 3], vec![4, 5]];
        let live = live_micro_batches(&batches, |i| i == 0 || i == 5);
        assert_eq!(live.iter().map(|(m, _)| *m).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(live_micro_batches(&batches, |_| true).len(), 3);
        let none = live_micro_batches(&batches, |_| false);
        assert_eq!(none.iter().map(|(m, _)| *m).collect::<Vec<_>>(), [0], "all empty: the first goes on to the error");
    }
}
