//! The top-level tasks: `test` (the CI command), `reproduce` (the main job; a short SmolLM2
//! demo until the reproduction pipeline lands) and `bench`.

use std::process::{Command, Stdio};

use anyhow::bail;

use crate::run::{cargo, loud, run, show, step};
use crate::{assets, prereq};

/// Threads for rayon in every child: the reference machine has 2 cores.
const RAYON_THREADS: &str = "2";

/// `cargo xtask test`: prerequisites, assets (or a loud offline marker), then the whole suite.
///
/// The suite runs with `--release`: test, `cargo xtask reproduce` (`cargo run --release`) and
/// `cargo bench` then share one optimised build of candle and friends, and the release profile
/// carries only line tables instead of full debug info, so linking the many test binaries is
/// faster. The test profile would build the whole dependency stack a second time.
pub fn test() -> anyhow::Result<()> {
    prereq::ensure()?;
    let offline = match assets::fetch() {
        Ok(_) => None,
        Err(e) => {
            let reason = format!("asset fetch failed: {e:#}");
            loud(&format!(
                "ASSETS UNAVAILABLE: tests that need the real SmolLM2 model or datasets will SKIP.\n!! {}",
                reason.replace('\n', "\n!! ")
            ));
            Some(reason)
        }
    };
    step("running the whole test suite (cargo test --workspace --release)");
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--release"])
        .env("RAYON_NUM_THREADS", RAYON_THREADS);
    if let Some(reason) = &offline {
        cmd.env(
            meft_assets::OFFLINE_VAR,
            reason.lines().next().unwrap_or("asset fetch failed"),
        );
    }
    let secs = run(&mut cmd)?;
    eprintln!("\n    test suite passed in {secs:.0} s");
    if offline.is_some() {
        loud(
            "tests passed, but real-asset tests were SKIPPED because the asset fetch failed (see above)",
        );
    }
    Ok(())
}

/// The `meft` CLI, built in release mode, with `args`.
fn meft(args: &[&str]) -> Command {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "-p",
        "experiments",
        "--release",
        "--bin",
        "meft",
        "--",
    ])
    .args(args)
    .env("RAYON_NUM_THREADS", RAYON_THREADS);
    cmd
}

/// `cargo xtask reproduce`: for now a short demo of the real model through the CLI.
pub fn reproduce() -> anyhow::Result<()> {
    prereq::ensure()?;
    if let Err(e) = assets::fetch() {
        loud(&format!(
            "NO ASSETS: the pinned model could not be fetched: {e:#}"
        ));
        return synthetic_fallback();
    }
    step("building the meft CLI (release)");
    run(cargo().args(["build", "-p", "experiments", "--release", "--bin", "meft"]))?;
    let model = "smollm2-135m-instruct";
    step("meft info");
    run(&mut meft(&["info", "--model", model]))?;
    step("meft score (mean next-token NLL of one sentence)");
    run(&mut meft(&[
        "score",
        "--model",
        model,
        "--text",
        "The quick brown fox jumps over the lazy dog.",
    ]))?;
    step("meft generate (greedy, chat template)");
    run(&mut meft(&[
        "generate",
        "--model",
        model,
        "--chat",
        "--prompt",
        "What is the capital of France?",
    ]))?;
    run(&mut meft(&[
        "generate",
        "--model",
        model,
        "--max-new-tokens",
        "24",
        "--prompt",
        "The capital of France is",
    ]))?;
    eprintln!("\n    demo done; the full reproduction (paper tables) will replace this demo");
    Ok(())
}

/// Without assets: runs the CLI's synthetic demo if it has one, else fails with the reason.
fn synthetic_fallback() -> anyhow::Result<()> {
    let mut probe = meft(&["synthetic", "--help"]);
    probe.stdout(Stdio::null()).stderr(Stdio::null());
    eprintln!("    probing for a synthetic demo: $ {}", show(&probe));
    if probe.status().is_ok_and(|s| s.success()) {
        loud("RUNNING THE SYNTHETIC DEMO (random tiny model), NOT the real SmolLM2 model");
        run(&mut meft(&["synthetic"]))?;
        return Ok(());
    }
    bail!(
        "cannot reproduce without the pinned assets and the CLI offers no synthetic demo; \
         check the network access of pip (see the error above) and run `cargo xtask reproduce` again"
    )
}

/// `cargo xtask bench`: every criterion bench of the workspace.
pub fn bench() -> anyhow::Result<()> {
    prereq::ensure()?;
    let mut cmd = cargo();
    cmd.args(["bench", "--workspace"])
        .env("RAYON_NUM_THREADS", RAYON_THREADS);
    if let Err(e) = assets::fetch() {
        loud(&format!(
            "assets unavailable, benches on the real model will skip: {e:#}"
        ));
        cmd.env(
            meft_assets::OFFLINE_VAR,
            "asset fetch failed before `cargo xtask bench`",
        );
    }
    step("running benches (cargo bench --workspace)");
    run(&mut cmd)?;
    Ok(())
}
