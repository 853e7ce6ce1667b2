//! Devices of the offload engine, and the byte accounting of everything resident on them.
//!
//! - [`DeviceKind::Cpu`]: tensors on the CPU, usage recorded but unlimited.
//! - [`DeviceKind::Cuda`]: a CUDA device; without the `cuda` feature constructing one returns
//!   `meft_core::Error::NotCompiledWithCuda`.
//! - [`DeviceKind::Simulated`]: for CPU-only machines. Tensors live on the CPU, but every resident
//!   allocation is charged by [`Category`] against a byte budget; exceeding it is
//!   [`OffloadError::BudgetExceeded`], naming the largest consumers and the knobs to turn.
//!
//! Accounting is by named consumer: [`OffloadDevice::set_usage`] sets (not adds) what a consumer
//! holds, so a per-step consumer (a layer's activations) re-charges each step and
//! [`OffloadDevice::release`] frees it. Peak bytes — in total, per category, and the mix at the
//! total peak — are recorded until [`OffloadDevice::reset_peak`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::error::{OffloadError, Result};

/// What a device allocation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// The frozen base model's weights.
    FrozenWeights,
    /// Activations kept for backward (model and adapters).
    Activations,
    /// MEFT working sets: the bundled adapter rows copied down for this micro-batch.
    WorkingSets,
    /// Device-resident trainable parameters (gates, dense adapters) and their optimizer state.
    DeviceOptimizer,
}

impl Category {
    const ALL: [Category; 4] = [Self::FrozenWeights, Self::Activations, Self::WorkingSets, Self::DeviceOptimizer];

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::FrozenWeights => "frozen weights",
            Self::Activations => "activations",
            Self::WorkingSets => "working sets",
            Self::DeviceOptimizer => "device parameters and optimizer state",
        })
    }
}

/// Which device to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// The CPU, without a budget.
    Cpu,
    /// A CUDA device (needs the `cuda` feature).
    Cuda {
        /// Device ordinal.
        ordinal: usize,
    },
    /// CPU tensors with a simulated device byte budget.
    Simulated {
        /// Budget in bytes.
        budget_bytes: u64,
    },
}

/// Bytes per [`Category`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CategoryBytes {
    /// [`Category::FrozenWeights`].
    pub frozen_weights: u64,
    /// [`Category::Activations`].
    pub activations: u64,
    /// [`Category::WorkingSets`].
    pub working_sets: u64,
    /// [`Category::DeviceOptimizer`].
    pub device_optimizer: u64,
}

impl CategoryBytes {
    fn from_array(a: [u64; 4]) -> Self {
        Self { frozen_weights: a[0], activations: a[1], working_sets: a[2], device_optimizer: a[3] }
    }

    /// Sum over categories.
    pub fn total(&self) -> u64 {
        self.frozen_weights + self.activations + self.working_sets + self.device_optimizer
    }
}

/// A snapshot of a device's accounting.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemoryReport {
    /// The device kind.
    pub kind: DeviceKind,
    /// The budget, if simulated.
    pub budget_bytes: Option<u64>,
    /// Bytes held now.
    pub in_use: CategoryBytes,
    /// Highest total ever held (since the last reset).
    pub peak_total: u64,
    /// Per-category bytes at the moment of the total peak.
    pub at_peak: CategoryBytes,
    /// Highest bytes held per category (each at its own moment).
    pub peak_by_category: CategoryBytes,
}

#[derive(Debug, Default)]
struct Accounts {
    consumers: BTreeMap<String, (Category, u64)>,
    in_use: [u64; 4],
    peak_total: u64,
    at_peak: [u64; 4],
    peak_by_category: [u64; 4],
}

impl Accounts {
    fn largest(&self, n: usize) -> String {
        let mut v: Vec<_> = self.consumers.iter().collect();
        v.sort_by(|a, b| b.1.1.cmp(&a.1.1).then(a.0.cmp(b.0)));
        let list: Vec<String> = v.iter().take(n).map(|(k, (c, b))| format!("{k} ({c}): {b} B")).collect();
        if list.is_empty() { "none".into() } else { list.join(", ") }
    }
}

