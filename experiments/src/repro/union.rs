//! Experiment 3, "Union size vs batch size" (the paper's Fig. 8 analogue): how many distinct
//! adapter rows U a micro-batch selects — the rows MEFT must move to the device — as the batch
//! grows, against the M rows a dense adapter (or full offload) needs.
//!
//! Measured on the captured real FFN inputs ([`capture`]): consecutive sequences are grouped into
//! micro-batches of B sequences (no padding; T = their real tokens), every token is routed top-K
//! by Key-Experts (default layout N = 4·√M, P = 8, gated, no capacity cut), and |U| is averaged
//! over the micro-batches and the captured layers.

use anyhow::Result;
use meft_eval::h5::Table;
use meft_router::{
    ExpertLayout, GateSource, KeysView, RouteConfig, RouteInputs, RouteScratch, Rows, init_gates,
    route,
};
use serde::Serialize;

use super::capture::{self, Captured};
use super::output::{f64_column, figure_paths, md_table, scale_line, u64_column, write_h5};
use super::plot::{AxisScale, Series, line_chart};
use super::{Context, ExperimentId, Profile, Section};

/// The paper's setting for its 0.56× traffic figure: M = 6144, batch 2 × 256 tokens, K = 64,
/// moving 0.56× the adapter per step (H2D + D2H), i.e. |U| / M ≈ 0.28.
const PAPER_UNION_FRACTION: f64 = 0.28;

/// The sweep of one profile.
struct Sizes {
    prompts: usize,
    neurons: usize,
    top_ks: Vec<usize>,
    batches: Vec<usize>,
    /// Micro-batches averaged per batch size (at most).
    max_groups: usize,
}

fn sizes(profile: Profile) -> Sizes {
    let batches = vec![1, 2, 4, 8, 16, 32];
    match profile {
        Profile::Smoke => Sizes {
            prompts: 12,
            neurons: 256,
            top_ks: vec![16, 64],
            batches: vec![1, 2, 4, 8],
            max_groups: 4,
        },
        Profile::Default => Sizes {
            prompts: 160,
            neurons: 6400,
            top_ks: vec![16, 64],
            batches,
            max_groups: 16,
        },
        Profile::Full => Sizes {
            prompts: 600,
            neurons: 6400,
            top_ks: vec![16, 64, 128],
            batches,
            max_groups: 64,
        },
    }
}

/// One (K, B) point averaged over micro-batches and layers.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Neurons kept per token K.
    pub top_k: usize,
    /// Sequences per micro-batch B.
    pub batch: usize,
    /// Micro-batches averaged.
    pub groups: usize,
    /// Mean tokens per micro-batch T.
    pub tokens: f64,
    /// Mean distinct rows |U|.
    pub union: f64,
    /// Mean |U| / M.
    pub union_fraction: f64,
    /// Mean min(M, T·K): the most a micro-batch could select.
    pub bound: f64,
}

/// Mean |U| over micro-batches of `batch` sequences (at most `max_groups`) at every layer.
pub fn union_at(
    c: &Captured,
    neurons: usize,
    top_k: usize,
    batch: usize,
    max_groups: usize,
    seed: u64,
) -> Result<Point> {
    let d = c.hidden;
    let layout = ExpertLayout::with_default_factor(neurons)?;
    let cfg = RouteConfig::new(8.min(layout.experts()), top_k.min(neurons));
    let groups = (c.seq_lens.len() / batch).min(max_groups).max(1);
    let (mut union, mut tokens, mut bound, mut n) = (0.0, 0.0, 0.0, 0.0);
    let mut scratch = RouteScratch::default();
    for (li, &layer) in c.layers.iter().enumerate() {
        let keys = capture::meft_keys(neurons, d, seed, layer)?;
        let view = KeysView::f32(&keys, neurons, d, d)?;
        let gates = init_gates(&view, &layout)?;
        for g in 0..groups {
            let count = batch.min(c.seq_lens.len() - g * batch);
            let rows = c.rows_of(g * batch, count);
            let t = rows.len();
            let x = Rows::new(&c.inputs[li][rows.start * d..rows.end * d], t, d)?;
            let gate_rows = Rows::new(&gates, layout.experts(), d)?;
            let inputs = RouteInputs {
                x,
                keys: view,
                gates: GateSource::Gates(gate_rows),
            };
            let r = route(&inputs, &layout, &cfg, &mut scratch)?;
            union += r.union().len() as f64;
            tokens += t as f64;
            bound += (t * cfg.width(&layout)).min(neurons) as f64;
            n += 1.0;
        }
    }
    Ok(Point {
        top_k,
        batch,
        groups,
        tokens: tokens / n,
        union: union / n,
        union_fraction: union / n / neurons as f64,
        bound: bound / n,
    })
}

