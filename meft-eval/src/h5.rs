//! HDF5 output: per-example predictions and per-step traces as self-describing column tables.
//!
//! Layout of a file written by [`write_tables`]:
//! - root attributes: `format` (`meft-results/1`), `producer` (`meft-eval <version>`), `config`
//!   (the run configuration as JSON), `git_revision`, `description`;
//! - one group per [`Table`], with attributes `description` and `rows`;
//! - one 1-D dataset per [`Column`] (f64, u64 or variable-length UTF-8 strings), with attributes
//!   `unit` (e.g. `bytes`, `s`, `1` for dimensionless) and `description`.
//!
//! A table is a plain set of equal-length columns, so the trainer can turn its ledger (bytes moved,
//! rows gathered, timings per step) into a [`Table`] without this crate knowing the ledger type.
//! The file is written to `<name>.tmp`, flushed and renamed, like the JSON results.

use std::path::Path;

use hdf5::types::VarLenUnicode;

use crate::error::{EvalError, Result};
use crate::results::{RunMetadata, commit_temp, temp_path};
use crate::score::Report;

/// Format tag stored in the `format` root attribute.
pub const FORMAT: &str = "meft-results/1";

/// The values of one column.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnValues {
    /// Floating-point values (NaN marks "not defined for this row").
    F64(Vec<f64>),
    /// Counts, byte sizes, step numbers.
    U64(Vec<u64>),
    /// Text (UTF-8).
    Text(Vec<String>),
}

impl ColumnValues {
    fn len(&self) -> usize {
        match self {
            Self::F64(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::Text(v) => v.len(),
        }
    }
}

/// One named column with its unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Dataset name inside the table group.
    pub name: String,
    /// Unit (`bytes`, `s`, `tokens`, `1` for dimensionless, `text` for strings).
    pub unit: String,
    /// What the column holds.
    pub description: String,
    /// The values.
    pub values: ColumnValues,
}

impl Column {
    /// A column.
    pub fn new(name: &str, unit: &str, description: &str, values: ColumnValues) -> Self {
        Self { name: name.into(), unit: unit.into(), description: description.into(), values }
    }
}

/// A table of equal-length columns, stored as one HDF5 group.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Group name.
    pub name: String,
    /// What a row is.
    pub description: String,
    /// The columns.
    pub columns: Vec<Column>,
}

impl Table {
    /// The number of rows, or an error when the columns differ in length.
    pub fn rows(&self) -> Result<usize> {
        let rows = self.columns.first().map_or(0, |c| c.values.len());
        match self.columns.iter().find(|c| c.values.len() != rows) {
            Some(c) => Err(EvalError::Table {
                table: self.name.clone(),
                problem: format!("column `{}` has {} rows, expected {rows}", c.name, c.values.len()),
            }),
            None => Ok(rows),
        }
    }
}

