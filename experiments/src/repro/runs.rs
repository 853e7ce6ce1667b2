//! Training runs of the reproduction: what to run ([`RunSpec`]), what came out ([`RunOutcome`]),
//! and the [`Runner`] that executes a batch of runs on parallel workers, reusing finished ones.
//!
//! - **Workers.** Independent runs share nothing but the frozen model, so `workers` runs proceed
//!   at once, each on its own one-thread rayon pool (on 2 cores two single-thread runs finish
//!   about 1.5× sooner than one two-thread run after the other: small products scale poorly
//!   across threads). Every run computes alone on its thread, so its numbers do not depend on
//!   how many workers there are.
//! - **Reuse.** A finished run's outcome is saved as `runs/outcomes/<key>.json` with the code
//!   revision; a later pipeline at the same revision and config reads it instead of training
//!   again (an interrupted `full` profile resumes run by run; a run interrupted in the middle
//!   resumes from its last checkpoint).
//! - **Inputs.** Runs on the same model, data, batch shape and layers share one [`Inputs`]
//!   (tokenised splits and frozen-prefix caches), built once, on every thread, before the
//!   workers start.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::evaluate::{self, GenScores, GenSet};
use super::probes::{ProbeFacts, Probes};
use crate::train::config::MethodKind;
use crate::train::{Inputs, RawConfig, TrainPlan, Trainer};

/// One training run to do (or the base model to evaluate: `method = none`).
#[derive(Clone)]
pub struct RunSpec {
    /// Unique, readable name (`table1/nq_open/MEFT/seed0/lr1e-3`); also the output directory.
    pub key: String,
    /// Task column it belongs to (`nq_open`, `tool`, `math`, ...).
    pub task: String,
    /// Method label for tables (`MEFT`, `PA-2×`, `LoRA-FFN`, ...).
    pub label: String,
    /// The trainer configuration (output directory filled in by the runner).
    pub raw: RawConfig,
    /// Score the forgetting probes after training.
    pub probes: bool,
    /// Generation-based evaluations after training.
    pub generation: Vec<GenSet>,
}

/// One point of a learning curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Epochs completed.
    pub epoch: f64,
    /// Teacher-forced greedy exact match on the trained facts.
    pub train_em: f64,
    /// The same on the held-out facts.
    pub held_out_em: f64,
    /// Held-out loss.
    pub held_out_loss: f64,
}

/// What a MEFT run's ledger says, averaged over its steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeftFacts {
    /// Fraction of per-token selections dropped because the union exceeded the working set.
    pub dropped_fraction: f64,
    /// Mean |U| per layer and micro-batch.
    pub mean_union_rows: f64,
    /// Host→device plus device→host adapter bytes per optimizer step (all layers).
    pub bytes_per_step: f64,
    /// What full offload would move per step (all layers).
    pub full_offload_bytes_per_step: f64,
    /// Routing time per 1,000 tokens and layer, milliseconds (measured).
    pub route_ms_per_1k_tokens: f64,
}

/// The result of one [`RunSpec`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOutcome {
    /// The spec's key.
    pub key: String,
    /// Task column.
    pub task: String,
    /// Method label.
    pub label: String,
    /// Dataset name of the training data.
    pub dataset: String,
    /// Seed (data order and initialisation).
    pub seed: u64,
    /// Peak learning rate (`None` for the base model).
    pub lr: Option<f64>,
    /// The adapter's size, as a label.
    pub size: String,
    /// Trainable scalars (host rows included for MEFT).
    pub trainable_params: u64,
    /// Adapter bytes on the device: parameters, gradients, optimizer state (MEFT: working set
    /// and gates).
    pub device_adapter_bytes: u64,
    /// The whole device plan (frozen weights, activation estimate, adapter).
    pub device_total_bytes: u64,
    /// Optimizer steps.
    pub steps: u64,
    /// Learning curve (one point per evaluation).
    pub curve: Vec<CurvePoint>,
    /// The last evaluation.
    pub final_point: CurvePoint,
    /// Per trained fact, in split order: teacher-forced exact match at the end.
    pub train_exact: Vec<bool>,
    /// The same for the held-out facts.
    pub held_out_exact: Vec<bool>,
    /// Ledger facts of MEFT runs.
    pub meft: Option<MeftFacts>,
    /// Forgetting probes, when asked for.
    pub probes: Option<ProbeFacts>,
    /// Generation-based scores.
    pub generation: Vec<GenScores>,
    /// Median training throughput, tokens per second (padding included).
    pub tokens_per_s: f64,
    /// Seconds for training and every evaluation.
    pub wall_seconds: f64,
    /// The optimizer step the run resumed from (0: trained from scratch in the invocation that
    /// produced this outcome; more: `wall_seconds` covers only the steps after it).
    #[serde(default)]
    pub resumed_from_step: u64,
    /// Where the run's metrics, checkpoints and adapter are.
    pub output_dir: PathBuf,
    /// Code revision that produced it.
    pub git_revision: String,
}

