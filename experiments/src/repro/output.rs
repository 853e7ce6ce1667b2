//! Shared output helpers of experiments 2–4: markdown tables, the scale statement, figure paths
//! relative to `paper/`, and the HDF5 copy of each experiment's tables (`results/<name>.h5`,
//! written through meft-eval's self-describing [`meft_eval::h5`] format).

use anyhow::{Context as _, Result};
use meft_eval::h5::{Column, ColumnValues, Table, write_tables};
use meft_eval::results::{RunMetadata, git_revision};

use super::{Context, DataSource, Profile};

/// A markdown table; every row must have as many cells as `header`. A `|` inside a cell (as in
/// `|U|`) is escaped so it does not split the cell.
pub fn md_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let line = |cells: &[String]| {
        let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let rule: Vec<String> = header.iter().map(|_| "---".to_string()).collect();
    let mut s = line(&head) + &line(&rule);
    for r in rows {
        s += &line(r);
    }
    s
}

/// The plain statement of scale opening every section: model, data, profile.
pub fn scale_line(ctx: &Context) -> String {
    let profile = match ctx.profile {
        Profile::Smoke => "smoke",
        Profile::Default => "default",
        Profile::Full => "full",
    };
    match &ctx.source {
        DataSource::Real => format!(
            "**Scale:** SmolLM2-135M-Instruct (30 layers, d = 576) on CPU, real NQ-open data, \
             `{profile}` profile; the paper used LLaMA-7B (32 layers, d = 4096) on a 24 GB GPU."
        ),
        DataSource::Synthetic { reason } => format!(
            "**Scale: SYNTHETIC FALLBACK** ({reason}): a 4-layer random LLaMA (d = 32) on synthetic \
             token facts, `{profile}` profile. These numbers check the pipeline only and say \
             nothing about the paper's claims."
        ),
    }
}

/// `figures/<name>` for every file name `plot` returned.
pub fn figure_paths(names: &[String]) -> Vec<String> {
    names.iter().map(|n| format!("figures/{n}")).collect()
}

/// A numeric HDF5 column.
pub fn f64_column(name: &str, unit: &str, description: &str, values: Vec<f64>) -> Column {
    Column::new(name, unit, description, ColumnValues::F64(values))
}

/// A count / bytes HDF5 column.
pub fn u64_column(name: &str, unit: &str, description: &str, values: Vec<u64>) -> Column {
    Column::new(name, unit, description, ColumnValues::U64(values))
}

/// Writes `tables` to `results/<name>.h5` with the run metadata; returns the path relative to
/// `paper/`.
pub fn write_h5(ctx: &Context, name: &str, description: &str, config: &serde_json::Value, tables: &[Table]) -> Result<String> {
    let dir = ctx.results_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.h5"));
    let metadata = RunMetadata { config_json: config.to_string(), git_revision: git_revision(), description: description.into() };
    write_tables(&path, &metadata, tables).with_context(|| format!("writing {}", path.display()))?;
    Ok(format!("results/{name}.h5"))
}

/// `bytes` in MiB with two decimals.
pub fn mib(bytes: f64) -> String {
    format!("{:.2}", bytes / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_markdown() {
        let t = md_table(&["a", "b"], &[vec!["1".into(), "2".into()]]);
        assert_eq!(t, "| a | b |\n| --- | --- |\n| 1 | 2 |\n");
        assert_eq!(figure_paths(&["x.png".into()]), vec!["figures/x.png".to_string()]);
        assert_eq!(mib(3.0 * 1024.0 * 1024.0), "3.00");
        assert_eq!(md_table(&["|U|"], &[]), "| \\|U\\| |\n| --- |\n");
    }
}
