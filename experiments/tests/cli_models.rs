//! The `meft` binary end to end: `score`, `generate` and `info` on the real SmolLM2 asset, and
//! clear failures for bad `--model` arguments.

use std::process::{Command, Output};

use serde_json::Value;

const MODEL: &str = "smollm2-135m-instruct";

fn meft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meft")).args(args).env("RAYON_NUM_THREADS", "2").output().expect("run meft")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "meft failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

#[test]
fn unknown_model_fails_with_a_clear_message() {
    let out = meft(&["score", "--model", "no-such-model", "--text", "hi"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-model") && err.contains(MODEL), "{err}");
}

#[test]
fn directory_without_config_fails_with_a_clear_message() {
    let dir = std::env::temp_dir().join(format!("meft-cli-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = meft(&["info", "--model", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).ok();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
}

#[test]
fn score_generate_and_info_on_smollm2() {
    let Some(path) = meft_assets::require_model(MODEL) else {
        return;
    };
    let path = path.to_str().unwrap();
    let score: Value = serde_json::from_str(stdout(&meft(&["score", "--model", MODEL, "--text", "The capital of France is Paris."])).trim()).unwrap();
    assert_eq!(score["tokens"], 7);
    let nll = score["mean_nll"].as_f64().unwrap();
    assert!(nll.is_finite() && nll > 0.0 && nll < 10.0, "{score}");

    let text = stdout(&meft(&["generate", "--model", path, "--prompt", "The capital of France is", "--max-new-tokens", "3"]));
    assert!(text.starts_with(" Paris"), "{text:?}");
    let chat = stdout(&meft(&["generate", "--model", path, "--chat", "--prompt", "Say hello.", "--max-new-tokens", "8"]));
    assert!(!chat.trim().is_empty() && !chat.contains("<|im_end|>"), "{chat:?}");

    let info: Value = serde_json::from_str(&stdout(&meft(&["info", "--model", path]))).unwrap();
    assert_eq!(info["config"]["num_hidden_layers"], 30);
    assert_eq!(info["tokenizer"]["vocab_size"], 49_152);
    assert_eq!(info["tokenizer"]["chat_template"], "chatml");
    assert_eq!(info["shapes_layer0"]["k_proj"], serde_json::json!([192, 576]));
    let total = info["parameters"]["total"].as_u64().unwrap();
    assert!((134_000_000..136_000_000).contains(&total), "{total}");
}
