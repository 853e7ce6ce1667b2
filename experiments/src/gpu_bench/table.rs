//! The Markdown form of a [`BenchReport`]: device, driver and date, one row per adapter, and the
//! comparison with the paper beside it.

use std::fmt::Write;

use meft_offload::DeviceKind;

use super::report::{BenchReport, ConfigRow};

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn count(n: u64) -> String {
    match n {
        1_000_000_000.. => format!("{:.2} B", n as f64 / 1e9),
        _ => format!("{:.2} M", n as f64 / 1e6),
    }
}

fn or_dash<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "–".into(), f)
}

fn adapter(r: &ConfigRow, report: &BenchReport) -> String {
    let s = &report.setup;
    let m = s.meft.neurons;
    match r.name {
        "pa" => format!("dense PA, M = {} per layer ({}), all on the device", s.pa.neurons, s.pa.method),
        "meft" => format!(
            "MEFT, M = {m}, N = {}, K = {}, P = {}, C = {}",
            s.meft.experts,
            s.meft.top_k,
            s.meft.top_p,
            or_dash(r.capacity, |c| c.to_string())
        ),
        _ => format!("full offload of the same M = {m} (every row down, every gradient up)"),
    }
}

fn row_line(r: &ConfigRow, report: &BenchReport) -> String {
    let fits = or_dash(r.fits_budget, |f| if f { "yes".into() } else { "**no**".into() });
    let status = match &r.error {
        Some(e) => format!("failed: {}", e.replace('|', "/").replace('\n', " ")),
        None => "ok".into(),
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
        r.name,
        adapter(r, report),
        or_dash(r.trainable_params, count),
        or_dash(r.peak_device_bytes, gib),
        fits,
        or_dash(r.median_step_s, |t| format!("{t:.3} s")),
        or_dash(r.bytes_per_step, mib),
        status
    )
}

/// The report as Markdown.
pub fn markdown(report: &BenchReport) -> String {
    let s = &report.setup;
    let mut md = format!("# meft bench-gpu: {} ({})\n\n", s.shape, s.date);
    if !matches!(s.device, DeviceKind::Cuda { .. }) {
        md += "**This is a CPU plumbing run, not a GPU measurement.** The model and adapters ran on the CPU; \
               memory is the simulated device's accounting and times are CPU times. They check that the \
               benchmark runs end to end; they say nothing about the paper's GPU claims.\n\n";
    }
    let dev = match (&s.device, &s.driver_before_model) {
        (DeviceKind::Cuda { ordinal }, Some(d)) => format!("cuda:{ordinal}, {} ({}), driver API {}", d.name, gib(d.total_bytes), d.driver_api),
        (DeviceKind::Cuda { ordinal }, None) => format!("cuda:{ordinal}"),
        _ => "CPU (simulated device)".into(),
    };
    let _ = writeln!(md, "- device: {dev}; revision `{}`", s.git_revision);
    let [d, layers, f, vocab] = s.model_dims;
    let _ = writeln!(
        md,
        "- model: d {d}, {layers} layers, FFN {f}, vocabulary {vocab} ({} frozen parameters, {}), {}",
        count(s.frozen_params),
        s.dtype,
        s.weights
    );
    let _ = writeln!(md, "- batch {} × {} tokens; {} warm-up + {} measured steps per adapter; budget {}", s.batch, s.seq, s.warmup, s.steps, gib(s.budget_bytes));
    let _ = writeln!(
        md,
        "- host adapter: {:.1} % of the frozen parameters; MEFT pre-look {}; probe step at C = M: largest union {}",
        100.0 * s.host_fraction,
        s.pre_look,
        or_dash(s.probe_max_union, |u| format!("{u} of {}", s.meft.neurons))
    );
    let _ = writeln!(md, "- peak device memory: {}\n", report.peak_memory_source);
    md += "| config | adapter | trainable | peak device memory | fits budget | median step | adapter bytes/step | status |\n";
    md += "| --- | --- | --- | --- | --- | --- | --- | --- |\n";
    for r in &report.rows {
        md += &row_line(r, report);
    }
    md + &comparison(report)
}

fn comparison(report: &BenchReport) -> String {
    let p = &report.paper;
    let meft_peak = report.rows.iter().find(|r| r.name == "meft").and_then(|r| r.peak_device_bytes);
    format!(
        "\n| claim | this run | paper (LLaMA-7B) |\n| --- | --- | --- |\n\
         | MEFT speed as a share of the dense PA | {} | ≥ {:.0} % |\n\
         | adapter traffic, full offload / MEFT | {} | {:.2}× |\n\
         | MEFT peak device memory | {} | {:.0} GB |\n\n\
         The traffic ratio counts adapter rows and their gradients (the paper's definition); MEFT also \
         copies each layer's FFN input and gate scores to the host for routing (column `route_input_bytes_per_step` \
         in the JSON).\n",
        or_dash(report.meft_speed_of_pa, |x| format!("{:.0} %", 100.0 * x)),
        100.0 * p.min_speed_of_all_device,
        or_dash(report.traffic_ratio_full_over_meft, |x| format!("{x:.2}×")),
        p.traffic_ratio_full_over_meft,
        or_dash(meft_peak, gib),
        p.meft_device_gb
    )
}
