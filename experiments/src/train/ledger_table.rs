//! The MEFT ledger (spec §6) as an HDF5 table: one row per optimizer step and adapted layer,
//! written with every MEFT run as `<output_dir>/ledger.h5` through meft-eval's self-describing
//! format (units on every column; link time labelled modelled or measured).

use meft_eval::h5::{Column, ColumnValues, Table};
use meft_offload::{LayerRecord, Ledger, StepRecord};

/// One row per (step, layer) of `ledger`.
pub fn ledger_table(ledger: &Ledger) -> Table {
    let rows: Vec<(&StepRecord, &LayerRecord)> = ledger.steps.iter().flat_map(|s| s.layers.iter().map(move |l| (s, l))).collect();
    let u64s = |name: &str, unit: &str, description: &str, f: &dyn Fn(&StepRecord, &LayerRecord) -> u64| {
        Column::new(name, unit, description, ColumnValues::U64(rows.iter().map(|(s, l)| f(s, l)).collect()))
    };
    let ns = |name: &str, description: &str, f: &dyn Fn(&LayerRecord) -> u64| {
        Column::new(name, "s", description, ColumnValues::F64(rows.iter().map(|(_, l)| f(l) as f64 * 1e-9).collect()))
    };
    let source = rows.first().map_or("modelled".to_string(), |(_, l)| format!("{:?}", l.link_time_source).to_lowercase());
    Table {
        name: "ledger".into(),
        description: "MEFT ledger: one row per optimizer step and adapted layer (steps of this process; a resumed run starts at its checkpoint)"
            .into(),
        columns: vec![
            u64s("step", "1", "optimizer step (1-based)", &|s, _| s.step),
            u64s("layer", "1", "model layer", &|_, l| l.layer as u64),
            u64s("tokens", "tokens", "tokens T summed over micro-batches", &|_, l| l.tokens as u64),
            u64s("union_rows", "rows", "union sizes |U| summed over micro-batches", &|_, l| l.union_rows as u64),
            u64s("drops", "1", "per-token selections dropped for working-set capacity", &|_, l| l.drops as u64),
            u64s("h2d_bytes", "bytes", "adapter rows host to device", &|_, l| l.h2d_bytes),
            u64s("d2h_bytes", "bytes", "row gradients device to host", &|_, l| l.d2h_bytes),
            u64s("route_input_bytes", "bytes", "routing inputs device to host", &|_, l| l.route_input_bytes),
            u64s("full_offload_bytes", "bytes", "what a full offload would move for this layer and step", &|_, l| l.full_offload_bytes),
            u64s("device_peak_bytes", "bytes", "device peak since the previous step (all categories)", &|s, _| s.device.peak_total),
            Column::new(
                "link_time",
                "s",
                &format!("link time of the transfers ({source})"),
                ColumnValues::F64(rows.iter().map(|(_, l)| l.link_time_s).collect()),
            ),
            ns("route_time", "host routing compute (measured)", &|l| l.host.route_ns),
            ns("gather_time", "gathering rows into the staging buffer (measured)", &|l| l.host.gather_ns),
            ns("scatter_time", "scatter-adding row gradients (measured)", &|l| l.host.scatter_ns),
            ns("adamw_time", "host AdamW over the layer's rows (measured)", &|l| l.host.adamw_ns),
        ],
    }
}
