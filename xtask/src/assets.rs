//! `cargo xtask assets`: fetch every pinned asset and print what the cache holds.

use std::time::Instant;

use meft_assets::{Cache, ConsoleProgress, Outcome};

use crate::run::step;

/// Fetches everything into the cache and prints a summary; fails with the fetch error.
pub fn assets_command() -> anyhow::Result<()> {
    let cache = fetch()?;
    print_summary(&cache);
    Ok(())
}

/// Fetches every pinned package (instant when cached) and reports the time taken.
pub fn fetch() -> anyhow::Result<Cache> {
    let cache = Cache::from_env().with_offline(None);
    step(&format!("fetching pinned assets into {} (override with MEFT_HOME)", cache.root().display()));
    let start = Instant::now();
    let outcomes = cache.fetch_all(&ConsoleProgress::default())?;
    let fetched = outcomes.iter().filter(|(_, o)| *o != Outcome::Cached).count();
    eprintln!("    assets ready in {:.1} s ({} of {} packages fetched, the rest cached)", start.elapsed().as_secs_f64(), fetched, outcomes.len());
    Ok(cache)
}

/// Prints every cached file with its size, row count and hash prefix.
pub fn print_summary(cache: &Cache) {
    println!("cache: {}", cache.root().display());
    println!("{:<48} {:>10} {:>7}  sha256", "file", "bytes", "rows");
    for (path, rec) in cache.summary() {
        let rows = rec.rows.map(|r| r.to_string()).unwrap_or_default();
        println!("{path:<48} {:>10} {rows:>7}  {}", rec.bytes, &rec.sha256[..12.min(rec.sha256.len())]);
    }
}
