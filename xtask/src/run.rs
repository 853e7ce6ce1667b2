//! Running child processes with the command line echoed, timing, and a clear failure message.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// A `cargo` command (honouring `$CARGO`) run from the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Prints a step banner.
pub fn step(text: &str) {
    eprintln!("\n==> {text}");
}

/// Prints a message that must not be missed.
pub fn loud(text: &str) {
    let bar = "!".repeat(78);
    eprintln!("\n{bar}\n!! {text}\n{bar}\n");
}

/// Runs `cmd` with inherited stdio; fails when it exits non-zero. Returns the seconds it took.
pub fn run(cmd: &mut Command) -> anyhow::Result<f64> {
    let shown = show(cmd);
    eprintln!("    $ {shown}");
    let start = Instant::now();
    let status = cmd.status().with_context(|| format!("could not start `{shown}`"))?;
    let secs = start.elapsed().as_secs_f64();
    if !status.success() {
        bail!("`{shown}` failed ({status}) after {secs:.1} s");
    }
    Ok(secs)
}

/// The command line as text.
pub fn show(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}
