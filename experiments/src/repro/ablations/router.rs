//! The router ablations, trained: Fig. 4 (MEFT without Key-Experts: one expert holding all M
//! neurons, i.e. exact top-K over every key) and Fig. 7 (the number of experts N, with the
//! fraction of keys scored per token held at a quarter, P = N / 4). Each point is a trained run
//! with the working set as large as M (nothing dropped); the trained router is then opened again
//! and its recall@K measured against exact retrieval over all M trained keys, beside the same
//! recall for the keys and gates it started from.

use anyhow::Result;
use serde::Serialize;

use super::{AblationBase, em_of};
use crate::repro::output::{f64_column, figure_paths, md_table, scale_line, u64_column, write_h5};
use crate::repro::runs::{RunOutcome, RunSpec, Runner};
use crate::repro::trained::{RouterQuality, TrainedRouting};
use crate::repro::{Context, ExperimentId, Profile, Section, plot};

/// Trained facts whose FFN inputs the recall is measured on.
const RECALL_SEQUENCES: usize = 64;

/// One trained router.
#[derive(Debug, Clone, Serialize)]
struct Point {
    label: String,
    experts: usize,
    top_p: usize,
    /// Recall and routing time of the trained router (seed 0).
    trained: RouterQuality,
    /// The same before training.
    initial: RouterQuality,
}

#[derive(Debug, Clone, Serialize)]
struct Results {
    base: AblationBase,
    points: Vec<Point>,
    runs: Vec<RunOutcome>,
}

/// Trains `grid` (label, N, P) and measures each router.
fn train_and_measure(base: &AblationBase, runner: &Runner, what: &str, grid: &[(String, usize, usize)]) -> Result<Results> {
    let s = &base.scale;
    let mut specs: Vec<RunSpec> = Vec::new();
    for (label, n, p) in grid {
        specs.extend(base.specs(what, label, &base.meft(s.meft_neurons, s.top_k, *n, *p, true)));
    }
    let runs = runner.run_all(&specs)?;
    let mut points = Vec::new();
    for (label, n, p) in grid {
        let Some(spec) = specs.iter().find(|sp| &sp.label == label) else { continue };
        let routing = TrainedRouting::load(runner, spec, RECALL_SEQUENCES)?;
        let (trained, initial) = (routing.quality()?, routing.initial(spec.raw.seed)?.quality()?);
        points.push(Point { label: label.clone(), experts: *n, top_p: *p, trained, initial });
    }
    Ok(Results { base: base.clone(), points, runs })
}

fn rows(r: &Results, paper: impl Fn(usize) -> &'static str) -> Vec<Vec<String>> {
    r.points
        .iter()
        .map(|p| {
            let o = r.runs.iter().find(|o| o.label == p.label);
            vec![
                p.label.clone(),
                format!("{} / {}", p.experts, p.top_p),
                em_of(&r.runs, &p.label, |o| o.final_point.train_em).cell(),
                format!("{:.3}", em_of(&r.runs, &p.label, |o| o.final_point.held_out_em).mean),
                format!("{:.3}", p.trained.recall),
                format!("{:.3}", p.initial.recall),
                format!("{:.2}", p.trained.route_ms_per_1k),
                o.and_then(|o| o.meft).map_or("-".into(), |m| format!("{:.2}", m.route_ms_per_1k_tokens)),
                o.map_or("-".into(), |o| format!("{:.0}", o.tokens_per_s)),
                paper(p.experts).into(),
            ]
        })
        .collect()
}

const HEAD: [&str; 10] = [
    "router",
    "N / P",
    "EM trained",
    "EM held-out",
    "recall@K trained",
    "recall@K at init",
    "route ms / 1k tokens (re-timed)",
    "route ms / 1k tokens (in training)",
    "train tokens/s",
    "paper",
];

fn setup_text(ctx: &Context, r: &Results, what: &str) -> String {
    let s = &r.base.scale;
    format!(
        "{}\n\n**Setup.** MEFT with M = {} neurons per layer on the last {} layers, K = {}, {} facts of {}, {} epochs, learning rate {:e}, working set = M \
         (nothing dropped), {} seed(s). {what} **Measured:** EM; recall@K of the router against the exact top-K over all M keys under the same gated \
         score, on the FFN inputs of {RECALL_SEQUENCES} trained facts computed through the trained adapter, with the trained keys and gates and with the \
         ones the run started from; routing time re-timed on those inputs (one thread) and as the training ledger recorded it.\n\n",
        scale_line(ctx),
        s.meft_neurons,
        s.adapted_layers,
        s.top_k,
        s.facts,
        r.base.dataset,
        s.epochs,
        r.base.lr,
        r.base.seeds.len()
    )
}

