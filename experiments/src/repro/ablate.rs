//! `meft ablate <knob> --values a,b,c`: sweep one MEFT knob on experiment 1's setup.
//!
//! Knobs: `experts` (N, must divide M), `k` (top-K per token), `p` (experts probed per token),
//! `c` (device working-set rows per layer; 0 fits the budget). Every value trains MEFT on the
//! first dataset of the profile's capacity setup under the same device budget and learning rate,
//! and the sweep writes `results/ablate-<knob>.json`, `figures/ablate-<knob>.{png,svg}` and a
//! markdown table on stdout.

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::capacity::{self, RunResult};
use super::output::{figure_paths, md_table};
use super::{Context, plot};
use crate::train::config::MethodKind;

/// The MEFT knob an ablation varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Knob {
    /// Number of Key-Experts N.
    Experts,
    /// Neurons kept per token (top-K).
    K,
    /// Experts probed per token (top-P).
    P,
    /// Working-set rows per layer on the device (C).
    C,
}

impl Knob {
    fn name(self) -> &'static str {
        match self {
            Self::Experts => "experts",
            Self::K => "k",
            Self::P => "p",
            Self::C => "c",
        }
    }
}

/// One value's outcome.
#[derive(Debug, Clone, Serialize)]
struct Point {
    value: usize,
    run: RunResult,
}

/// Runs the sweep; returns the markdown table.
pub fn ablate(ctx: &Context, knob: Knob, values: &[usize], lr: f64) -> Result<String> {
    if values.is_empty() {
        bail!("--values is empty; give e.g. --values 1,4,16,64");
    }
    let s = capacity::scale(ctx.profile, &ctx.source);
    let dataset = s.datasets.first().copied().context("the profile has no dataset")?;
    let (raw, cfg, inputs) = capacity::budgeted(ctx, &s, dataset)?;
    let mut points = Vec::new();
    for &value in values {
        let mut r = raw.clone();
        (r.method, r.optim.lr) = (MethodKind::Meft, lr);
        match knob {
            Knob::Experts => r.meft.experts = value,
            Knob::K => r.meft.top_k = value,
            Knob::P => r.meft.top_p = value,
            Knob::C => r.meft.capacity = value,
        }
        if knob != Knob::Experts && r.meft.top_p > r.meft.experts {
            r.meft.top_p = r.meft.experts;
        }
        r.output_dir = ctx.runs_dir.join(format!("ablate-{}/{dataset}/{value}", knob.name()));
        let run = capacity::train_one(r, &cfg, &inputs, dataset).with_context(|| format!("{} = {value}", knob.name()))?;
        points.push(Point { value, run });
    }
    let stem = format!("ablate-{}", knob.name());
    let series = vec![
        plot::Series { label: "EM trained facts".into(), points: points.iter().map(|p| (p.value as f64, p.run.train_em)).collect() },
        plot::Series { label: "EM held-out".into(), points: points.iter().map(|p| (p.value as f64, p.run.held_out_em)).collect() },
    ];
    let scale = if values.iter().all(|&v| v > 0) { plot::AxisScale::Log } else { plot::AxisScale::Linear };
    let figures = plot::line_chart(&ctx.figures_dir(), &stem, &format!("MEFT ablation: {}", knob.name()), knob.name(), "exact match", &series, scale)?;
    let path = ctx.results_dir().join(format!("{stem}.json"));
    std::fs::create_dir_all(ctx.results_dir())?;
    let json = serde_json::json!({ "knob": knob, "lr": lr, "dataset": dataset, "points": points, "figures": figure_paths(&figures) });
    meft_eval::results::write_json(&path, &json).with_context(|| format!("writing {}", path.display()))?;
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| vec![p.value.to_string(), p.run.size.clone(), format!("{:.3}", p.run.train_em), format!("{:.3}", p.run.held_out_em), format!("{:.0}", p.run.wall_seconds)])
        .collect();
    Ok(md_table(&[knob.name(), "MEFT size", "EM trained", "EM held-out", "wall s"], &rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repro::Profile;

    #[test]
    fn a_synthetic_sweep_writes_its_table_and_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = Context::synthetic_in(dir.path(), Profile::Smoke, "test");
        let table = ablate(&ctx, Knob::K, &[1, 4], 1e-2).expect("sweep");
        assert_eq!(table.lines().count(), 4, "{table}");
        assert!(ctx.results_dir().join("ablate-k.json").is_file());
        assert!(ctx.figures_dir().join("ablate-k.svg").is_file());
        let err = ablate(&ctx, Knob::Experts, &[7], 1e-2).unwrap_err();
        assert!(format!("{err:#}").contains("experts"), "{err:#}");
    }
}
