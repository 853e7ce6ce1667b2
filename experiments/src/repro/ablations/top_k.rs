//! Fig. 6: the neurons kept per token, trained. MEFT with M host neurons and the working set as
//! large as M (nothing dropped, so only the sparsity varies), K from 8 to 128, and dense: every
//! token uses every neuron (K = M, all experts probed), the Parallel Adapter of the same size.

use anyhow::Result;
use serde::Serialize;

use super::{AblationBase, em_of};
use crate::repro::output::{f64_column, figure_paths, md_table, scale_line, u64_column, write_h5};
use crate::repro::runs::{RunOutcome, Runner};
use crate::repro::{Context, ExperimentId, Profile, Section, plot};

/// The paper's Fig. 6 (NQ EM against K at M = 4096, LLaMA-7B); `None` = dense.
const PAPER: [(Option<usize>, &str); 5] = [(Some(4), "0.387"), (Some(16), "0.421"), (Some(64), "0.411"), (Some(128), "0.425"), (None, "0.407")];

#[derive(Debug, Clone, Serialize)]
struct Results {
    base: AblationBase,
    neurons: usize,
    ks: Vec<usize>,
    runs: Vec<RunOutcome>,
}

fn label(k: usize, neurons: usize) -> String {
    if k >= neurons { "dense (K = M)".into() } else { format!("K = {k}") }
}

/// Runs the K ablation.
pub fn run(ctx: &Context, runner: &Runner) -> Result<Section> {
    let base = super::base(ctx, runner)?;
    let s = base.scale.clone();
    let neurons = s.meft_neurons;
    let ks: Vec<usize> = match ctx.profile {
        Profile::Smoke => vec![s.top_k / 2, s.top_k, neurons],
        Profile::Default => vec![16, 64, 128, neurons],
        Profile::Full => vec![4, 8, 16, 32, 64, 128, neurons],
    };
    let mut specs = Vec::new();
    for &k in &ks {
        let (k, p) = if k >= neurons { (neurons, s.experts) } else { (k, s.top_p) };
        specs.extend(base.specs("top_k", &label(k, neurons), &base.meft(neurons, k, s.experts, p, true)));
    }
    let runs = runner.run_all(&specs)?;
    let r = Results { base, neurons, ks, runs };
    let rows: Vec<Vec<String>> =
        r.ks.iter()
            .map(|&k| {
                let l = label(k, r.neurons);
                let o = r.runs.iter().find(|o| o.label == l);
                let paper = PAPER
                    .iter()
                    .find(|(pk, _)| match pk {
                        Some(pk) => *pk == k,
                        None => k >= r.neurons,
                    })
                    .map_or("–", |p| p.1);
                vec![
                    l.clone(),
                    em_of(&r.runs, &l, |o| o.final_point.train_em).cell(),
                    format!("{:.3}", em_of(&r.runs, &l, |o| o.final_point.held_out_em).mean),
                    o.map_or("-".into(), |o| format!("{:.0}", o.tokens_per_s)),
                    o.and_then(|o| o.meft).map_or("-".into(), |m| format!("{:.0}", m.mean_union_rows)),
                    paper.into(),
                ]
            })
            .collect();
    let mut md = format!("{}\n\n", scale_line(ctx));
    md += &format!(
        "**Setup.** MEFT with M = {} neurons per layer on the last {} layers, {} facts of {}, {} epochs, learning rate {:e}, {} Key-Experts with {} \
         probed (all of them for dense); the working set holds all M rows, so no selection is dropped and only the sparsity varies (this isolates K from \
         the memory budget, which Table 1 applies). {} seed(s). **Measured:** trained-fact EM, held-out EM, training tokens/s on one thread, mean |U| \
         per layer and micro-batch.\n\n",
        r.neurons,
        s.adapted_layers,
        s.facts,
        r.base.dataset,
        s.epochs,
        r.base.lr,
        s.experts,
        s.top_p,
        r.base.seeds.len()
    );
    md += &md_table(&["K", "EM trained", "EM held-out", "train tokens/s", "mean |U|", "paper NQ EM (Fig. 6, M = 4096)"], &rows);
    md += "\nThe paper's claim: sparsity costs little (K = 64: 0.411 against dense 0.407).\n";
    let points: Vec<(f64, f64)> =
        r.ks.iter().map(|&k| (k.min(r.neurons) as f64, em_of(&r.runs, &label(k, r.neurons), |o| o.final_point.train_em).mean)).collect();
    let names = plot::line_chart(
        &ctx.figures_dir(),
        "top_k",
        "EM on trained facts vs neurons kept per token (K = M: dense)",
        "K",
        "EM on trained facts",
        &[plot::Series { label: format!("MEFT M = {}", r.neurons), points }],
        plot::AxisScale::Log,
    )?;
    let h5 = write_h5(ctx, "top_k", "Fig. 6: EM against K", &serde_json::json!({ "neurons": r.neurons, "ks": r.ks }), &[h5_table(&r.runs)])?;
    md += &format!("Per-run data: `{h5}`.\n");
    let results = serde_json::to_value(&r)?;
    Ok(Section {
        id: ExperimentId::TopK,
        title: "4. Neurons kept per token K, trained (Fig. 6)".into(),
        markdown: md,
        figures: figure_paths(&names),
        results,
        wall_seconds: 0.0,
    })
}

fn h5_table(runs: &[RunOutcome]) -> meft_eval::h5::Table {
    meft_eval::h5::Table {
        name: "runs".into(),
        description: "one row per run of the K ablation".into(),
        columns: vec![
            meft_eval::h5::Column::new("run", "1", "K", meft_eval::h5::ColumnValues::Text(runs.iter().map(|r| r.label.clone()).collect())),
            u64_column("seed", "1", "seed", runs.iter().map(|r| r.seed).collect()),
            f64_column("train_em", "1", "trained-fact EM", runs.iter().map(|r| r.final_point.train_em).collect()),
            f64_column("held_out_em", "1", "held-out EM", runs.iter().map(|r| r.final_point.held_out_em).collect()),
            f64_column("tokens_per_s", "1/s", "median training tokens per second (one thread)", runs.iter().map(|r| r.tokens_per_s).collect()),
        ],
    }
}
