//! Train → export → `meft eval --adapter`: a MEFT adapter trained on eight real NQ-open facts is
//! exported, loaded back by `meft eval`, and greedy generation answers at least the facts the
//! trainer's own (teacher-forced) exact match says it learned, with the same predictions whether
//! the examples are decoded side by side or one at a time.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn meft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meft")).args(args).env("RAYON_NUM_THREADS", "2").output().expect("run meft")
}

fn json(out: &Output, what: &str) -> Value {
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: no JSON on stdout ({e})"))
}

const CONFIG: &str = r#"
seed = 0
epochs = 40
eval_examples = 0
method = "meft"
layers = "last:2"
[model]
name = "smollm2-135m-instruct"
[dataset]
name = "nq_open"
held_out = 0.0
limit = 8
loss_mask = "response"
[meft]
neurons = 256
top_k = 8
top_p = 4
experts = 16
[optim]
lr = 3e-2
warmup = 0.05
[batch]
micro = 8
max_length = 64
"#;

fn train(dir: &Path) -> Value {
    let config = dir.join("facts.toml");
    std::fs::write(&config, CONFIG).expect("write config");
    let out_dir = format!("output_dir={}", dir.join("run").display());
    json(&meft(&["train", "--config", &config.display().to_string(), &out_dir]), "meft train")
}

#[test]
fn an_exported_meft_adapter_answers_its_trained_facts_in_meft_eval() {
    let (Some(_), Some(_)) = (meft_assets::require_model("smollm2-135m-instruct"), meft_assets::require_dataset("nq_open")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = train(dir.path());
    let learned = summary["last"]["train_em"].as_f64().expect("train_em in the summary");
    assert!(learned >= 0.5, "40 epochs on 8 facts should teach most of them: {summary}");
    let run = dir.path().join("run");
    assert!(run.join("adapter.safetensors").is_file() && run.join("adapter.json").is_file());
    let base_args = ["eval", "--model", "smollm2-135m-instruct", "--dataset", "nq_open", "--limit", "8", "--max-new-tokens", "24"];
    let base = json(&meft(&base_args), "meft eval (base)");
    let mut with = base_args.to_vec();
    let adapter = run.display().to_string();
    with.extend(["--adapter", &adapter]);
    let tuned = json(&meft(&with), "meft eval --adapter");
    let em = |v: &Value| v["primary"].as_f64().unwrap_or_else(|| panic!("no primary metric in {v}"));
    assert!(em(&tuned) + 1e-9 >= learned, "generation EM {} < the trainer's exact match {learned}", em(&tuned));
    assert!(em(&tuned) > em(&base), "the adapter must beat the base model: {} vs {}", em(&tuned), em(&base));
    let report = |batch: &str| {
        let out = dir.path().join(format!("eval-batch{batch}"));
        let mut args = with.clone();
        let out_arg = out.display().to_string();
        args.extend(["--batch", batch, "--out", &out_arg]);
        json(&meft(&args), "meft eval --adapter --batch");
        let text = std::fs::read_to_string(out.join("results.json")).expect("results.json");
        serde_json::from_str::<Value>(&text).expect("results.json is JSON")["report"].clone()
    };
    assert_eq!(report("8"), report("1"), "MEFT decoding 8 examples side by side must answer as one at a time");
}
