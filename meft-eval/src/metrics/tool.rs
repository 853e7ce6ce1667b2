//! Function-call matching for BFCL (a simplified AST checker) and the IoU of API sets (the paper's
//! ToolBench metric).
//!
//! Parsing a prediction: code fences are stripped; if the text (or its outermost `[..]` / `{..}`)
//! is JSON, calls are read from `{"name", "arguments"|"parameters"|"args"}` objects (arguments may
//! be a JSON-encoded string) or `{"<function>": {args}}` objects, alone or in an array. Otherwise
//! every `name(arg=value, ..)` in the text is read with a Python-literal parser; positional
//! arguments are kept as `#0`, `#1`, .. and so never match BFCL's keyword answers.
//!
//! Matching, following BFCL's AST checker: the number of calls equals the expected number and the
//! calls pair up one to one in any order; a pair matches when the names agree (`.` and `_` are
//! treated alike, as BFCL does for models that cannot emit dots), every given argument is a known
//! parameter, every parameter whose allowed values lack `""` is given, and each given value matches
//! an allowed one. Values: numbers compare numerically (an int matches an equal float), strings
//! after BFCL's standardisation (lower-case; spaces and `,./-_*^` removed; `'` read as `"`), lists
//! element-wise, dicts key-wise (nested allowed-value lists accepted). A string answer also matches
//! a number or boolean with the same standardised text (BFCL's Java/JavaScript answers are strings).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::value::{Cursor, parse_literal};
use crate::example::{ExpectedCall, ToolExpectation};

/// One call read from a prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Function name.
    pub name: String,
    /// Argument name → value.
    pub args: BTreeMap<String, Value>,
}

/// Reads every call in `text` (see the module docs); empty when there is none.
pub fn parse_calls(text: &str) -> Vec<Call> {
    let text = strip_code_fence(text.trim());
    if let Some(calls) = json_calls(text) {
        return calls;
    }
    python_calls(text)
}

fn strip_code_fence(text: &str) -> &str {
    let Some(body) = text.strip_prefix("```") else {
        return text;
    };
    let body = body.split_once('\n').map_or(body, |(_, rest)| rest);
    body.trim_end().strip_suffix("```").unwrap_or(body).trim()
}

fn json_calls(text: &str) -> Option<Vec<Call>> {
    let start = text.find(['[', '{'])?;
    let end = text.rfind([']', '}'])?;
    let value: Value = serde_json::from_str(text.get(start..=end)?).ok()?;
    match value {
        Value::Array(items) => items.iter().map(json_call).collect(),
        object => json_call(&object).map(|call| vec![call]),
    }
}

fn json_call(value: &Value) -> Option<Call> {
    let object = value.as_object()?;
    if let Some(name) = object.get("name").and_then(Value::as_str) {
        let args = ["arguments", "parameters", "args"].iter().find_map(|k| object.get(*k));
        let args = match args {
            None => Value::Object(Default::default()),
            Some(Value::String(encoded)) => serde_json::from_str(encoded).ok()?,
            Some(other) => other.clone(),
        };
        let args = args.as_object()?.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        return Some(Call { name: name.to_owned(), args });
    }
    let (name, args) = object.iter().next().filter(|_| object.len() == 1)?;
    let args = args.as_object()?.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Some(Call { name: name.clone(), args })
}

/// Every `name(args)` whose argument list parses, scanning left to right.
fn python_calls(text: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut offset = 0;
    while offset < text.len() {
        let rest = &text[offset..];
        let Some(open) = rest.find('(') else { break };
        let name_start = rest[..open]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
            .map_or(0, |i| i + rest[i..].chars().next().map_or(1, char::len_utf8));
        let name = rest[name_start..open].trim_matches('.');
        let mut cursor = Cursor::new(&rest[open + 1..]);
        match (name.chars().next(), call_args(&mut cursor)) {
            (Some(first), Some(args)) if first.is_alphabetic() || first == '_' => {
                calls.push(Call { name: name.to_owned(), args });
                offset += open + 1 + cursor.pos();
            }
            _ => offset += open + 1,
        }
    }
    calls
}