fn table(points: &[Point], neurons: usize) -> String {
    let header = [
        "K",
        "batch B (seqs)",
        "tokens T",
        "|U| (rows)",
        "|U| / M",
        "bound min(M, T·K)",
        "dense adapter rows M",
        "paper |U| / M",
    ];
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            vec![
                p.top_k.to_string(),
                p.batch.to_string(),
                format!("{:.0}", p.tokens),
                format!("{:.0}", p.union),
                format!("{:.3}", p.union_fraction),
                format!("{:.0}", p.bound),
                neurons.to_string(),
                if p.top_k == 64 {
                    format!("≈ {PAPER_UNION_FRACTION} at T = 512")
                } else {
                    "—".into()
                },
            ]
        })
        .collect();
    md_table(&header, &rows)
}

fn figure(ctx: &Context, points: &[Point], top_ks: &[usize]) -> Result<Vec<String>> {
    let series: Vec<Series> = top_ks
        .iter()
        .map(|&k| Series {
            label: format!("K = {k}"),
            points: points
                .iter()
                .filter(|p| p.top_k == k)
                .map(|p| (p.batch as f64, p.union_fraction))
                .collect(),
        })
        .collect();
    let names = line_chart(
        &ctx.figures_dir(),
        "union_vs_batch",
        "Union of selected rows vs batch size",
        "sequences per micro-batch (log scale)",
        "|U| / M",
        &series,
        AxisScale::Log,
    )?;
    Ok(figure_paths(&names))
}

fn h5_table(points: &[Point]) -> Table {
    let col = |f: fn(&Point) -> f64| points.iter().map(f).collect::<Vec<f64>>();
    let cnt = |f: fn(&Point) -> usize| points.iter().map(|p| f(p) as u64).collect::<Vec<u64>>();
    Table {
        name: "union".into(),
        description: "one row per (K, batch size), averaged over micro-batches and layers".into(),
        columns: vec![
            u64_column("top_k", "1", "neurons kept per token", cnt(|p| p.top_k)),
            u64_column(
                "batch",
                "sequences",
                "sequences per micro-batch",
                cnt(|p| p.batch),
            ),
            f64_column(
                "tokens",
                "tokens",
                "mean tokens per micro-batch",
                col(|p| p.tokens),
            ),
            f64_column(
                "union",
                "rows",
                "mean distinct rows selected",
                col(|p| p.union),
            ),
            f64_column(
                "union_fraction",
                "1",
                "mean |U| / M",
                col(|p| p.union_fraction),
            ),
            f64_column("bound", "rows", "mean min(M, T·K)", col(|p| p.bound)),
        ],
    }
}

/// Runs experiment 3 at `ctx`'s profile and source.
pub fn run(ctx: &Context) -> Result<Section> {
    let s = sizes(ctx.profile);
    let c = capture::capture(ctx, s.prompts)?;
    let available = c.seq_lens.len();
    let mut points = Vec::new();
    for &k in &s.top_ks {
        for &b in s.batches.iter().filter(|&&b| b <= available) {
            points.push(union_at(&c, s.neurons, k, b, s.max_groups, ctx.seed)?);
        }
    }
    let figures = figure(ctx, &points, &s.top_ks)?;
    let layout = ExpertLayout::with_default_factor(s.neurons)?;
    let config = serde_json::json!({
        "neurons": s.neurons, "experts": layout.experts(), "top_p": 8, "top_ks": s.top_ks,
        "batches": s.batches, "prompts": available, "layers": c.layers, "seed": ctx.seed,
    });
    let h5 = write_h5(
        ctx,
        "union",
        "union size vs batch size",
        &config,
        &[h5_table(&points)],
    )?;
    let markdown = format!(
        "{scale}\n\n**Measured:** the distinct rows |U| selected by one micro-batch (Key-Experts, \
         M = {m}, N = {n}, P = 8, gated, no capacity cut), on the FFN inputs of {what} at layers \
         {layers:?}, averaged over up to {g} micro-batches of consecutive sequences and over the \
         layers. T counts real tokens (no padding). Keys as initialised (N(0, 0.02)); trained keys \
         may select more or fewer distinct rows.\n\n{table}\n\
         The paper's reference point: at M = 6144, batch 2 × length 256 (T = 512), K = 64, MEFT \
         moved 0.56× the adapter per step (rows down and gradients up), i.e. |U| / M ≈ 0.28. \
         Compare the K = 64 row whose T is nearest 512. MEFT moves 2·|U| rows per micro-batch and \
         layer where full offload moves 2·M per step.\n",
        scale = scale_line(ctx),
        m = s.neurons,
        n = layout.experts(),
        what = c.description,
        layers = c.layers,
        g = s.max_groups,
        table = table(&points, s.neurons),
    );
    Ok(Section {
        id: ExperimentId::Union,
        title: "Union size vs batch size (Fig. 8 analogue)".into(),
        markdown,
        figures,
        results: serde_json::json!({
            "config": config, "points": points, "h5": h5,
            "paper_union_fraction_t512_k64": PAPER_UNION_FRACTION,
        }),
        wall_seconds: 0.0,
    })
}
