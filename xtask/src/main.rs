//! Project automation (`cargo xtask <command>`): installs prerequisites, fetches the pinned
//! assets, and drives `cargo`. It links no ML crate, so it builds in seconds on a fresh machine
//! before anything heavy is compiled.

mod assets;
mod gpu_bundle;
mod prereq;
mod run;
mod tasks;

use clap::{Parser, Subcommand};

/// meft-rs automation.
#[derive(Parser)]
#[command(name = "cargo xtask", about = "meft-rs automation: assets, tests, reproduction, benches")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch every pinned asset into the cache ($MEFT_HOME, default ~/.cache/meft) and print it.
    Assets,
    /// The test command: prerequisites, assets, then the whole workspace test suite.
    Test,
    /// Fetch assets and write paper/REPRODUCTION.md (args go to `meft reproduce`:
    /// --profile smoke|default|full, --only <experiment>, ...).
    Reproduce {
        /// Arguments for `meft reproduce` (see `meft reproduce --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// MEFT ablation sweep: `cargo xtask ablate experts --values 1,4,16,64,256` (also k, p, c).
    Ablate {
        /// Arguments for `meft ablate` (see `meft ablate --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the criterion benches of every crate (`cargo bench --workspace`).
    Bench,
    /// Build the cuda-featured binaries with the pinned CUDA 13.0 pieces and pack them for the GPU machine.
    GpuBundle,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Assets => assets::assets_command(),
        Command::Test => tasks::test(),
        Command::Reproduce { args } => tasks::reproduce(&args),
        Command::Ablate { args } => tasks::ablate(&args),
        Command::Bench => tasks::bench(),
        Command::GpuBundle => gpu_bundle::gpu_bundle(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nxtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
