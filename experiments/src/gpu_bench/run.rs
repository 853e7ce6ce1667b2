//! The measurement: one frozen model, three adapters trained one after another on the same
//! random tokens, every step timed with the device synchronised.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use meft_core::adapters::{Activation, ParallelAdapter};
use meft_core::optim::AdamWConfig;
use meft_models::Llama;
use meft_offload::{Category, FullOffloadAdapter, MeftAdapter, MeftConfig, OffloadDevice, OffloadPlan, random_arenas};
use rand::{Rng, SeedableRng};

use super::report::{BenchReport, ConfigRow, Setup, StepSample};
use super::{BenchConfig, model, sizing};
use crate::train::adapter::{DeviceTrainable, FullOffloadTrainable, MeftTrainable, TrainableAdapter};
use crate::train::memory::{activation_estimate, frozen_params};

/// One loaded model and what every adapter's run shares.
struct Bench<'a> {
    cfg: &'a BenchConfig,
    model: &'a Llama,
    base: &'a OffloadDevice,
    layers: Vec<usize>,
}

/// Runs the benchmark of `cfg`; a config that fails (e.g. device out of memory) becomes a row
/// with its error, and the others still run.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport> {
    cfg.validate()?;
    let base = OffloadDevice::new(cfg.device).context("opening the device (--device)")?;
    let before = base.driver_info()?;
    let (model, source) = model::load(cfg, &base)?;
    let c = model.config.clone();
    model::check_seq(&c, cfg.seq)?;
    let pa = sizing::pa_size(&c, cfg)?;
    let neurons = sizing::host_neurons(&c, frozen_params(&c), cfg.host_adapter);
    let meft = sizing::meft_config(&c, neurons, cfg)?;
    let bench = Bench { cfg, model: &model, base: &base, layers: (0..c.num_hidden_layers).collect() };
    let mut pa_row = bench.row("pa", |dev| bench.pa(pa.neurons, dev));
    pa_row.planned_device_bytes = Some(pa.plan.total_device);
    let (meft_row, probe) = bench.meft_row(&meft);
    let rows = vec![pa_row, meft_row, bench.row("full_offload", |dev| bench.full_offload(neurons, dev))];
    let setup = Setup::new(cfg, &c, source, before, &pa, &meft, probe);
    Ok(BenchReport::new(setup, rows, base.driver_info()?))
}