/// Parses `arg=value, .., )` (the opening parenthesis already consumed).
fn call_args(cursor: &mut Cursor<'_>) -> Option<BTreeMap<String, Value>> {
    let mut args = BTreeMap::new();
    let mut positional = 0;
    loop {
        if cursor.eat(')') {
            return Some(args);
        }
        let mark = cursor.pos();
        let keyword = cursor.identifier().filter(|_| cursor.eat('=') && !cursor.rest().starts_with('='));
        let key = match keyword {
            Some(name) => name.to_owned(),
            None => {
                cursor.reset(mark);
                positional += 1;
                format!("#{}", positional - 1)
            }
        };
        args.insert(key, cursor.value()?);
        if !cursor.eat(',') {
            return cursor.eat(')').then_some(args);
        }
    }
}

/// Whether the predicted calls satisfy the expectation.
pub fn calls_match(predicted: &[Call], expected: &ToolExpectation) -> bool {
    match expected {
        ToolExpectation::NoCall => predicted.is_empty(),
        ToolExpectation::AnyCall => !predicted.is_empty(),
        ToolExpectation::Calls(calls) => predicted.len() == calls.len() && assign(calls, predicted, &mut vec![false; predicted.len()]),
    }
}

/// Backtracking search for a one-to-one pairing (call lists are short).
fn assign(expected: &[ExpectedCall], predicted: &[Call], used: &mut [bool]) -> bool {
    let Some((first, rest)) = expected.split_first() else {
        return true;
    };
    for i in 0..predicted.len() {
        if !used[i] && call_matches(&predicted[i], first) {
            used[i] = true;
            if assign(rest, predicted, used) {
                return true;
            }
            used[i] = false;
        }
    }
    false
}

fn same_name(a: &str, b: &str) -> bool {
    a == b || a.replace('.', "_") == b.replace('.', "_")
}

fn call_matches(call: &Call, expected: &ExpectedCall) -> bool {
    same_name(&call.name, &expected.name)
        && call.args.keys().all(|k| expected.args.contains_key(k))
        && expected.args.iter().all(|(param, allowed)| allowed_match(call.args.get(param), allowed))
}

/// A given (or missing) value against BFCL's allowed list (`""` = may be omitted).
fn allowed_match(given: Option<&Value>, allowed: &[Value]) -> bool {
    let optional = allowed.iter().any(|a| a.as_str() == Some(""));
    match given {
        None => optional,
        Some(value) => allowed.iter().filter(|a| a.as_str() != Some("")).any(|a| value_eq(value, a)),
    }
}

fn standardize(text: &str) -> String {
    text.chars()
        .filter(|c| !matches!(c, ' ' | ',' | '.' | '/' | '-' | '_' | '*' | '^'))
        .map(|c| if c == '\'' { '"' } else { c })
        .collect::<String>()
        .to_lowercase()
}

/// Value equality under the module's rules.
pub fn value_eq(given: &Value, gold: &Value) -> bool {
    match (given, gold) {
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => super::math::numbers_equal(x, y),
            _ => false,
        },
        (Value::String(a), Value::String(b)) => standardize(a) == standardize(b),
        (Value::Number(_) | Value::Bool(_), Value::String(b)) => standardize(&given.to_string()) == standardize(b),
        (Value::Array(a), Value::Array(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| value_eq(x, y)),
        (Value::Object(a), Value::Object(b)) => {
            a.keys().all(|k| b.contains_key(k))
                && b.iter().all(|(k, gold_v)| match gold_v {
                    Value::Array(allowed) if !matches!(a.get(k), Some(Value::Array(_))) => allowed_match(a.get(k), allowed),
                    _ => a.get(k).is_some_and(|v| value_eq(v, gold_v)),
                })
        }
        (Value::String(a), Value::Array(_) | Value::Object(_)) => {
            parse_literal(a).is_some_and(|parsed| !parsed.is_string() && value_eq(&parsed, gold))
        }
        _ => given == gold,
    }
}

/// Intersection over union of the sets of function names (1.0 when both are empty).
pub fn api_iou<'a>(predicted: impl IntoIterator<Item = &'a str>, expected: impl IntoIterator<Item = &'a str>) -> f64 {
    let p: BTreeSet<&str> = predicted.into_iter().collect();
    let e: BTreeSet<&str> = expected.into_iter().collect();
    let union = p.union(&e).count();
    if union == 0 {
        return 1.0;
    }
    p.intersection(&e).count() as f64 / union as f64
}

#[cfg(test)]
mod tests;
