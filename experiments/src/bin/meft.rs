//! The `meft` command-line interface.

fn main() -> anyhow::Result<()> {
    Ok(())
}
