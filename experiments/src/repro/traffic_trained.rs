//! Union and traffic after training (the paper's Fig. 8 and its 3.57× claim, on trained keys):
//! Table 1's MEFT run on TriviaQA opened again, its trained router applied to micro-batches of
//! B trained facts. |U| / M against B with the trained keys and gates beside the keys the run
//! started from; bytes per optimizer step (rows down, gradients up) against full offload
//! (every row down and every gradient up), as the training ledger measured them (with the device
//! working set's cap) and as the uncapped union would move them.

use anyhow::Result;
use serde::Serialize;

use super::output::{figure_paths, md_table};
use super::runs::Runner;
use super::trained::{TrainedRouting, UnionPoint};
use super::{Context, plot};

/// Trained facts routed.
const SEQUENCES: usize = 256;
/// The paper's traffic claim.
const PAPER_RATIO: f64 = 3.57;

/// What the study measured.
#[derive(Debug, Clone, Serialize)]
pub struct TrainedTraffic {
    /// The Table 1 run opened.
    pub run: String,
    /// Host neurons per layer M.
    pub neurons: usize,
    /// Adapted layers.
    pub layers: usize,
    /// Bytes of one bundled row (`2d` f32).
    pub row_bytes: u64,
    /// Micro-batch of the run.
    pub micro: usize,
    /// Working-set rows C of the run.
    pub capacity: usize,
    /// |U| against B, trained router.
    pub trained: Vec<UnionPoint>,
    /// |U| against B, the router before training.
    pub initial: Vec<UnionPoint>,
    /// Adapter bytes per step the training ledger measured (capped at C); `None` when the run's
    /// outcome carries no ledger.
    pub ledger_bytes_per_step: Option<f64>,
    /// Full-offload bytes per step (from the same ledger).
    pub full_offload_bytes_per_step: Option<f64>,
}

impl TrainedTraffic {
    /// Bytes per step the uncapped union of one micro-batch moves (2·|U| rows per layer).
    pub fn uncapped_bytes_per_step(&self) -> f64 {
        let u = self.trained.iter().find(|p| p.batch == self.micro).map_or(0.0, |p| p.union_rows);
        2.0 * u * self.row_bytes as f64 * self.layers as f64
    }
}

/// Opens Table 1's MEFT run and measures.
pub fn measure(ctx: &Context, runner: &Runner) -> Result<TrainedTraffic> {
    let spec = super::table1::reference_meft(ctx, runner)?;
    let outcome = runner.run_all(std::slice::from_ref(&spec))?.remove(0);
    let routing = TrainedRouting::load(runner, &spec, SEQUENCES)?;
    let batches: Vec<usize> = [1, 2, 4, 8, 16, 32].into_iter().filter(|&b| b <= routing.seq_lens.len()).collect();
    let trained = routing.union_vs_batch(&batches)?;
    let initial = routing.initial(spec.raw.seed)?.union_vs_batch(&batches)?;
    let capacity = outcome.size.split("C = ").nth(1).and_then(|s| s.split(' ').next()).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok(TrainedTraffic {
        run: spec.key.clone(),
        neurons: routing.layout.neurons(),
        layers: routing.layers.len(),
        row_bytes: (2 * routing.hidden * 4) as u64,
        micro: spec.raw.batch.micro,
        capacity,
        trained,
        initial,
        ledger_bytes_per_step: outcome.meft.as_ref().map(|f| f.bytes_per_step),
        full_offload_bytes_per_step: outcome.meft.as_ref().map(|f| f.full_offload_bytes_per_step),
    })
}

/// The study's part of the traffic section.
pub fn markdown(t: &TrainedTraffic) -> String {
    let rows: Vec<Vec<String>> = t
        .trained
        .iter()
        .zip(&t.initial)
        .map(|(a, b)| {
            vec![
                a.batch.to_string(),
                format!("{:.0}", a.tokens),
                format!("{:.0}", a.union_rows),
                format!("{:.3}", a.fraction),
                format!("{:.3}", b.fraction),
            ]
        })
        .collect();
    let mib = |b: f64| format!("{:.2}", b / 1048576.0);
    // Full offload moves every row of every adapted layer down and its gradient up.
    let full = t.full_offload_bytes_per_step.unwrap_or(2.0 * (t.neurons * t.layers) as f64 * t.row_bytes as f64);
    let uncapped = t.uncapped_bytes_per_step();
    let ledger = match t.ledger_bytes_per_step {
        Some(b) => vec![
            "MEFT, training ledger (working set capped at C, measured)".into(),
            mib(b),
            mib(full),
            format!("{:.2}×", full / b.max(1.0)),
            format!("{PAPER_RATIO}× less"),
        ],
        None => vec![
            "MEFT, training ledger (working set capped at C)".into(),
            "no ledger in the run's outcome".into(),
            mib(full),
            "-".into(),
            format!("{PAPER_RATIO}× less"),
        ],
    };
    let bytes = vec![
        ledger,
        vec![
            format!("MEFT, uncapped union of a micro-batch of {} (trained router, measured)", t.micro),
            mib(uncapped),
            mib(full),
            format!("{:.2}×", full / uncapped.max(1.0)),
            format!("{PAPER_RATIO}× less"),
        ],
    ];
    format!(
        "**After training** (Table 1's MEFT run `{}`, M = {} per layer on {} layers, C = {} device rows): its trained router applied to micro-batches \
         of B consecutive trained facts (real tokens only), against the keys and gates it started from.\n\n{}\n{}\nReading: the ledger's bytes are what \
         the budgeted run moved (the cap keeps them at 2·C rows per layer and micro-batch at most); the uncapped row is what MEFT would move with a \
         working set as large as the union.\n\n",
        t.run,
        t.neurons,
        t.layers,
        t.capacity,
        md_table(&["B (sequences)", "tokens", "|U| trained", "|U| / M trained", "|U| / M at init"], &rows),
        md_table(&["setting", "MEFT MiB/step", "full offload MiB/step", "ratio", "paper"], &bytes)
    )
}

/// |U| / M against B, trained and initial.
pub fn figure(ctx: &Context, t: &TrainedTraffic) -> Result<Vec<String>> {
    let line =
        |label: &str, pts: &[UnionPoint]| plot::Series { label: label.into(), points: pts.iter().map(|p| (p.batch as f64, p.fraction)).collect() };
    let series = [line("trained router", &t.trained), line("at initialisation", &t.initial)];
    let names = plot::line_chart(
        &ctx.figures_dir(),
        "union_after_training",
        "Union |U|/M vs micro-batch size (Fig. 8, trained keys)",
        "sequences per micro-batch",
        "|U| / M",
        &series,
        plot::AxisScale::Log,
    )?;
    Ok(figure_paths(&names))
}
