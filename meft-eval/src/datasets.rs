//! Dataset names and loaders for the pinned benchmark files (JSONL written by `meft-assets`).
//!
//! Each cache file keeps the source's original fields; this module turns the rows into typed
//! [`Example`]s. Row formats:
//! - `nq_open`: `{question, answer: [..]}` (no id in the source: the id is `nq-` + the FNV-1a hash
//!   of the question in hex; the 3,610 questions are distinct).
//! - `trivia_qa`: `{question, question_id, answer: {value, aliases, normalized_aliases, ..}}`;
//!   answers are the value, then aliases, then normalised aliases (deduplicated, in that order).
//! - `squad`: the oe_eval `doc` `{id, title, query, answers_text}` where `query` is
//!   `Title: ..\nBackground: <context>\nQuestion: <q>\nAnswer:`; the HF layout
//!   `{id, title, context, question, answers: {text: [..]}}` is accepted too.
//! - `gsm8k`: the oe_eval `doc` `{id, question, answer}` where `answer` ends with `#### <n>`; the
//!   training solution drops the `<<calc>>` annotations and ends with `The answer is: <n>`.
//! - `math`: the oe_eval `doc` `{index, problem, solution, level, type, answer?, subset}`; the id is
//!   `<subset>-<index>`; the final answer is `answer`, else the last `\boxed{}` of the solution.
//! - `bfcl_<category>`: see [`crate::bfcl`]. User files: see [`crate::user`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::example::{Example, MathExample, Passage, QaExample};
use crate::jsonl::{Row, map_rows};
use crate::metrics::math::last_boxed;
use crate::split::fnv1a64;
use crate::user::UserFormat;

/// A dataset this crate can load and score.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dataset {
    /// NQ-open validation (3,610 questions).
    NqOpen,
    /// TriviaQA rc.wikipedia.nocontext validation (7,993 questions).
    TriviaQa,
    /// SQuAD v1.1 dev sample (1,000 questions).
    Squad,
    /// GSM8K test (1,319 problems).
    Gsm8k,
    /// MATH test, all seven subjects (5,000 problems).
    Math,
    /// One BFCL category, e.g. `simple_python`.
    Bfcl(String),
    /// User data in one of the user formats.
    User(UserFormat),
}

/// The benchmark names accepted by [`Dataset::parse`] (besides `bfcl_<category>` and `user_*`).
pub const BENCHMARK_NAMES: [&str; 5] = ["nq_open", "trivia_qa", "squad", "gsm8k", "math"];

impl Dataset {
    /// Parses a dataset name: `nq_open`, `trivia_qa`, `squad`, `gsm8k`, `math`, `bfcl_<category>`,
    /// `user_qa`, `user_instruction`, `user_chat`.
    pub fn parse(name: &str) -> Result<Self> {
        let dataset = match name {
            "nq_open" => Self::NqOpen,
            "trivia_qa" => Self::TriviaQa,
            "squad" => Self::Squad,
            "gsm8k" => Self::Gsm8k,
            "math" => Self::Math,
            "user_qa" => Self::User(UserFormat::Qa),
            "user_instruction" => Self::User(UserFormat::Instruction),
            "user_chat" => Self::User(UserFormat::Chat),
            _ => match name.strip_prefix("bfcl_") {
                Some(category) if !category.is_empty() => Self::Bfcl(category.to_owned()),
                _ => {
                    return Err(EvalError::UnknownDataset {
                        name: name.to_owned(),
                        known: format!("{}, bfcl_<category>, user_qa, user_instruction, user_chat", BENCHMARK_NAMES.join(", ")),
                    });
                }
            },
        };
        Ok(dataset)
    }

    /// The canonical name (inverse of [`Dataset::parse`]).
    pub fn name(&self) -> String {
        match self {
            Self::NqOpen => "nq_open".into(),
            Self::TriviaQa => "trivia_qa".into(),
            Self::Squad => "squad".into(),
            Self::Gsm8k => "gsm8k".into(),
            Self::Math => "math".into(),
            Self::Bfcl(category) => format!("bfcl_{category}"),
            Self::User(format) => format!("user_{}", format.name()),
        }
    }

