//! Trainer tests on the built-in tiny random LLaMA (no assets): config validation errors, every
//! method lowers the loss, and a SIGKILLed `meft train` resumes to bit-identical state.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use experiments::train::build::tiny_config;
use experiments::train::state::StateMap;
use experiments::train::{RawConfig, TrainPlan, Trainer, checkpoint};

const BASE: &str = r#"
seed = 3
steps = 12
output_dir = "OUT"
layers = "last:2"
[dataset]
facts = 32
held_out = 0.0
loss_mask = "response"
[meft]
neurons = 64
top_k = 8
top_p = 2
experts = 8
capacity = 64
[pa]
size = 64
[lora]
rank = 4
dropout = 0.0
[optim]
lr = 1e-2
warmup = 0.1
[batch]
micro = 4
max_length = 16
[checkpoint]
every = 4
keep_last = 2
"#;

fn plan(out: &Path, overrides: &[&str]) -> Result<TrainPlan, String> {
    let text = BASE.replace("OUT", &out.display().to_string());
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let raw = RawConfig::parse(&text, "test.toml", &o).map_err(|e| e.to_string())?;
    TrainPlan::new(raw, &tiny_config()).map_err(|e| e.to_string())
}

/// `overrides` must be rejected with a message containing every string of `needles`.
fn check_rejected(overrides: &[&str], needles: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = plan(dir.path(), overrides).expect_err("config must be rejected");
    for n in needles {
        assert!(err.contains(n), "error for {overrides:?} lacks `{n}`: {err}");
    }
}

#[test]
fn invalid_configs_name_the_field_and_fix() {
    check_rejected(&["optim.lr=0"], &["optim.lr", "fix"]);
    check_rejected(&["optim.lr=-1"], &["optim.lr"]);
    check_rejected(&["batch.micro=0"], &["batch.micro"]);
    check_rejected(&["batch.accumulation=0"], &["batch.accumulation"]);
    check_rejected(&["meft.top_k=65"], &["meft.top_k", "K ≤ M"]);
    check_rejected(&["meft.experts=7"], &["meft.experts", "does not divide", "pick M among"]);
    check_rejected(&["meft.top_p=9"], &["meft.top_p"]);
    check_rejected(&["meft.capacity=0", "device.budget=1KiB"], &["device.budget"]);
    check_rejected(&["method='pa'", "device.budget=100KiB"], &["device.budget", "raise the budget"]);
    check_rejected(&["layers=2..9"], &["layers", "b ≤ 4"]);
    check_rejected(&["optim.lrr=1"], &["lrr"]);
    check_rejected(&["epochs=2"], &["steps", "only one"]);
    check_rejected(&["lora.targets=['q','x']", "method='lora'"], &["lora.targets", "`x`"]);
    check_rejected(&["dataset.loss_mask=prompt"], &["dataset.loss_mask"]);
    let dir = tempfile::tempdir().expect("tempdir");
    plan(dir.path(), &[]).expect("the base config is valid");
}

/// A learning rate of 3e38 (near the f32 maximum) without clipping blows the weights up: the next step's loss is not
/// finite, training stops with the typed error naming the step and the fix, and the checkpoint
/// written before it is untouched.
#[test]
fn a_non_finite_step_stops_with_a_typed_error_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = plan(dir.path(), &["method='pa'", "optim.lr=3e38", "optim.clip=0", "optim.warmup=0", "checkpoint.every=1"]).expect("plan");
    let mut t = Trainer::new(p).expect("trainer");
    let err = t.run().expect_err("the run must stop");
    let bad = err.downcast_ref::<experiments::train::NonFiniteStep>().unwrap_or_else(|| panic!("not a NonFiniteStep: {err:#}"));
    assert!(bad.step >= 2 && !(bad.loss.is_finite() && bad.grad_norm.is_finite()), "{bad:?}");
    assert_eq!(bad.last_checkpoint, bad.step - 1, "every step before it was checkpointed");
    assert_eq!(t.step(), bad.step - 1, "the failed update is not applied");
    assert_eq!(checkpoint::list(dir.path()).expect("list").last().copied(), Some(bad.step - 1));
    let msg = err.to_string();
    assert!(msg.contains("optim.lr") && msg.contains("optim.clip"), "the message names the fix: {msg}");
}

fn losses(out: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["loss"].as_f64().expect("loss")).collect()
}

#[test]
fn every_method_lowers_the_loss_and_exports_a_loadable_adapter() {
    for method in ["meft", "pa", "lora", "adapter_h", "full_ft"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = format!("method='{method}'");
        let p = plan(dir.path(), &[&m, "checkpoint.every=0"]).expect("plan");
        let mut t = Trainer::new(p.clone()).expect("trainer");
        let summary = t.run().expect("run");
        assert_eq!(summary.steps, 12);
        let l = losses(dir.path());
        let (first, last) = (l[..3].iter().sum::<f64>() / 3.0, l[l.len() - 3..].iter().sum::<f64>() / 3.0);
        println!("{method}: loss {first:.4} -> {last:.4}");
        assert!(last < 0.9 * first, "{method}: loss did not decrease: {l:?}");
        let (params, manifest) = checkpoint::import(dir.path()).expect("adapter files");
        assert_eq!(manifest.model, "tiny-random");
        let mut adapter =
            experiments::train::build::adapter(&p, &tiny_config(), &experiments::train::build::device(&p, &tiny_config()).expect("device"))
                .expect("adapter");
        adapter.load_params(&params).expect("load exported adapter");
        assert_eq!(adapter.export().expect("export"), params, "{method}: exported adapter round trip");
        assert_eq!(dir.path().join("ledger.h5").is_file(), method == "meft", "{method}: the ledger goes with MEFT runs only");
    }
}

