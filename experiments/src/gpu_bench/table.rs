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
        "meft" => {
            let width = s.meft.top_k.min(s.meft.top_p * m / s.meft.experts);
            let kept = if width < s.meft.top_k { format!(" (P·M/N = {width} kept per token)") } else { String::new() };
            let (n, k, p) = (s.meft.experts, s.meft.top_k, s.meft.top_p);
            format!("MEFT, M = {m}, N = {n}, K = {k}{kept}, P = {p}, C = {}", or_dash(r.capacity, |c| c.to_string()))
        }
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
    let _ = writeln!(
        md,
        "- batch {} × {} tokens; {} warm-up + {} measured steps per adapter; budget {}",
        s.batch,
        s.seq,
        s.warmup,
        s.steps,
        gib(s.budget_bytes)
    );
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

#[cfg(test)]
mod tests {
    use candle_core::DType;

    use super::*;
    use crate::gpu_bench::report::{Setup, StepSample};
    use crate::gpu_bench::{BenchConfig, BenchShape, HostAdapterSize, sizing};

    fn sample(seconds: f64) -> StepSample {
        StepSample {
            seconds,
            loss: 4.0,
            h2d_bytes: 0,
            d2h_bytes: 0,
            route_input_bytes: 0,
            max_union: None,
            peak_accounted_bytes: 1 << 20,
            peak_sampled_bytes: Some(2 << 20),
        }
    }

    #[test]
    fn a_failed_config_is_a_row_with_its_error_and_no_comparison() {
        let cfg = BenchConfig {
            device: DeviceKind::Cuda { ordinal: 0 },
            shape: BenchShape::Tiny,
            model: None,
            batch: 1,
            seq: 8,
            steps: 1,
            warmup: 0,
            budget_bytes: 1 << 30,
            dtype: DType::F32,
            seed: 0,
            host_adapter: HostAdapterSize::Neurons(64),
            top_k: 4,
            top_p: 2,
            pre_look: 0,
        };
        let c = cfg.shape.config();
        let (pa, meft) = (sizing::pa_size(&c, &cfg).unwrap(), sizing::meft_config(&c, 64, &cfg).unwrap());
        let setup = Setup::new(&cfg, &c, "random weights".into(), None, &pa, &meft, None);
        let rows = vec![
            ConfigRow::new("pa", Ok((10, vec![sample(0.3), sample(0.1), sample(0.2)])), cfg.budget_bytes),
            ConfigRow::new("meft", Err(anyhow::anyhow!("CUDA_ERROR_OUT_OF_MEMORY | out of memory")), cfg.budget_bytes),
        ];
        assert_eq!(rows[0].median_step_s, Some(0.2));
        assert_eq!(rows[0].peak_device_bytes, Some(2 << 20), "on CUDA the sampled peak is the one reported");
        let md = markdown(&BenchReport::new(setup, rows, None));
        assert!(md.contains("failed: CUDA_ERROR_OUT_OF_MEMORY / out of memory"), "{md}");
        assert!(md.contains("| MEFT speed as a share of the dense PA | – |"), "{md}");
        assert!(!md.contains("CPU plumbing run"), "{md}");
    }
}
