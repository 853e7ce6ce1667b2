//! The `meft` command-line interface (see `experiments::cli`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    experiments::cli::run(experiments::cli::Cli::parse())
}
