//! Checkpoints: one safetensors file per saved step holding the adapter parameters and every
//! optimizer state, with the trainer state (step, data position, config, the offload ledger) as
//! JSON metadata; written atomically, the last K kept. The exported adapter is
//! `adapter.safetensors` (parameters only) plus `adapter.json` (what to rebuild it from).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::data::DataPosition;
use super::state::{StateMap, write_atomic};

/// Everything besides tensors that a resume needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    /// Total optimizer steps of the run.
    pub total_steps: u64,
    /// Next data position.
    pub position: DataPosition,
    /// The raw config as JSON (a resume with another config is refused).
    pub config: String,
    /// The transfer ledger of the steps so far (offloaded adapters; absent in checkpoints
    /// written before it was saved, which then resume with an empty ledger).
    #[serde(default)]
    pub ledger: Option<meft_offload::Ledger>,
}

const PREFIX: &str = "ckpt-";

/// The checkpoint directory of a run.
pub fn dir(output: &Path) -> PathBuf {
    output.join("checkpoints")
}

fn path_of(output: &Path, step: u64) -> PathBuf {
    dir(output).join(format!("{PREFIX}{step:08}.safetensors"))
}

/// Saved steps, ascending.
pub fn list(output: &Path) -> Result<Vec<u64>> {
    let d = dir(output);
    if !d.exists() {
        return Ok(Vec::new());
    }
    let mut steps = Vec::new();
    for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_prefix(PREFIX).and_then(|r| r.strip_suffix(".safetensors")) {
            steps.extend(n.parse::<u64>().ok());
        }
    }
    steps.sort_unstable();
    Ok(steps)
}

/// Writes the checkpoint of `state.step` and deletes all but the last `keep` ones.
pub fn save(output: &Path, tensors: &StateMap, state: &TrainerState, keep: usize) -> Result<PathBuf> {
    let meta = HashMap::from([("trainer".to_string(), serde_json::to_string(state)?)]);
    let path = path_of(output, state.step);
    write_atomic(&path, &tensors.to_safetensors(meta)?)?;
    let steps = list(output)?;
    for old in &steps[..steps.len().saturating_sub(keep)] {
        std::fs::remove_file(path_of(output, *old)).with_context(|| format!("removing checkpoint {old}"))?;
    }
    Ok(path)
}

/// Reads the checkpoint of `step`.
pub fn load(output: &Path, step: u64) -> Result<(StateMap, TrainerState)> {
    let path = path_of(output, step);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let json = meta.metadata().as_ref().and_then(|m| m.get("trainer")).with_context(|| format!("{} has no trainer metadata", path.display()))?;
    let state = serde_json::from_str(json).with_context(|| format!("{}: bad trainer metadata", path.display()))?;
    Ok((StateMap::from_safetensors(&bytes)?, state))
}

/// What `adapter.json` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterManifest {
    /// Format version.
    pub format: u32,
    /// The model the adapter was trained on.
    pub model: String,
    /// The experiment config (TOML text) it came from.
    pub config_toml: String,
    /// Trainable parameters.
    pub params: u64,
}

/// Writes `adapter.safetensors` and `adapter.json` into `dir`.
pub fn export(dir: &Path, tensors: &StateMap, manifest: &AdapterManifest) -> Result<()> {
    write_atomic(&dir.join("adapter.safetensors"), &tensors.to_safetensors(HashMap::new())?)?;
    write_atomic(&dir.join("adapter.json"), serde_json::to_string_pretty(manifest)?.as_bytes())
}

/// Reads an exported adapter directory.
pub fn import(dir: &Path) -> Result<(StateMap, AdapterManifest)> {
    let json = std::fs::read_to_string(dir.join("adapter.json")).with_context(|| format!("reading {}/adapter.json", dir.display()))?;
    let manifest = serde_json::from_str(&json).with_context(|| format!("{}/adapter.json is not an adapter manifest", dir.display()))?;
    let bytes = std::fs::read(dir.join("adapter.safetensors")).with_context(|| format!("reading {}/adapter.safetensors", dir.display()))?;
    Ok((StateMap::from_safetensors(&bytes)?, manifest))
}