    /// The cache file of a benchmark inside the data directory (`$MEFT_HOME/data`); `None` for
    /// user data, which lives wherever the user keeps it.
    pub fn cache_file(&self, data_dir: &Path) -> Option<PathBuf> {
        match self {
            Self::User(_) => None,
            _ => Some(data_dir.join(format!("{}.jsonl", self.name()))),
        }
    }

    /// Loads every example of the JSONL file at `path`, checking that ids are unique.
    pub fn load(&self, path: &Path) -> Result<Vec<Example>> {
        let examples = match self {
            Self::NqOpen => map_rows(path, nq_open_row)?,
            Self::TriviaQa => map_rows(path, trivia_qa_row)?,
            Self::Squad => map_rows(path, squad_row)?,
            Self::Gsm8k => map_rows(path, gsm8k_row)?,
            Self::Math => map_rows(path, math_row)?,
            Self::Bfcl(_) => map_rows(path, crate::bfcl::bfcl_row)?,
            Self::User(format) => map_rows(path, |row| format.parse_row(row))?,
        };
        check_unique_ids(path, &examples)?;
        Ok(examples)
    }
}

/// Fails on the first id that occurs twice. Lines are counted among non-blank rows.
pub(crate) fn check_unique_ids(path: &Path, examples: &[Example]) -> Result<()> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(examples.len());
    for (index, example) in examples.iter().enumerate() {
        if let Some(&first) = seen.get(example.id()) {
            return Err(EvalError::DuplicateId { path: path.to_path_buf(), line: index + 1, id: example.id().to_owned(), first_line: first });
        }
        seen.insert(example.id(), index + 1);
    }
    Ok(())
}

