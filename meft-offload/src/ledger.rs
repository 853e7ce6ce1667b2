//! The transfer ledger (spec §6): per step and layer, what moved, how long the host spent, and what
//! the device held. Always on, serde-serialisable, written with every run.
//!
//! Link time on a CPU-only machine is *modelled* from [`LinkModel`] (default PCIe 4.0 x16: 25 GB/s
//! and 10 µs per transfer) and labelled [`TimeSource::Modelled`]; the host phase times are measured.

use crate::device::MemoryReport;
use crate::error::{OffloadError, Result};

/// Whether a time was measured or derived from a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeSource {
    /// Computed from bandwidth and latency.
    Modelled,
    /// Timed on real hardware.
    Measured,
}

/// Host↔device link: `time(bytes) = latency + bytes / bandwidth` per transfer.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinkModel {
    /// Bandwidth in bytes per second.
    pub bandwidth_bytes_per_s: f64,
    /// Fixed cost per transfer in seconds.
    pub latency_s: f64,
}

impl Default for LinkModel {
    /// PCIe 4.0 x16: 25 GB/s, 10 µs.
    fn default() -> Self {
        Self { bandwidth_bytes_per_s: 25e9, latency_s: 10e-6 }
    }
}

impl LinkModel {
    /// Modelled time of one transfer of `bytes` (0 for an empty transfer).
    pub fn transfer_s(&self, bytes: u64) -> f64 {
        if bytes == 0 { 0.0 } else { self.latency_s + bytes as f64 / self.bandwidth_bytes_per_s }
    }

    /// Checks that bandwidth is positive and latency non-negative, both finite.
    pub fn validate(&self) -> Result<()> {
        if !(self.bandwidth_bytes_per_s.is_finite() && self.bandwidth_bytes_per_s > 0.0) {
            return Err(OffloadError::plan("link.bandwidth_bytes_per_s", "must be finite and > 0", "e.g. 25e9"));
        }
        if !(self.latency_s.is_finite() && self.latency_s >= 0.0) {
            return Err(OffloadError::plan("link.latency_s", "must be finite and ≥ 0", "e.g. 10e-6"));
        }
        Ok(())
    }
}

/// Host time per phase, nanoseconds (summed over the step's micro-batches).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PhaseTimes {
    /// Routing compute (on the worker thread when prefetching).
    pub route_ns: u64,
    /// Time the forward waited for a prefetched routing result.
    pub route_wait_ns: u64,
    /// Gathering the union's rows into the staging buffer.
    pub gather_ns: u64,
    /// Copying the staging buffer into the device working set.
    pub h2d_ns: u64,
    /// Copying working-set gradients back to the host.
    pub d2h_ns: u64,
    /// Scatter-adding row gradients into the accumulators.
    pub scatter_ns: u64,
    /// Host AdamW over the layer's rows.
    pub adamw_ns: u64,
}

/// One adapted layer in one optimizer step.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerRecord {
    /// Model layer index.
    pub layer: usize,
    /// Micro-batches accumulated into this step.
    pub micro_batches: usize,
    /// Tokens T, summed over micro-batches.
    pub tokens: usize,
    /// Union sizes |U|, summed over micro-batches.
    pub union_rows: usize,
    /// Per-token selections dropped for capacity, summed.
    pub drops: usize,
    /// Host→device bytes of adapter rows (|U|·2d·4 per micro-batch).
    pub h2d_bytes: u64,
    /// Device→host bytes of row gradients (|U|·2d·4 per micro-batch).
    pub d2h_bytes: u64,
    /// Device→host bytes of routing inputs (FFN input x and gate scores).
    pub route_input_bytes: u64,
    /// Host phase times (measured).
    pub host: PhaseTimes,
    /// Link time of this layer's transfers.
    pub link_time_s: f64,
    /// Whether `link_time_s` is modelled or measured.
    pub link_time_source: TimeSource,
    /// Bytes a full offload (ZeRO-Offload style) would move for this layer in this step: every
    /// adapter parameter down and every gradient up, `2·M·2d·4`.
    pub full_offload_bytes: u64,
}

impl LayerRecord {
    /// An empty record for `layer`.
    pub fn new(layer: usize, link_time_source: TimeSource, full_offload_bytes: u64) -> Self {
        Self {
            layer,
            micro_batches: 0,
            tokens: 0,
            union_rows: 0,
            drops: 0,
            h2d_bytes: 0,
            d2h_bytes: 0,
            route_input_bytes: 0,
            host: PhaseTimes::default(),
            link_time_s: 0.0,
            link_time_source,
            full_offload_bytes,
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Every parameter was updated.
    Applied,
    /// A non-finite gradient was seen: nothing was updated, accumulators were cleared.
    SkippedNonFinite,
}

/// One optimizer step.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    /// Step number (1-based).
    pub step: u64,
    /// How the step ended.
    pub status: StepStatus,
    /// Per adapted layer.
    pub layers: Vec<LayerRecord>,
    /// Device accounting at the end of the step (peaks since the previous step).
    pub device: MemoryReport,
}

impl StepRecord {
    /// Host→device plus device→host adapter bytes over all layers.
    pub fn moved_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.h2d_bytes + l.d2h_bytes).sum()
    }

    /// Full-offload bytes over all layers.
    pub fn full_offload_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.full_offload_bytes).sum()
    }

    /// A compact multi-line table for logs.
    pub fn table(&self) -> String {
        let mut s = format!(
            "step {} ({:?}) device peak {} B [weights {} / activations {} / working sets {} / device optimizer {}]\n\
             layer      T      U  drops     H2D B     D2H B  link s (modelled)  route/gather/h2d/d2h/scatter/adamw µs\n",
            self.step,
            self.status,
            self.device.peak_total,
            self.device.at_peak.frozen_weights,
            self.device.at_peak.activations,
            self.device.at_peak.working_sets,
            self.device.at_peak.device_optimizer,
        );
        for l in &self.layers {
            let h = &l.host;
            s += &format!(
                "{:5} {:6} {:6} {:6} {:9} {:9} {:18.3e}  {}/{}/{}/{}/{}/{}\n",
                l.layer,
                l.tokens,
                l.union_rows,
                l.drops,
                l.h2d_bytes,
                l.d2h_bytes,
                l.link_time_s,
                h.route_ns / 1000,
                h.gather_ns / 1000,
                h.h2d_ns / 1000,
                h.d2h_ns / 1000,
                h.scatter_ns / 1000,
                h.adamw_ns / 1000
            );
        }
        s += &format!(
            "moved {} B vs full offload {} B ({:.2}× less)\n",
            self.moved_bytes(),
            self.full_offload_bytes(),
            self.full_offload_bytes() as f64 / self.moved_bytes().max(1) as f64
        );
        s
    }
}

/// All steps of a run.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ledger {
    /// Finished steps.
    pub steps: Vec<StepRecord>,
}

impl Ledger {
    /// JSON text of the whole ledger.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| OffloadError::Sequence(format!("ledger serialisation: {e}")))
    }
}
