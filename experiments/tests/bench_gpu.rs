//! `meft bench-gpu` end to end on the CPU (tiny shape): the JSON and Markdown it writes, the
//! traffic of MEFT against full offload, the PA within its budget; and clear errors for a CUDA
//! device in a CPU build and for bad arguments.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meft-bench-gpu-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

fn meft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meft")).arg("bench-gpu").args(args).env("RAYON_NUM_THREADS", "2").output().expect("run meft")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn tiny_cpu_run_writes_three_rows_and_meft_moves_less_than_full_offload() {
    let dir = out_dir("tiny");
    let out = meft(&["--device", "cpu", "--shape", "tiny", "--steps", "2", "--warmup", "1", "--out", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("bench-gpu-tiny.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["pa", "meft", "full_offload"]);
    for r in rows {
        assert!(r["error"].is_null(), "{r}");
        assert_eq!(r["steps"].as_array().unwrap().len(), 2, "warm-up steps are not reported");
        assert!(r["median_step_s"].as_f64().unwrap() > 0.0);
        assert!(r["steps"][0]["loss"].as_f64().unwrap().is_finite());
    }
    let bytes = |i: usize| rows[i]["bytes_per_step"].as_u64().unwrap();
    assert_eq!(bytes(0), 0, "the dense PA moves nothing");
    assert!(0 < bytes(1) && bytes(1) < bytes(2), "MEFT {} vs full offload {}", bytes(1), bytes(2));
    assert_eq!(rows[0]["fits_budget"], Value::Bool(true));
    let budget = report["setup"]["budget_bytes"].as_u64().unwrap();
    assert!(rows[0]["peak_device_bytes"].as_u64().unwrap() <= budget);
    assert!(rows[1]["capacity"].as_u64().unwrap() >= report["setup"]["probe_max_union"].as_u64().unwrap());
    assert!(report["kind"].as_str().unwrap().contains("not GPU measurements"));
    assert_eq!(report["setup"]["dtype"], "bf16", "the default frozen dtype: every adapter meets a bf16 model");
    let md = std::fs::read_to_string(dir.join("bench-gpu-tiny.md")).unwrap();
    assert!(md.contains("CPU plumbing run, not a GPU measurement"), "{md}");
    assert!(md.contains("| full_offload |") && md.contains("3.57×"), "{md}");
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_in_a_cpu_build_is_a_clear_error() {
    let dir = out_dir("cuda");
    let out = meft(&["--device", "cuda:0", "--shape", "tiny", "--out", dir.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no CUDA support") && err.contains("--features cuda"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!dir.exists(), "nothing is written when the device cannot be opened");
}

#[test]
fn bad_arguments_name_the_argument() {
    let cases: [(&[&str], &str); 4] =
        [(&["--seq", "0"], "--seq"), (&["--shape", "gpt5"], "--shape"), (&["--device", "tpu:0"], "--device"), (&["--budget-gib=-3"], "--budget-gib")];
    for (args, field) in cases {
        let out = meft(&[&["--shape", "tiny", "--device", "cpu"][..], args].concat());
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = stderr(&out);
        assert!(err.contains(field) && !err.contains("panicked"), "{args:?}: {err}");
    }
}