/// How the runs asked for so far were satisfied, so that a wall time can be read honestly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTally {
    /// Runs trained from step 0 (the base model: evaluated).
    pub fresh: usize,
    /// Runs that continued from a checkpoint left by an earlier invocation.
    pub resumed: usize,
    /// Runs whose saved outcome (same revision and config) was read instead.
    pub reused: usize,
}

impl RunTally {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: RunTally) -> RunTally {
        RunTally { fresh: self.fresh - earlier.fresh, resumed: self.resumed - earlier.resumed, reused: self.reused - earlier.reused }
    }

    /// "3 run from scratch, 1 resumed from checkpoints, 2 reused".
    pub fn describe(&self) -> String {
        format!("{} run from scratch, {} resumed from checkpoints, {} reused", self.fresh, self.resumed, self.reused)
    }
}

/// Executes run specs; see the module docs.
pub struct Runner {
    runs_dir: PathBuf,
    workers: usize,
    tally: Mutex<RunTally>,
    inputs: Mutex<HashMap<String, Arc<Mutex<Option<Inputs>>>>>,
    probes: Mutex<HashMap<String, Arc<Mutex<Option<Arc<Probes>>>>>>,
    probe_pool: usize,
}

impl Runner {
    /// A runner writing under `runs_dir` with `workers` parallel runs (≥ 1), screening
    /// `probe_pool` questions for the forgetting probes.
    pub fn new(runs_dir: &Path, workers: usize, probe_pool: usize) -> Self {
        Self {
            runs_dir: runs_dir.to_path_buf(),
            workers: workers.max(1),
            tally: Mutex::default(),
            inputs: Mutex::new(HashMap::new()),
            probes: Mutex::new(HashMap::new()),
            probe_pool,
        }
    }