/// LoRA with dropout: resuming from a mid-run checkpoint gives the uninterrupted run's state,
/// because each micro-batch's dropout masks come from its position alone.
#[test]
fn lora_with_dropout_resumes_bit_for_bit() {
    let over = ["method='lora'", "lora.dropout=0.3", "checkpoint.every=6", "checkpoint.keep_last=2"];
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    Trainer::new(plan(a.path(), &over).expect("plan")).expect("trainer").run().expect("run");
    Trainer::new(plan(b.path(), &over).expect("plan")).expect("trainer").run().expect("run");
    assert_eq!(checkpoint::list(b.path()).expect("list"), [6, 12]);
    std::fs::remove_file(checkpoint::dir(b.path()).join("ckpt-00000012.safetensors")).expect("drop the last checkpoint");
    let mut resumed = Trainer::new(plan(b.path(), &over).expect("plan")).expect("trainer");
    assert_eq!(resumed.run().expect("resume").resumed_from, 6);
    assert_eq!(final_state(a.path()), final_state(b.path()), "resumed LoRA state differs");
}

/// A MEFT run resumed from a checkpoint (mid-run, or the final one with nothing left to train)
/// still holds the transfer ledger of every step: the checkpoint carries it.
#[test]
fn resumed_meft_run_keeps_the_ledger_of_every_step() {
    let over = ["method='meft'", "checkpoint.every=6", "checkpoint.keep_last=2"];
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let mut whole = Trainer::new(plan(a.path(), &over).expect("plan")).expect("trainer");
    whole.run().expect("run");
    let bytes = |t: &Trainer| -> Vec<(u64, u64)> {
        t.adapter().ledger().expect("MEFT has a ledger").steps.iter().map(|s| (s.step, s.moved_bytes())).collect()
    };
    let want = bytes(&whole);
    assert_eq!(want.len(), 12);
    let mut finished = Trainer::new(plan(a.path(), &over).expect("plan")).expect("trainer");
    assert_eq!(finished.run().expect("reopen").resumed_from, 12);
    assert_eq!(bytes(&finished), want, "reopened finished run");
    Trainer::new(plan(b.path(), &over).expect("plan")).expect("trainer").run().expect("run");
    std::fs::remove_file(checkpoint::dir(b.path()).join("ckpt-00000012.safetensors")).expect("drop the last checkpoint");
    let mut resumed = Trainer::new(plan(b.path(), &over).expect("plan")).expect("trainer");
    assert_eq!(resumed.run().expect("resume").resumed_from, 6);
    assert_eq!(bytes(&resumed), want, "run resumed at step 6");
}

fn write_config(dir: &Path, out: &Path, steps: u64) -> std::path::PathBuf {
    let text = BASE.replace("OUT", &out.display().to_string()).replace("steps = 12", &format!("steps = {steps}"));
    let path = dir.join("run.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn meft_train(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meft"));
    c.args(["train", "--config"]).arg(config).arg("meft.host_optimizer=lazy").env("RAYON_NUM_THREADS", "2");
    c
}

fn final_state(out: &Path) -> StateMap {
    let last = *checkpoint::list(out).expect("list").last().expect("a checkpoint");
    checkpoint::load(out, last).expect("load").0
}

#[test]
fn sigkilled_training_resumes_bit_for_bit() {
    let steps = 400;
    let dir = tempfile::tempdir().expect("tempdir");
    let (full, killed) = (dir.path().join("full"), dir.path().join("killed"));
    let cfg_full = write_config(&dir.path().join("a").tap_mkdir(), &full, steps);
    let cfg_killed = write_config(&dir.path().join("b").tap_mkdir(), &killed, steps);
    let status = meft_train(&cfg_full).stdout(Stdio::null()).status().expect("spawn meft");
    assert!(status.success());
    let mut child = meft_train(&cfg_killed).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn meft");
    let start = Instant::now();
    loop {
        let n = checkpoint::list(&killed).unwrap_or_default();
        if n.first().is_some_and(|&s| s >= 8) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let at_kill = checkpoint::list(&killed).expect("list");
    println!("killed with checkpoints {at_kill:?}");
    assert!(at_kill.last().is_some_and(|&s| s < steps), "the run finished before the kill; raise steps");
    let status = meft_train(&cfg_killed).stdout(Stdio::null()).status().expect("resume");
    assert!(status.success());
    assert_eq!(final_state(&full), final_state(&killed), "resumed state differs from the uninterrupted run");
    let read = |p: &Path| std::fs::read(p.join("adapter.safetensors")).expect("adapter");
    assert_eq!(read(&full), read(&killed), "exported adapters differ");
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).expect("mkdir");
        self
    }
}