/// The per-example table of a [`Report`]: id, prediction, references (JSON array), scores and the
/// extracted answer. Undefined scores are NaN; a missing prediction is the empty string with
/// `has_prediction` 0.
pub fn report_table(report: &Report) -> Table {
    let rows = &report.examples;
    let text = |f: fn(&crate::score::ExampleResult) -> String| ColumnValues::Text(rows.iter().map(f).collect());
    let score =
        |f: fn(&crate::score::ExampleScores) -> Option<f64>| ColumnValues::F64(rows.iter().map(|r| f(&r.scores).unwrap_or(f64::NAN)).collect());
    let has = ColumnValues::U64(rows.iter().map(|r| u64::from(r.prediction.is_some())).collect());
    let columns = vec![
        Column::new("id", "text", "example id", text(|r| r.id.clone())),
        Column::new("prediction", "text", "model output", text(|r| r.prediction.clone().unwrap_or_default())),
        Column::new("has_prediction", "1", "1 when a prediction was given", has),
        Column::new("references", "text", "gold references as a JSON array", text(|r| serde_json::to_string(&r.references).unwrap_or_default())),
        Column::new("primary", "1", "primary metric (0 or 1)", score(|s| Some(s.primary))),
        Column::new("squad_em", "1", "SQuAD-normalised EM (NaN: not a text metric)", score(|s| s.squad_em)),
        Column::new("squad_f1", "1", "SQuAD token F1 (NaN: not a text metric)", score(|s| s.squad_f1)),
        Column::new("api_iou", "1", "IoU of called vs expected function names (NaN: undefined)", score(|s| s.api_iou)),
        Column::new("trivia_em", "1", "TriviaQA official v1.0 EM over the aliases (NaN: not TriviaQA)", score(|s| s.trivia_em)),
        Column::new("gsm8k_strict", "1", "lm-eval GSM8K strict-match exact match (NaN: not GSM8K)", score(|s| s.gsm8k_strict)),
        Column::new("gsm8k_flexible", "1", "lm-eval GSM8K flexible-extract exact match (NaN: not GSM8K)", score(|s| s.gsm8k_flexible)),
        Column::new("extracted", "text", "answer read from the prediction", text(|r| r.scores.extracted.clone().unwrap_or_default())),
    ];
    let metric = serde_json::to_string(&report.metric).unwrap_or_default();
    Table { name: "predictions".into(), description: format!("one row per scored example of `{}`; metric {metric}", report.dataset), columns }
}

/// Writes `tables` with `metadata` to the HDF5 file `path` (replacing it atomically).
pub fn write_tables(path: &Path, metadata: &RunMetadata, tables: &[Table]) -> Result<()> {
    for table in tables {
        table.rows()?;
    }
    let tmp = temp_path(path);
    let err = |what: &str| {
        let what = what.to_owned();
        move |source| EvalError::Hdf5 { path: path.to_path_buf(), what, source }
    };
    {
        let file = hdf5::File::create(&tmp).map_err(err("create file"))?;
        let root_attrs = [
            ("format", FORMAT.to_owned()),
            ("producer", format!("meft-eval {}", env!("CARGO_PKG_VERSION"))),
            ("config", metadata.config_json.clone()),
            ("git_revision", metadata.git_revision.clone()),
            ("description", metadata.description.clone()),
        ];
        for (name, value) in &root_attrs {
            text_attr(&file, name, value).map_err(err(&format!("root attribute {name}")))?;
        }
        for table in tables {
            write_table(&file, table).map_err(err(&format!("table {}", table.name)))?;
        }
        file.close().map_err(err("close file"))?;
    }
    commit_temp(&tmp, path)
}

fn write_table(file: &hdf5::File, table: &Table) -> hdf5::Result<()> {
    let group = file.create_group(&table.name)?;
    text_attr(&group, "description", &table.description)?;
    let rows = table.columns.first().map_or(0, |c| c.values.len()) as u64;
    group.new_attr::<u64>().create("rows")?.write_scalar(&rows)?;
    for column in &table.columns {
        let builder = group.new_dataset_builder();
        let dataset = match &column.values {
            ColumnValues::F64(v) => builder.with_data(v.as_slice()).create(column.name.as_str())?,
            ColumnValues::U64(v) => builder.with_data(v.as_slice()).create(column.name.as_str())?,
            ColumnValues::Text(v) => {
                let texts = v.iter().map(|s| to_varlen(s)).collect::<hdf5::Result<Vec<_>>>()?;
                builder.with_data(texts.as_slice()).create(column.name.as_str())?
            }
        };
        text_attr(&dataset, "unit", &column.unit)?;
        text_attr(&dataset, "description", &column.description)?;
    }
    Ok(())
}

/// HDF5 strings cannot hold NUL; it is replaced by U+FFFD.
fn to_varlen(text: &str) -> hdf5::Result<VarLenUnicode> {
    text.replace('\0', "\u{fffd}").parse::<VarLenUnicode>().map_err(|e| hdf5::Error::from(e.to_string()))
}

fn text_attr(location: &hdf5::Location, name: &str, value: &str) -> hdf5::Result<()> {
    location.new_attr::<VarLenUnicode>().create(name)?.write_scalar(&to_varlen(value)?)
}

#[cfg(test)]
mod tests;
