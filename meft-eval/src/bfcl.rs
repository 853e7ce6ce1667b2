//! BFCL (Berkeley Function Calling Leaderboard v4) rows: our stand-in for the paper's ToolBench.
//!
//! A cache row is the BFCL question row plus `ground_truth` from the matching possible-answer file:
//! `{"id", "question": [[{role, content}, ..]], "function": [{name, description, parameters}],
//!   "ground_truth": [{"<function>": {"<param>": [<allowed value>, ..]}}, ..]}`.
//! Only the single-turn AST categories are supported (simple_*, multiple, parallel*, live_simple,
//! live_multiple, live_parallel*, plus irrelevance / live_irrelevance, which expect no call, and
//! live_relevance, which expects some call). Multi-turn, memory and web-search rows are rejected with
//! a schema error that says so.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::Result;
use crate::example::{ChatMessage, Example, ExpectedCall, Role, ToolExample, ToolExpectation};
use crate::jsonl::{Row, kind};

const UNSUPPORTED: &str = "only single-turn BFCL categories are supported (multi-turn, memory and web-search rows \
                           have a different answer format)";

/// Parses one BFCL cache row.
pub fn bfcl_row(row: &Row<'_>) -> Result<Example> {
    let id = row.id(&["id"])?;
    let messages = question_messages(row)?;
    let Value::Array(functions) = row.require(&["function"])? else {
        return Err(row.schema_error(&["function"], "expected an array of function schemas"));
    };
    let expected = match row.get(&["ground_truth"]) {
        Some(value) => ToolExpectation::Calls(expected_calls(row, value)?),
        None if id.starts_with("irrelevance") || id.starts_with("live_irrelevance") => ToolExpectation::NoCall,
        None if id.starts_with("live_relevance") => ToolExpectation::AnyCall,
        None => {
            return Err(row.schema_error(&["ground_truth"], "missing; only (live_)irrelevance and live_relevance rows may omit it"));
        }
    };
    Ok(Example::Tool(ToolExample { id, messages, functions: functions.clone(), expected }))
}

/// The single turn of `question` (`[[{role, content}, ..]]`) as chat messages.
fn question_messages(row: &Row<'_>) -> Result<Vec<ChatMessage>> {
    let turns = row.require(&["question"])?.as_array().filter(|turns| !turns.is_empty());
    let Some(turns) = turns else {
        return Err(row.schema_error(&["question"], "expected a non-empty array of turns"));
    };
    if turns.len() != 1 {
        return Err(row.schema_error(&["question"], format!("{} turns; {UNSUPPORTED}", turns.len())));
    }
    let Some(messages) = turns[0].as_array() else {
        return Err(row.schema_error(&["question[0]"], "expected an array of {role, content} messages"));
    };
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = format!("question[0][{i}]");
            let role = m.get("role").and_then(Value::as_str).and_then(Role::parse);
            let content = m.get("content").and_then(Value::as_str);
            match (role, content) {
                (Some(role), Some(content)) => Ok(ChatMessage::new(role, content)),
                _ => Err(row.schema_error(&[&field], "expected {role: system|user|assistant|tool, content: string}")),
            }
        })
        .collect()
}

/// Parses `[{"<function>": {"<param>": [allowed, ..]}}, ..]`.
fn expected_calls(row: &Row<'_>, value: &Value) -> Result<Vec<ExpectedCall>> {
    let Value::Array(items) = value else {
        return Err(row.schema_error(&["ground_truth"], format!("expected an array, found {}", kind(value))));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = format!("ground_truth[{i}]");
            let call = item.as_object().filter(|o| o.len() == 1);
            let Some((name, args)) = call.and_then(|o| o.iter().next()) else {
                return Err(row.schema_error(&[&field], format!("expected {{\"<function>\": {{..}}}}; {UNSUPPORTED}")));
            };
            let Some(args) = args.as_object() else {
                return Err(row.schema_error(&[&field, name], "expected an object of parameter -> allowed values"));
            };
            let args = args
                .iter()
                .map(|(param, allowed)| match allowed {
                    Value::Array(values) => Ok((param.clone(), values.clone())),
                    other => Err(row.schema_error(&[&field, name, param], format!("expected an array of allowed values, found {}", kind(other)))),
                })
                .collect::<Result<BTreeMap<_, _>>>()?;
            Ok(ExpectedCall { name: name.clone(), args })
        })
        .collect()
}
