//! User data as JSONL, in three formats:
//! - QA: `{"id"?, "question": "..", "answers": [".."]}` (or `"answer": ".."`);
//! - instruction: `{"id"?, "instruction": "..", "input"?: "..", "output": ".."}`;
//! - chat: `{"id"?, "messages": [{"role": "system|user|assistant|tool", "content": ".."}, ...]}`,
//!   whose last message is the assistant's reference reply.
//!
//! `id` may be a string or an integer. When absent, the id is `user-` + the hex FNV-1a hash of the
//! row's text (question; instruction and input; or all message contents), so ids stay stable when
//! rows are reordered; two identical rows then give a duplicate-id error that says to add ids.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::datasets::check_unique_ids;
use crate::error::Result;
use crate::example::{ChatExample, ChatMessage, Example, InstructionExample, QaExample, Role};
use crate::jsonl::{Row, kind, map_rows};
use crate::split::fnv1a64;

/// One of the user data formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserFormat {
    /// Question / answers.
    Qa,
    /// Instruction / input / output.
    Instruction,
    /// Chat messages.
    Chat,
}

impl UserFormat {
    /// The short name used in dataset names (`user_<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Qa => "qa",
            Self::Instruction => "instruction",
            Self::Chat => "chat",
        }
    }

    /// Parses one row of this format.
    pub fn parse_row(self, row: &Row<'_>) -> Result<Example> {
        match self {
            Self::Qa => qa_row(row),
            Self::Instruction => instruction_row(row),
            Self::Chat => chat_row(row),
        }
    }

    /// The format of a row, judged by its keys (`messages`, `instruction`, else `question`).
    pub fn detect(row: &Row<'_>) -> Result<Self> {
        if row.object.contains_key("messages") {
            Ok(Self::Chat)
        } else if row.object.contains_key("instruction") {
            Ok(Self::Instruction)
        } else if row.object.contains_key("question") {
            Ok(Self::Qa)
        } else {
            Err(row.schema_error(&["<row>"], "cannot tell the format: expected a `messages`, `instruction` or `question` field"))
        }
    }
}

/// Loads a user JSONL file whose format is detected from its first row; every row must then have
/// that format. Returns the format and the examples (ids checked for uniqueness).
pub fn load_user_file(path: &Path) -> Result<(UserFormat, Vec<Example>)> {
    let mut format = None;
    let examples = map_rows(path, |row| {
        let fmt = match format {
            Some(fmt) => fmt,
            None => *format.insert(UserFormat::detect(row)?),
        };
        fmt.parse_row(row)
    })?;
    check_unique_ids(path, &examples)?;
    Ok((format.unwrap_or(UserFormat::Qa), examples))
}

/// The given id, or `user-<hash of text>`.
fn id_or_hash(row: &Row<'_>, text: &str) -> Result<String> {
    match row.get(&["id"]) {
        Some(_) => row.id(&["id"]),
        None => Ok(format!("user-{:016x}", fnv1a64(text.as_bytes()))),
    }
}

fn qa_row(row: &Row<'_>) -> Result<Example> {
    let question = row.str(&["question"])?.to_owned();
    let field: &[&str] = if row.get(&["answers"]).is_some() { &["answers"] } else { &["answer"] };
    let answers: Vec<String> = row.str_list(field)?.into_iter().filter(|a| !a.trim().is_empty()).collect();
    if answers.is_empty() {
        return Err(row.schema_error(field, "no non-empty answer; give `answers: [\"..\"]` or `answer: \"..\"`"));
    }
    Ok(Example::Qa(QaExample { id: id_or_hash(row, &question)?, question, answers, context: None }))
}

fn instruction_row(row: &Row<'_>) -> Result<Example> {
    let instruction = row.str(&["instruction"])?.to_owned();
    let input = row.opt_str(&["input"])?.filter(|s| !s.trim().is_empty()).map(str::to_owned);
    let key = format!("{instruction}\n{}", input.as_deref().unwrap_or(""));
    Ok(Example::Instruction(InstructionExample { id: id_or_hash(row, &key)?, instruction, input, output: row.str(&["output"])?.to_owned() }))
}

fn chat_row(row: &Row<'_>) -> Result<Example> {
    let Value::Array(items) = row.require(&["messages"])? else {
        return Err(row.schema_error(&["messages"], "expected an array of {role, content} objects"));
    };
    let messages = items.iter().enumerate().map(|(i, item)| message(row, i, item)).collect::<Result<Vec<_>>>()?;
    let last_is_reply = messages.last().is_some_and(|m| m.role == Role::Assistant);
    if messages.len() < 2 || !last_is_reply {
        return Err(row.schema_error(&["messages"], "need at least two messages and the last must have role `assistant` (the reference reply)"));
    }
    let key: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    Ok(Example::Chat(ChatExample { id: id_or_hash(row, &key.join("\n"))?, messages }))
}

fn message(row: &Row<'_>, index: usize, item: &Value) -> Result<ChatMessage> {
    let field = format!("messages[{index}]");
    let text_field = |name: &str| -> Result<&str> {
        let value = item.get(name).ok_or_else(|| row.schema_error(&[&field, name], "missing"))?;
        value.as_str().ok_or_else(|| row.schema_error(&[&field, name], format!("expected a string, found {}", kind(value))))
    };
    let role_name = text_field("role")?;
    let role = Role::parse(role_name)
        .ok_or_else(|| row.schema_error(&[&field, "role"], format!("unknown role `{role_name}`; use system, user, assistant or tool")))?;
    Ok(ChatMessage::new(role, text_field("content")?))
}