/// A device plus the accounting of what is resident on it.
#[derive(Debug)]
pub struct OffloadDevice {
    kind: DeviceKind,
    candle: candle_core::Device,
    accounts: Mutex<Accounts>,
}

impl OffloadDevice {
    /// Opens a device.
    ///
    /// # Errors
    /// `Cuda` without the `cuda` feature: `meft_core::Error::NotCompiledWithCuda`.
    pub fn new(kind: DeviceKind) -> Result<Self> {
        let candle = match kind {
            DeviceKind::Cpu | DeviceKind::Simulated { .. } => candle_core::Device::Cpu,
            DeviceKind::Cuda { ordinal } => cuda_device(ordinal)?,
        };
        Ok(Self { kind, candle, accounts: Mutex::new(Accounts::default()) })
    }

    /// The device kind.
    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// The candle device tensors are created on.
    pub fn candle(&self) -> &candle_core::Device {
        &self.candle
    }

    fn budget(&self) -> Option<u64> {
        match self.kind {
            DeviceKind::Simulated { budget_bytes } => Some(budget_bytes),
            DeviceKind::Cpu | DeviceKind::Cuda { .. } => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Accounts> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the bytes held by consumer `label` (replacing its previous usage).
    ///
    /// # Errors
    /// [`OffloadError::BudgetExceeded`] if the new total exceeds a simulated budget; the previous
    /// usage is then kept.
    pub fn set_usage(&self, label: &str, category: Category, bytes: u64) -> Result<()> {
        let mut acc = self.lock();
        let (old_cat, old) = acc.consumers.get(label).copied().unwrap_or((category, 0));
        let total: u64 = acc.in_use.iter().sum::<u64>() - old;
        if let Some(budget) = self.budget()
            && total + bytes > budget
        {
            return Err(OffloadError::BudgetExceeded {
                label: label.to_string(),
                category,
                requested: bytes.saturating_sub(old),
                free: budget.saturating_sub(total + old),
                budget,
                largest: acc.largest(4),
            });
        }
        acc.in_use[old_cat.index()] -= old;
        acc.in_use[category.index()] += bytes;
        acc.consumers.insert(label.to_string(), (category, bytes));
        let c = category.index();
        acc.peak_by_category[c] = acc.peak_by_category[c].max(acc.in_use[c]);
        let now: u64 = acc.in_use.iter().sum();
        if now > acc.peak_total {
            acc.peak_total = now;
            acc.at_peak = acc.in_use;
        }
        Ok(())
    }

    /// Frees everything consumer `label` holds (no-op if it holds nothing).
    pub fn release(&self, label: &str) {
        let mut acc = self.lock();
        if let Some((cat, bytes)) = acc.consumers.remove(label) {
            acc.in_use[cat.index()] -= bytes;
        }
    }

    /// Bytes consumer `label` holds.
    pub fn usage(&self, label: &str) -> u64 {
        self.lock().consumers.get(label).map_or(0, |c| c.1)
    }

    /// Restarts peak tracking from the current usage.
    pub fn reset_peak(&self) {
        let mut acc = self.lock();
        acc.peak_total = acc.in_use.iter().sum();
        acc.at_peak = acc.in_use;
        acc.peak_by_category = acc.in_use;
    }

    /// Another handle on the same device (tensors of both are compatible) with its own, empty
    /// accounting: several adapters measured one after another on one loaded model.
    pub fn same_device(&self) -> Self {
        Self { kind: self.kind, candle: self.candle.clone(), accounts: Mutex::new(Accounts::default()) }
    }

    /// Waits until the device has finished all queued work (a no-op on the CPU).
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.candle.synchronize()?)
    }

    /// What the driver says about the device: `None` off CUDA.
    pub fn driver_info(&self) -> Result<Option<DriverInfo>> {
        match self.kind {
            DeviceKind::Cuda { .. } => driver_info(&self.candle).map(Some),
            DeviceKind::Cpu | DeviceKind::Simulated { .. } => Ok(None),
        }
    }

