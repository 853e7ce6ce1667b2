//! The top-level tasks: `test` (the CI command), `reproduce` (the main job: the paper
//! reproduction report), `ablate` (MEFT knob sweeps) and `bench`.

use std::process::Command;

use crate::run::{cargo, loud, run, step};
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
            loud(&format!("ASSETS UNAVAILABLE: tests that need the real SmolLM2 model or datasets will SKIP.\n!! {}", reason.replace('\n', "\n!! ")));
            Some(reason)
        }
    };
    step("running the whole test suite (cargo test --workspace --release)");
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--release"]).env("RAYON_NUM_THREADS", RAYON_THREADS);
    if let Some(reason) = &offline {
        cmd.env(meft_assets::OFFLINE_VAR, reason.lines().next().unwrap_or("asset fetch failed"));
    }
    let secs = run(&mut cmd)?;
    eprintln!("\n    test suite passed in {secs:.0} s");
    if offline.is_some() {
        loud("tests passed, but real-asset tests were SKIPPED because the asset fetch failed (see above)");
    }
    Ok(())
}

/// The `meft` CLI, built in release mode, with `args`.
fn meft(args: &[&str]) -> Command {
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "-p", "experiments", "--release", "--bin", "meft", "--"]).args(args).env("RAYON_NUM_THREADS", RAYON_THREADS);
    cmd
}

/// `cargo xtask reproduce`: fetch the assets (or fall back to the synthetic task, loudly),
/// build the CLI and run `meft reproduce` with `args` (`--profile`, `--only`, ...), which writes
/// `paper/REPRODUCTION.md`, `paper/figures/` and `paper/results/`.
pub fn reproduce(args: &[String]) -> anyhow::Result<()> {
    let secs = fetch_build_and_run("reproduce", args)?;
    eprintln!("\n    reproduction done in {:.1} min (the report path is printed above)", secs / 60.0);
    Ok(())
}

/// `cargo xtask ablate <knob> --values a,b,c`: the MEFT ablation sweep of `meft ablate`.
pub fn ablate(args: &[String]) -> anyhow::Result<()> {
    fetch_build_and_run("ablate", args).map(|_| ())
}

/// Prerequisites, assets (or the offline reason), a release build of the CLI, then
/// `meft <command> <args>`; returns the command's seconds.
fn fetch_build_and_run(command: &str, args: &[String]) -> anyhow::Result<f64> {
    prereq::ensure()?;
    let offline = fetch_or_reason();
    step("building the meft CLI (release)");
    run(cargo().args(["build", "-p", "experiments", "--release", "--bin", "meft"]))?;
    let mut all: Vec<&str> = vec![command];
    all.extend(args.iter().map(String::as_str));
    if let Some(reason) = &offline {
        all.extend(["--offline-reason", reason.as_str()]);
    }
    step(&format!("meft {command}"));
    run(&mut meft(&all))
}

/// Fetches the assets; on failure says so loudly and returns the reason for the report.
fn fetch_or_reason() -> Option<String> {
    match assets::fetch() {
        Ok(_) => None,
        Err(e) => {
            loud(&format!(
                "NO ASSETS: the pinned model and data could not be fetched; running the SYNTHETIC \
                 fallback (a random tiny model), which the report will state at the top.\n!! {e:#}"
            ));
            Some(format!("asset fetch failed: {}", format!("{e:#}").lines().next().unwrap_or("unknown error")))
        }
    }
}

/// `cargo xtask bench`: every criterion bench of the workspace.
pub fn bench() -> anyhow::Result<()> {
    prereq::ensure()?;
    let mut cmd = cargo();
    cmd.args(["bench", "--workspace"]).env("RAYON_NUM_THREADS", RAYON_THREADS);
    if let Err(e) = assets::fetch() {
        loud(&format!("assets unavailable, benches on the real model will skip: {e:#}"));
        cmd.env(meft_assets::OFFLINE_VAR, "asset fetch failed before `cargo xtask bench`");
    }
    step("running benches (cargo bench --workspace)");
    run(&mut cmd)?;
    Ok(())
}
