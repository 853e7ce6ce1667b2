//! The `meft` command-line interface (see `experiments::cli`).
//!
//! The command runs on a thread of rayon's global pool, not beside it: every parallel loop of the
//! kernels then starts from a pool worker, without waking another thread to run its first part
//! (with one thread, nothing is handed across threads at all).

use anyhow::Context;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = experiments::cli::Cli::parse();
    let pool = rayon::ThreadPoolBuilder::new().build_global();
    pool.context("starting the thread pool")?;
    rayon::scope(|_| experiments::cli::run(cli))
}