    /// The current accounting.
    pub fn report(&self) -> MemoryReport {
        let acc = self.lock();
        MemoryReport {
            kind: self.kind,
            budget_bytes: self.budget(),
            in_use: CategoryBytes::from_array(acc.in_use),
            peak_total: acc.peak_total,
            at_peak: CategoryBytes::from_array(acc.at_peak),
            peak_by_category: CategoryBytes::from_array(acc.peak_by_category),
        }
    }

    /// Every category with its current bytes (for logs).
    pub fn usage_by_category(&self) -> Vec<(Category, u64)> {
        let acc = self.lock();
        Category::ALL.iter().map(|&c| (c, acc.in_use[c.index()])).collect()
    }
}

/// A CUDA device as its driver reports it, at one moment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriverInfo {
    /// Device name (e.g. `NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Driver API version as `major.minor` (e.g. `13.0`).
    pub driver_api: String,
    /// Free device bytes.
    pub free_bytes: u64,
    /// Total device bytes.
    pub total_bytes: u64,
}

impl DriverInfo {
    /// Bytes in use on the whole device (every process and the context included).
    pub fn used_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.free_bytes)
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<candle_core::Device> {
    use candle_core::cuda_backend::cudarc;
    // SAFETY: only tries to dlopen the driver library and reports whether that worked.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(OffloadError::plan(
            "device",
            "is CUDA but libcuda.so.1 could not be loaded",
            "run on a machine with the NVIDIA driver (tools/gpu/run.sh sets the library paths), or use --device cpu",
        ));
    }
    Ok(candle_core::Device::new_cuda(ordinal)?)
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize) -> Result<candle_core::Device> {
    Err(meft_core::Error::NotCompiledWithCuda { op: "OffloadDevice::new(Cuda)" }.into())
}

#[cfg(feature = "cuda")]
fn driver_info(device: &candle_core::Device) -> Result<DriverInfo> {
    use candle_core::cuda_backend::cudarc;
    let wrap = |e: cudarc::driver::DriverError| OffloadError::Candle(candle_core::Error::wrap(e));
    let ctx = device.as_cuda_device()?.cuda_stream().context().clone();
    let (free, total) = ctx.mem_get_info().map_err(wrap)?;
    let mut version: std::ffi::c_int = 0;
    // SAFETY: the driver library is loaded (a CUDA device exists) and `version` is a valid out-pointer.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }.result().map_err(wrap)?;
    Ok(DriverInfo {
        name: ctx.name().map_err(wrap)?,
        driver_api: format!("{}.{}", version / 1000, version % 1000 / 10),
        free_bytes: free as u64,
        total_bytes: total as u64,
    })
}

#[cfg(not(feature = "cuda"))]
fn driver_info(_device: &candle_core::Device) -> Result<DriverInfo> {
    Err(meft_core::Error::NotCompiledWithCuda { op: "OffloadDevice::driver_info" }.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_enforced_and_names_consumers() {
        let dev = OffloadDevice::new(DeviceKind::Simulated { budget_bytes: 1000 }).unwrap();
        dev.set_usage("model", Category::FrozenWeights, 600).unwrap();
        dev.set_usage("ws.layer0", Category::WorkingSets, 300).unwrap();
        let err = dev.set_usage("acts", Category::Activations, 200).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("model (frozen weights): 600 B"), "{msg}");
        assert!(msg.contains("capacity C"), "{msg}");
        assert_eq!(dev.report().in_use.total(), 900);
        dev.set_usage("ws.layer0", Category::WorkingSets, 100).unwrap();
        dev.set_usage("acts", Category::Activations, 200).unwrap();
        let r = dev.report();
        assert_eq!(r.peak_total, 900);
        assert_eq!(r.at_peak.working_sets, 300);
        dev.release("acts");
        assert_eq!(dev.report().in_use.total(), 700);
        assert_eq!(dev.report().peak_by_category.activations, 200);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_feature_is_a_typed_error() {
        let r = OffloadDevice::new(DeviceKind::Cuda { ordinal: 0 });
        assert!(matches!(r, Err(OffloadError::Core(meft_core::Error::NotCompiledWithCuda { .. }))));
    }
}