impl Bench<'_> {
    /// Trains the adapter `make` builds for warmup + steps steps; the row of its measured steps.
    fn row(&self, name: &'static str, make: impl FnOnce(&Arc<OffloadDevice>) -> Result<Box<dyn TrainableAdapter>>) -> ConfigRow {
        eprintln!("bench-gpu: {name}");
        let measured = self.device().and_then(|dev| {
            let mut adapter = make(&dev)?;
            let total = self.cfg.warmup + self.cfg.steps;
            let samples = (0..total).map(|i| self.step(adapter.as_mut(), &dev, i)).collect::<Result<Vec<_>>>()?;
            Ok((adapter.param_count(), samples[self.cfg.warmup..].to_vec()))
        });
        ConfigRow::new(name, measured, self.cfg.budget_bytes)
    }

    /// A fresh accounting handle on the loaded model's device, charged with the frozen weights
    /// and the model's activation estimate.
    fn device(&self) -> Result<Arc<OffloadDevice>> {
        let dev = Arc::new(self.base.same_device());
        let c = &self.model.config;
        let s = sizing::shape(c, self.cfg);
        dev.set_usage("frozen_weights", Category::FrozenWeights, frozen_params(c) * s.weight_bytes)?;
        dev.set_usage("activations.model_estimate", Category::Activations, activation_estimate(c, &s))?;
        Ok(dev)
    }

    /// Random token ids of step `index`, the same for every adapter.
    fn tokens(&self, index: usize) -> Result<Tensor> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.cfg.seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let vocab = self.model.config.vocab_size as u32;
        let ids: Vec<u32> = (0..self.cfg.batch * self.cfg.seq).map(|_| rng.random_range(0..vocab)).collect();
        Ok(Tensor::from_vec(ids, (self.cfg.batch, self.cfg.seq), self.base.candle())?)
    }

    /// forward → loss → backward → optimizer step, timed between two device synchronisations.
    fn step(&self, adapter: &mut dyn TrainableAdapter, dev: &OffloadDevice, index: usize) -> Result<StepSample> {
        let tokens = self.tokens(index)?;
        dev.synchronize()?;
        let start = Instant::now();
        let logits = self.model.forward(&tokens, adapter.hook())?;
        let loss = self.model.next_token_loss(&logits, &tokens, None)?;
        let after_forward = dev.driver_info()?;
        let grads = loss.backward()?;
        let after_backward = dev.driver_info()?;
        adapter.after_backward(&grads)?;
        drop(grads);
        let facts = adapter.step(AdamWConfig::default().lr)?;
        dev.synchronize()?;
        let seconds = start.elapsed().as_secs_f64();
        let sampled = [after_forward, after_backward].iter().flatten().map(|i| i.used_bytes()).max();
        let accounted = facts.device_peak_bytes.max(dev.report().peak_total);
        dev.reset_peak();
        let last = adapter.ledger().and_then(|l| l.steps.last());
        Ok(StepSample {
            seconds,
            loss: loss.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            h2d_bytes: facts.h2d_bytes,
            d2h_bytes: facts.d2h_bytes,
            route_input_bytes: last.map_or(0, |s| s.layers.iter().map(|l| l.route_input_bytes).sum()),
            max_union: last.and_then(|s| s.layers.iter().map(|l| l.union_rows / l.micro_batches.max(1)).max()),
            peak_accounted_bytes: accounted,
            peak_sampled_bytes: sampled,
        })
    }

    fn pa(&self, neurons: usize, dev: &Arc<OffloadDevice>) -> Result<Box<dyn TrainableAdapter>> {
        let d = self.model.config.hidden_size;
        let a = ParallelAdapter::new(&self.layers, neurons, d, Activation::Relu, DType::F32, dev.candle())?;
        crate::train::build::account(dev, &a)?;
        Ok(Box::new(DeviceTrainable::new(a, AdamWConfig::default(), |_, _| {})?))
    }

    fn meft(&self, meft: &MeftConfig, capacity: usize, dev: &Arc<OffloadDevice>) -> Result<Box<dyn TrainableAdapter>> {
        let plan = OffloadPlan::uniform(&self.layers, capacity, self.cfg.pre_look);
        let a = MeftAdapter::init(meft.clone(), plan, dev.clone(), self.cfg.seed)?;
        Ok(Box::new(MeftTrainable::new(a, dev.clone())))
    }

    /// MEFT with C sized from a probe step at C = M; the row and the probe's largest union.
    fn meft_row(&self, meft: &MeftConfig) -> (ConfigRow, Option<usize>) {
        eprintln!("bench-gpu: meft probe (C = M = {})", meft.neurons);
        let probe = self.device().and_then(|dev| {
            let mut a = self.meft(meft, meft.neurons, &dev)?;
            self.step(a.as_mut(), &dev, 0)?.max_union.context("the probe step recorded no union")
        });
        match probe {
            Ok(union) => {
                let capacity = sizing::capacity_for(union, meft.neurons);
                let mut row = self.row("meft", |dev| self.meft(meft, capacity, dev));
                row.capacity = Some(capacity);
                (row, Some(union))
            }
            Err(e) => (ConfigRow::new("meft", Err(e.context("the probe step at C = M")), self.cfg.budget_bytes), None),
        }
    }

    fn full_offload(&self, neurons: usize, dev: &Arc<OffloadDevice>) -> Result<Box<dyn TrainableAdapter>> {
        let d = self.model.config.hidden_size;
        let arenas = random_arenas(d, neurons, &self.layers, self.cfg.seed)?;
        let a = FullOffloadAdapter::new(d, Activation::Relu, AdamWConfig::default(), arenas, dev.clone())?;
        Ok(Box::new(FullOffloadTrainable::new(a, dev.clone())))
    }
}