    /// Runs every spec (reusing saved outcomes) and returns the outcomes in spec order.
    pub fn run_all(&self, specs: &[RunSpec]) -> Result<Vec<RunOutcome>> {
        let mut outcomes: Vec<Option<RunOutcome>> = specs.iter().map(|s| self.saved(s)).collect();
        let mut todo: Vec<usize> = (0..specs.len()).filter(|&i| outcomes[i].is_none()).collect();
        todo.sort_by(|&a, &b| cost(&specs[b]).total_cmp(&cost(&specs[a])));
        let reused = specs.len() - todo.len();
        self.tally.lock().unwrap_or_else(|e| e.into_inner()).reused += reused;
        eprintln!("[runs] {} runs ({reused} reused), {} workers", specs.len(), self.workers.min(todo.len().max(1)));
        self.prepare(specs, &todo)?;
        let queue = Mutex::new(todo.into_iter().collect::<VecDeque<_>>());
        let results: Mutex<Vec<(usize, Result<RunOutcome>)>> = Mutex::new(Vec::new());
        let (start, total) = (Instant::now(), queue.lock().map_or(0, |q| q.len()));
        std::thread::scope(|scope| {
            for _ in 0..self.workers.min(total.max(1)) {
                scope.spawn(|| self.worker(specs, &queue, &results, (start, total)));
            }
        });
        for (i, r) in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
            outcomes[i] = Some(r.with_context(|| format!("run {}", specs[i].key))?);
        }
        outcomes.into_iter().enumerate().map(|(i, o)| o.with_context(|| format!("run {} produced nothing", specs[i].key))).collect()
    }

    fn worker(
        &self,
        specs: &[RunSpec],
        queue: &Mutex<VecDeque<usize>>,
        results: &Mutex<Vec<(usize, Result<RunOutcome>)>>,
        (start, total): (Instant, usize),
    ) {
        let pool = match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
            Ok(p) => p,
            Err(e) => {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                if let Some(i) = next {
                    results.lock().unwrap_or_else(|e| e.into_inner()).push((i, Err(anyhow::anyhow!("building a worker pool: {e}"))));
                }
                return;
            }
        };
        loop {
            let Some(i) = queue.lock().ok().and_then(|mut q| q.pop_front()) else { return };
            let t = Instant::now();
            let r = pool.install(|| self.run_one(&specs[i]));
            let mut all = results.lock().unwrap_or_else(|e| e.into_inner());
            all.push((i, r));
            let done = all.len();
            let eta = start.elapsed().as_secs_f64() / done as f64 * (total - done) as f64;
            eprintln!("[runs {done}/{total}] {} in {:.0} s; ETA {:.1} min", specs[i].key, t.elapsed().as_secs_f64(), eta / 60.0);
        }
    }

    /// Builds the shared inputs (and forgetting probes) of the runs `todo` on the whole thread
    /// pool before the one-thread workers start: built inside a worker, a long task's frozen
    /// prefix took one thread for minutes while the other workers waited for it.
    fn prepare(&self, specs: &[RunSpec], todo: &[usize]) -> Result<()> {
        let started = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for &i in todo {
            let spec = &specs[i];
            let plan = plan_of(spec).with_context(|| format!("run {}", spec.key))?;
            if seen.insert(Inputs::key_of(&plan)) {
                let inputs = self.inputs_for(&plan).with_context(|| format!("inputs of run {}", spec.key))?;
                if spec.probes {
                    self.probes_for(&inputs).with_context(|| format!("forgetting probes of run {}", spec.key))?;
                }
            }
        }
        if !seen.is_empty() {
            eprintln!("[runs] inputs of {} data sets ready in {:.0} s", seen.len(), started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Every run asked of this runner so far, by how it was satisfied.
    pub fn tally(&self) -> RunTally {
        *self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `runs/outcomes/<hash>.json`: runs with the same configuration (whatever experiment asks
    /// for them) share one outcome and one training directory.
    fn outcome_path(&self, spec: &RunSpec) -> PathBuf {
        self.runs_dir.join("outcomes").join(format!("{}.json", config_hash(spec)))
    }

    /// The saved outcome of `spec`, if it was produced by this revision with this config.
    fn saved(&self, spec: &RunSpec) -> Option<RunOutcome> {
        let path = self.outcome_path(spec);
        let saved: SavedOutcome = meft_eval::results::read_json(&path).ok()?;
        let current = serde_json::to_string(&self.configured(spec).raw).ok()?;
        let mut outcome = saved.outcome;
        // The same configuration asked for under another name: report it under this one.
        (outcome.key, outcome.task, outcome.label) = (spec.key.clone(), spec.task.clone(), spec.label.clone());
        (saved.config == current && outcome.git_revision == meft_eval::results::git_revision()).then_some(outcome)
    }

    /// `spec` with its output directory set.
    fn configured(&self, spec: &RunSpec) -> RunSpec {
        let mut s = spec.clone();
        s.raw.output_dir = self.runs_dir.join("train").join(config_hash(spec));
        s
    }

    fn run_one(&self, spec: &RunSpec) -> Result<RunOutcome> {
        let spec = self.configured(spec);
        let start = Instant::now();
        let training = spec.raw.method != MethodKind::None;
        let plan = plan_of(&spec)?;
        let inputs = self.inputs_for(&plan)?;
        let size = if training { plan.method.size_label() } else { "-".into() };
        let device_adapter_bytes = if training { plan.memory.adapter_working_set + plan.memory.device_optimizer } else { 0 };
        let device_total_bytes = plan.memory.total_device;
        let steps_per_epoch = (inputs.data().train.len() as f64 / (plan.raw.batch.micro * plan.raw.batch.accumulation) as f64).ceil().max(1.0);
        let mut trainer = Trainer::from_inputs(plan, inputs.clone())?;
        let resumed_from_step = trainer.step();
        {
            let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
            match resumed_from_step {
                0 => tally.fresh += 1,
                _ => tally.resumed += 1,
            }
        }
        let summary_steps = if training { trainer.run()?.steps } else { 0 };
        let last = match trainer.last_evaluation().filter(|_| spec.raw.eval_examples == 0) {
            Some(e) => e.clone(),
            None => trainer.evaluate_now(0)?,
        };
        let final_point = CurvePoint {
            epoch: summary_steps as f64 / steps_per_epoch,
            train_em: last.train_em.unwrap_or(0.0),
            held_out_em: last.held_out_em.unwrap_or(0.0),
            held_out_loss: last.held_out_loss.unwrap_or(f64::NAN),
        };
        let (curve, tokens_per_s) = if training { read_curve(&spec.raw.output_dir, steps_per_epoch)? } else { (vec![final_point], 0.0) };
        let probes = match spec.probes {
            true => Some(self.probes_for(&inputs)?.score(&trainer, &inputs)?),
            false => None,
        };
        let generation = spec.generation.iter().map(|g| evaluate::generate(&trainer, &inputs, g)).collect::<Result<Vec<_>>>()?;
        let outcome = RunOutcome {
            key: spec.key.clone(),
            task: spec.task.clone(),
            label: spec.label.clone(),
            dataset: spec.raw.dataset.name.clone(),
            seed: spec.raw.seed,
            lr: training.then_some(spec.raw.optim.lr),
            size,
            trainable_params: if training { trainer.adapter().param_count() } else { 0 },
            device_adapter_bytes,
            device_total_bytes,
            steps: summary_steps,
            curve,
            final_point,
            train_exact: last.train_exact,
            held_out_exact: last.held_out_exact,
            meft: trainer.adapter().ledger().filter(|l| !l.steps.is_empty()).map(|l| meft_facts(l, spec.raw.meft.top_k)),
            probes,
            generation,
            tokens_per_s,
            wall_seconds: start.elapsed().as_secs_f64(),
            resumed_from_step,
            output_dir: spec.raw.output_dir.clone(),
            git_revision: meft_eval::results::git_revision(),
        };
        let saved = SavedOutcome { config: serde_json::to_string(&spec.raw)?, outcome: outcome.clone() };
        let path = self.outcome_path(&spec);
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        meft_eval::results::write_json(&path, &saved).with_context(|| format!("writing {}", path.display()))?;
        Ok(outcome)
    }

    /// The finished run `spec` opened again (the trainer resumes its last checkpoint), with its
    /// inputs: for studies of the trained adapter.
    pub fn reopen(&self, spec: &RunSpec) -> Result<(Trainer, Inputs)> {
        let spec = self.configured(spec);
        let cfg = crate::train::build::model_config(&spec.raw.model.name)?;
        let plan = TrainPlan::new(spec.raw.clone(), &cfg)?;
        let inputs = self.inputs_for(&plan)?;
        Ok((Trainer::from_inputs(plan, inputs.clone())?, inputs))
    }

    /// The shared inputs of `plan` (built by the first run that needs them).
    fn inputs_for(&self, plan: &TrainPlan) -> Result<Inputs> {
        let key = Inputs::key_of(plan);
        let slot = self.inputs.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default().clone();
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(Inputs::load(plan)?);
        }
        slot.clone().context("inputs were not built")
    }

    /// The forgetting probes for runs on `inputs`' model and frozen prefix.
    fn probes_for(&self, inputs: &Inputs) -> Result<Arc<Probes>> {
        let slot = self.probes.lock().unwrap_or_else(|e| e.into_inner()).entry(inputs.prefix_key()).or_default().clone();
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(Arc::new(Probes::build(inputs, self.probe_pool)?));
        }
        slot.clone().context("probes were not built")
    }
}

/// The trainer plan of `spec`; the base model (`method = none`) is planned as a zero-initialised
/// PA, whose output is exactly zero, evaluated untrained.
fn plan_of(spec: &RunSpec) -> Result<TrainPlan> {
    let cfg = crate::train::build::model_config(&spec.raw.model.name)?;
    let mut raw = spec.raw.clone();
    if raw.method == MethodKind::None {
        raw.method = MethodKind::Pa;
    }
    Ok(TrainPlan::new(raw, &cfg)?)
}

/// FNV-1a of the run's configuration (output directory aside) and its evaluations, in hex.
fn config_hash(spec: &RunSpec) -> String {
    let mut raw = spec.raw.clone();
    raw.output_dir = PathBuf::new();
    let sets: Vec<(String, usize, String)> =
        spec.generation.iter().map(|g| (g.name.clone(), g.examples.len(), super::evaluate::decoding_label(&g.decode))).collect();
    let text = format!("{}|{}|{:?}", serde_json::to_string(&raw).unwrap_or_default(), spec.probes, sets);
    format!("{:016x}", meft_eval::split::fnv1a64(text.as_bytes()))
}

/// What `runs/outcomes/<hash>.json` holds.
#[derive(Serialize, Deserialize)]
struct SavedOutcome {
    config: String,
    outcome: RunOutcome,
}

/// A rough relative cost, to start the longest runs first.
fn cost(spec: &RunSpec) -> f64 {
    let method = match spec.raw.method {
        MethodKind::FullFt => 4.0,
        MethodKind::Meft => 1.8 + spec.raw.meft.neurons as f64 / 8192.0,
        MethodKind::None => 0.1,
        _ => 1.0,
    };
    let data = if spec.raw.dataset.limit == 0 { 1000.0 } else { spec.raw.dataset.limit as f64 };
    method * spec.raw.epochs.max(1) as f64 * data * spec.raw.batch.max_length as f64 + 1e4 * spec.generation.len() as f64
}

/// The evaluations in `metrics.jsonl` as a curve, and the median training tokens/s.
fn read_curve(dir: &Path, steps_per_epoch: f64) -> Result<(Vec<CurvePoint>, f64)> {
    let path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (mut curve, mut speeds) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let m: crate::train::Metrics = serde_json::from_str(line).with_context(|| format!("a line of {}", path.display()))?;
        speeds.push(m.tokens_per_s);
        if let (Some(train_em), Some(held_out_em)) = (m.train_em, m.held_out_em) {
            curve.push(CurvePoint { epoch: m.step as f64 / steps_per_epoch, train_em, held_out_em, held_out_loss: m.eval_loss.unwrap_or(f64::NAN) });
        }
    }
    speeds.sort_by(f64::total_cmp);
    Ok((curve, speeds.get(speeds.len() / 2).copied().unwrap_or(0.0)))
}

/// Averages of a MEFT run's ledger.
fn meft_facts(ledger: &meft_offload::Ledger, top_k: usize) -> MeftFacts {
    let layers: Vec<&meft_offload::LayerRecord> = ledger.steps.iter().flat_map(|s| &s.layers).collect();
    let sum = |f: &dyn Fn(&meft_offload::LayerRecord) -> f64| layers.iter().map(|l| f(l)).sum::<f64>();
    let steps = ledger.steps.len().max(1) as f64;
    let micro = sum(&|l| l.micro_batches as f64).max(1.0);
    let tokens = sum(&|l| l.tokens as f64).max(1.0);
    let top_k = top_k.max(1) as f64;
    MeftFacts {
        dropped_fraction: sum(&|l| l.drops as f64) / (tokens * top_k),
        mean_union_rows: sum(&|l| l.union_rows as f64) / micro,
        bytes_per_step: sum(&|l| (l.h2d_bytes + l.d2h_bytes) as f64) / steps,
        full_offload_bytes_per_step: sum(&|l| l.full_offload_bytes as f64) / steps,
        route_ms_per_1k_tokens: sum(&|l| l.host.route_ns as f64) / 1e6 / tokens * 1000.0,
    }
}