/// Keeps the first occurrence of each non-empty string, in order.
fn dedup_nonempty(items: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !item.trim().is_empty() && !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// Fails when a row has no usable gold answer.
fn require_answers(row: &Row<'_>, field: &[&str], answers: Vec<String>) -> Result<Vec<String>> {
    if answers.is_empty() {
        return Err(row.schema_error(field, "no non-empty answer; every example needs at least one"));
    }
    Ok(answers)
}

fn nq_open_row(row: &Row<'_>) -> Result<Example> {
    let question = row.str(&["question"])?.to_owned();
    let answers = require_answers(row, &["answer"], dedup_nonempty(row.str_list(&["answer"])?))?;
    let id = format!("nq-{:016x}", fnv1a64(question.as_bytes()));
    Ok(Example::Qa(QaExample { id, question, answers, context: None }))
}

fn trivia_qa_row(row: &Row<'_>) -> Result<Example> {
    let value = row.str(&["answer", "value"])?.to_owned();
    let aliases = row.str_list(&["answer", "aliases"])?;
    let normalized = match row.get(&["answer", "normalized_aliases"]) {
        Some(_) => row.str_list(&["answer", "normalized_aliases"])?,
        None => Vec::new(),
    };
    let all = std::iter::once(value).chain(aliases).chain(normalized);
    Ok(Example::Qa(QaExample {
        id: row.id(&["question_id"])?,
        question: row.str(&["question"])?.to_owned(),
        answers: require_answers(row, &["answer", "value"], dedup_nonempty(all))?,
        context: None,
    }))
}

fn squad_row(row: &Row<'_>) -> Result<Example> {
    let (question, text) = match row.get(&["question"]) {
        Some(_) => (row.str(&["question"])?.to_owned(), row.str(&["context"])?.to_owned()),
        None => split_squad_query(row)?,
    };
    let answers = match row.get(&["answers_text"]) {
        Some(_) => row.str_list(&["answers_text"])?,
        None => row.str_list(&["answers", "text"])?,
    };
    Ok(Example::Qa(QaExample {
        id: row.id(&["id"])?,
        question,
        answers: require_answers(row, &["answers_text"], dedup_nonempty(answers))?,
        context: Some(Passage { title: row.opt_str(&["title"])?.map(str::to_owned), text }),
    }))
}

/// Splits the oe_eval SQuAD `query` into (question, context).
fn split_squad_query(row: &Row<'_>) -> Result<(String, String)> {
    let query = row.str(&["query"])?;
    let shape = "expected `Title: ..\\nBackground: <context>\\nQuestion: <question>\\nAnswer:`";
    let (head, question_part) = query.rsplit_once("\nQuestion: ").ok_or_else(|| row.schema_error(&["query"], shape))?;
    let (_, context) = head.split_once("Background: ").ok_or_else(|| row.schema_error(&["query"], shape))?;
    let question = question_part.trim_end().strip_suffix("Answer:").unwrap_or(question_part).trim();
    Ok((question.to_owned(), context.trim().to_owned()))
}

fn gsm8k_row(row: &Row<'_>) -> Result<Example> {
    let answer = row.str(&["answer"])?;
    let (rationale, final_answer) =
        answer.rsplit_once("####").ok_or_else(|| row.schema_error(&["answer"], "expected the GSM8K form `<rationale>\\n#### <number>`"))?;
    let final_answer = final_answer.trim().to_owned();
    let solution = format!("{}\nThe answer is: {final_answer}", strip_calculator_annotations(rationale).trim_end());
    Ok(Example::Math(MathExample {
        id: row.id(&["id"])?,
        question: row.str(&["question"])?.to_owned(),
        solution,
        final_answer,
        subject: None,
        level: None,
    }))
}

/// Removes GSM8K calculator annotations `<<expr=value>>`.
fn strip_calculator_annotations(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<<") {
        let Some(len) = rest[start..].find(">>") else {
            break;
        };
        out.push_str(&rest[..start]);
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

fn math_row(row: &Row<'_>) -> Result<Example> {
    let subject = match row.opt_str(&["subset"])? {
        Some(subset) => subset.to_owned(),
        None => row.str(&["type"])?.to_lowercase().replace(' ', "_"),
    };
    let solution = row.str(&["solution"])?.to_owned();
    let final_answer = match row.opt_str(&["answer"])? {
        Some(answer) => answer.to_owned(),
        None => last_boxed(&solution).ok_or_else(|| row.schema_error(&["answer"], "absent, and the solution has no \\boxed{...}"))?.to_owned(),
    };
    Ok(Example::Math(MathExample {
        id: format!("{subject}-{}", row.id(&["index"])?),
        question: row.str(&["problem"])?.to_owned(),
        solution,
        final_answer,
        subject: Some(subject),
        level: row.opt_str(&["level"])?.map(str::to_owned),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known_ones() {
        for name in ["nq_open", "trivia_qa", "squad", "gsm8k", "math", "bfcl_simple_python", "user_qa", "user_chat"] {
            assert_eq!(Dataset::parse(name).unwrap().name(), name);
        }
        let err = Dataset::parse("nq").unwrap_err().to_string();
        assert!(err.contains("unknown dataset `nq`") && err.contains("trivia_qa"), "{err}");
        assert!(Dataset::parse("bfcl_").is_err());
    }

    #[test]
    fn calculator_annotations_are_removed() {
        let text = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.";
        assert_eq!(strip_calculator_annotations(text), "Janet sells 16 - 3 - 4 = 9 duck eggs.\nShe makes 9 * 2 = $18.");
        assert_eq!(strip_calculator_annotations("a <<unclosed"), "a <<unclosed");
    }

    #[test]
    fn cache_files_are_named_after_the_dataset() {
        let dir = Path::new("/cache/data");
        assert_eq!(Dataset::NqOpen.cache_file(dir).unwrap(), dir.join("nq_open.jsonl"));
        assert_eq!(Dataset::Bfcl("multiple".into()).cache_file(dir).unwrap(), dir.join("bfcl_multiple.jsonl"));
        assert!(Dataset::User(UserFormat::Qa).cache_file(dir).is_none());
    }
}
