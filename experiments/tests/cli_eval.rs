//! `meft eval` end to end: scoring a predictions file on a user QA fixture (exact metrics and the
//! output files), a clear error for an unknown prediction id, and greedy generation with the real
//! SmolLM2 on two NQ-open questions when the asset cache has them.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval").join(name).display().to_string()
}

/// A fresh output directory under the system temp dir (removed first if a previous run left it).
fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meft-cli-eval-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    dir
}

fn meft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meft")).arg("eval").args(args).env("RAYON_NUM_THREADS", "2").output().expect("run meft")
}

fn json_stdout(out: &Output) -> Value {
    assert!(out.status.success(), "meft eval failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("summary JSON on stdout")
}

#[test]
fn scores_a_predictions_file_exactly_and_writes_outputs() {
    let dir = out_dir("predictions");
    let out = dir.display().to_string();
    let (data, preds) = (fixture("qa.jsonl"), fixture("predictions.jsonl"));
    let args = ["--predictions", &preds, "--dataset", "user_qa", "--dataset-file", &data, "--out", &out];
    let summary = json_stdout(&meft(&args));
    // q1 "The capital is paris." vs Paris: substring (case-insensitive) yes, SQuAD EM no, F1 0.5;
    // q2 "Shakespeare": all 1; q3 "five" vs 4/four: all 0; q4 has no prediction and is skipped.
    assert_eq!(summary["n_scored"], 3);
    assert_eq!(summary["primary"].as_f64().unwrap(), 2.0 / 3.0);
    assert_eq!(summary["squad_em"].as_f64().unwrap(), 1.0 / 3.0);
    assert_eq!(summary["squad_f1"].as_f64().unwrap(), 0.5);
    assert_eq!(summary["dataset"], "user_qa");
    let results: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["result"]["summary"], summary);
    let ids: Vec<&str> = results["result"]["report"]["examples"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["q1", "q2", "q3"]);
    assert!(dir.join("predictions.h5").is_file());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unknown_prediction_id_names_the_line() {
    let (data, preds) = (fixture("qa.jsonl"), fixture("predictions_unknown_id.jsonl"));
    let out = meft(&["--predictions", &preds, "--dataset", "user_qa", "--dataset-file", &data]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("predictions_unknown_id.jsonl:2") && err.contains("q9"), "{err}");
}

#[test]
fn user_dataset_without_file_and_missing_model_are_clear_errors() {
    let preds = fixture("predictions.jsonl");
    let out = meft(&["--predictions", &preds, "--dataset", "user_qa"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dataset-file"));
    let out = meft(&["--dataset", "nq_open"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model"));
}

#[test]
fn greedy_eval_of_smollm2_on_two_nq_questions() {
    let (Some(_), Some(_)) = (meft_assets::require_model("smollm2-135m-instruct"), meft_assets::require_dataset("nq_open")) else {
        return;
    };
    let dir = out_dir("smollm2");
    let out = dir.display().to_string();
    let args = ["--model", "smollm2-135m-instruct", "--dataset", "nq_open", "--limit", "2", "--max-new-tokens", "16", "--out", &out];
    let summary = json_stdout(&meft(&args));
    assert_eq!(summary["n_scored"], 2);
    assert_eq!(summary["limit"], 2);
    assert_eq!(summary["config"]["decode"]["decoding"]["kind"], "greedy");
    assert!(summary["new_tokens"].as_u64().unwrap() >= 2);
    assert!(dir.join("results.json").is_file() && dir.join("predictions.h5").is_file());
    std::fs::remove_dir_all(&dir).ok();
}