/// Fig. 4: Key-Experts against exact top-K over all keys.
pub fn run_key_experts(ctx: &Context, runner: &Runner) -> Result<Section> {
    let base = super::base(ctx, runner)?;
    let s = &base.scale;
    let grid = vec![(format!("Key-Experts (N = {})", s.experts), s.experts, s.top_p), ("w/o Key-Experts (N = 1)".to_string(), 1, 1)];
    let r = train_and_measure(&base, runner, "key_experts", &grid)?;
    let mut md = setup_text(ctx, &r, "Without Key-Experts every token scores all M keys (one expert, P = 1): recall is 1 by construction.");
    md += &md_table(&HEAD, &rows(&r, |_| "–"));
    md += "\nThe paper's claim (Fig. 4): Key-Experts keeps the EM of exact retrieval at a fraction of the scoring cost (O(d·√M) instead of O(d·M) per token); the spec carries no numbers for Fig. 4.\n";
    let series: Vec<plot::Series> = r.points.iter().map(|p| plot::Series { label: p.label.clone(), points: curve(&r.runs, &p.label) }).collect();
    let names = plot::line_chart(
        &ctx.figures_dir(),
        "key_experts",
        "EM on trained facts by epoch: Key-Experts vs exact top-K",
        "epoch",
        "EM on trained facts",
        &series,
        plot::AxisScale::Linear,
    )?;
    finish(ctx, r, md, names, ExperimentId::KeyExperts, "3. MEFT without Key-Experts (Fig. 4)")
}

/// Fig. 7: the number of experts.
pub fn run_experts(ctx: &Context, runner: &Runner) -> Result<Section> {
    let base = super::base(ctx, runner)?;
    let m = base.scale.meft_neurons;
    let counts: Vec<usize> = match ctx.profile {
        Profile::Smoke => vec![4, 8],
        Profile::Default => vec![8, 32, 128, 512],
        Profile::Full => vec![8, 16, 32, 64, 128, 256, 512, 1024],
    };
    let grid: Vec<(String, usize, usize)> = counts.into_iter().filter(|n| m % n == 0).map(|n| (format!("N = {n}"), n, (n / 4).max(1))).collect();
    let r = train_and_measure(&base, runner, "experts", &grid)?;
    let paper = |n: usize| match n {
        8 => "0.317 (NQ, N = 8, M = 6400)",
        320 => "0.327 (NQ, N = 320)",
        _ => "–",
    };
    let mut md =
        setup_text(ctx, &r, "P = N / 4, so every router scores a quarter of the keys per token and only the granularity of the experts varies.");
    md += &md_table(&HEAD, &rows(&r, paper));
    md += "\nThe paper's claim (Fig. 7): the expert count matters little for end-task EM (0.317 with 8 experts, 0.327 with 320, M = 6400); more experts slightly better.\n";
    let em: Vec<(f64, f64)> = r.points.iter().map(|p| (p.experts as f64, em_of(&r.runs, &p.label, |o| o.final_point.train_em).mean)).collect();
    let recall: Vec<(f64, f64)> = r.points.iter().map(|p| (p.experts as f64, p.trained.recall)).collect();
    let init: Vec<(f64, f64)> = r.points.iter().map(|p| (p.experts as f64, p.initial.recall)).collect();
    let series = [
        plot::Series { label: "EM on trained facts".into(), points: em },
        plot::Series { label: "recall@K, trained router".into(), points: recall },
        plot::Series { label: "recall@K, at initialisation".into(), points: init },
    ];
    let names = plot::line_chart(
        &ctx.figures_dir(),
        "experts",
        "Number of Key-Experts (P = N/4), trained",
        "experts N",
        "EM / recall@K",
        &series,
        plot::AxisScale::Log,
    )?;
    finish(ctx, r, md, names, ExperimentId::Experts, "5. Number of Key-Experts, trained (Fig. 7)")
}

fn curve(runs: &[RunOutcome], label: &str) -> Vec<(f64, f64)> {
    runs.iter().find(|o| o.label == label).map_or(Vec::new(), |o| o.curve.iter().map(|c| (c.epoch, c.train_em)).collect())
}

fn finish(ctx: &Context, r: Results, mut md: String, names: Vec<String>, id: ExperimentId, title: &str) -> Result<Section> {
    let table = meft_eval::h5::Table {
        name: "routers".into(),
        description: "one row per trained router (seed 0)".into(),
        columns: vec![
            meft_eval::h5::Column::new("router", "1", "label", meft_eval::h5::ColumnValues::Text(r.points.iter().map(|p| p.label.clone()).collect())),
            u64_column("experts", "1", "N", r.points.iter().map(|p| p.experts as u64).collect()),
            u64_column("top_p", "1", "P", r.points.iter().map(|p| p.top_p as u64).collect()),
            f64_column("recall_trained", "1", "recall@K of the trained router", r.points.iter().map(|p| p.trained.recall).collect()),
            f64_column("recall_initial", "1", "recall@K before training", r.points.iter().map(|p| p.initial.recall).collect()),
            f64_column(
                "route_ms_per_1k",
                "ms",
                "routing time per 1000 tokens and layer",
                r.points.iter().map(|p| p.trained.route_ms_per_1k).collect(),
            ),
            f64_column(
                "train_em",
                "1",
                "trained-fact EM",
                r.points.iter().map(|p| em_of(&r.runs, &p.label, |o| o.final_point.train_em).mean).collect(),
            ),
        ],
    };
    let h5 = write_h5(ctx, id.name(), title, &serde_json::to_value(&r.base)?, &[table])?;
    md += &format!("Per-run data: `{h5}`.\n");
    let results = serde_json::to_value(&r)?;
    Ok(Section { id, title: title.into(), markdown: md, figures: figure_paths(&names), results, wall_seconds: 0.0 })
}
