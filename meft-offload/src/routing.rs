//! Routing jobs and the pre-look worker thread (spec §5 steps 2 and 5).
//!
//! A [`RouteJob`] is everything routing for one layer needs from the device: the host copy of the
//! routing input x (`T×d`, the FFN input of layer ℓ−p) and its gate scores `G_ℓ·x` (`T×N`, computed
//! on the device). [`route_job`] runs the Key-Experts router on the host against the layer's keys in
//! the host store. With pre-look distance p ≥ 1 and [`PrefetchMode::Worker`](crate::PrefetchMode)
//! jobs run on a [`Prefetcher`] thread while the caller keeps computing layers ℓ−p..ℓ−1; with
//! `Inline` they run on the calling thread when layer ℓ is reached. Both call the same function on
//! the same inputs, so their results are identical.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use meft_router::{ExpertLayout, GateSource, RouteConfig, RouteInputs, RouteScratch, Routing, Rows, route};

use crate::error::{OffloadError, Result};
use crate::host::HostStore;

/// Inputs of one routing call.
#[derive(Debug)]
pub(crate) struct RouteJob {
    /// The adapted layer to route for.
    pub layer: usize,
    /// Dispatch sequence number (stale results are discarded).
    pub seq: u64,
    /// Tokens T.
    pub tokens: usize,
    /// Routing input, `T×d`.
    pub x: Vec<f32>,
    /// Gate scores, `T×N`.
    pub gate_scores: Vec<f32>,
}

/// A routing result and the host time it took.
#[derive(Debug)]
pub(crate) struct Routed {
    pub routing: Routing,
    pub route_ns: u64,
}

/// What routing reads besides the job: the host store and per-layer router configs.
#[derive(Debug)]
pub(crate) struct RouteContext {
    pub store: Arc<HostStore>,
    pub layout: ExpertLayout,
    pub configs: BTreeMap<usize, RouteConfig>,
    pub hidden: usize,
}

/// Routes one job on the calling thread.
pub(crate) fn route_job(ctx: &RouteContext, scratch: &mut RouteScratch, job: RouteJob) -> Result<Routed> {
    let start = Instant::now();
    let arena = ctx.store.layer(job.layer).ok_or_else(|| missing(job.layer))?;
    let cfg = ctx.configs.get(&job.layer).ok_or_else(|| missing(job.layer))?;
    let arena = arena.read().unwrap_or_else(|e| e.into_inner());
    let inputs = RouteInputs {
        x: Rows::new(&job.x, job.tokens, ctx.hidden)?,
        keys: arena.keys()?,
        gates: GateSource::Scores(Rows::new(&job.gate_scores, job.tokens, ctx.layout.experts())?),
    };
    let routing = route(&inputs, &ctx.layout, cfg, scratch)?;
    Ok(Routed { routing, route_ns: start.elapsed().as_nanos() as u64 })
}

fn missing(layer: usize) -> OffloadError {
    OffloadError::Sequence(format!("routing requested for layer {layer}, which is not adapted"))
}

/// A finished job: layer, dispatch sequence number, result.
type Finished = (usize, u64, Result<Routed>);

/// The pre-look worker: one host thread routing jobs in submission order.
#[derive(Debug)]
pub(crate) struct Prefetcher {
    jobs: Option<Sender<RouteJob>>,
    done: Mutex<Receiver<Finished>>,
    /// Results received while waiting for another layer: layer → (seq, result).
    ready: Mutex<BTreeMap<usize, (u64, Result<Routed>)>>,
    handle: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Starts the worker thread.
    pub fn spawn(ctx: Arc<RouteContext>) -> Result<Self> {
        let (job_tx, job_rx) = channel::<RouteJob>();
        let (done_tx, done_rx) = channel();
        let handle = std::thread::Builder::new()
            .name("meft-prefetch".into())
            .spawn(move || {
                let mut scratch = RouteScratch::default();
                for job in job_rx {
                    let (layer, seq) = (job.layer, job.seq);
                    if done_tx.send((layer, seq, route_job(&ctx, &mut scratch, job))).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| OffloadError::Sequence(format!("could not start the prefetch thread: {e}")))?;
        Ok(Self { jobs: Some(job_tx), done: Mutex::new(done_rx), ready: Mutex::new(BTreeMap::new()), handle: Some(handle) })
    }

    /// Queues a job.
    pub fn submit(&self, job: RouteJob) -> Result<()> {
        let tx = self.jobs.as_ref().ok_or_else(|| OffloadError::Sequence("prefetch worker stopped".into()))?;
        tx.send(job).map_err(|_| OffloadError::Sequence("prefetch worker stopped".into()))
    }

    /// Blocks until the result of dispatch `seq` for `layer` arrives; older results are dropped.
    pub fn wait(&self, layer: usize, seq: u64) -> Result<Routed> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some((s, result)) = ready.remove(&layer)
                && s == seq
            {
                return result;
            }
            let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
            let (l, s, result) = done.recv().map_err(|_| OffloadError::Sequence("prefetch worker stopped".into()))?;
            ready.insert(l, (s, result));
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
