//! A small parser for Python / JSON literals, used to read function-call arguments from model text.
//!
//! Accepts strings (`'..'` or `".."` with backslash escapes), integers and floats (sign, exponent),
//! `True`/`False`/`None` and `true`/`false`/`null`, lists `[..]`, tuples `(..)` (as arrays), dicts
//! `{k: v}` (keys become strings), and bare identifiers such as `mapController` (read as strings,
//! since BFCL's Java/JavaScript answers name variables). Trailing commas are allowed.

use serde_json::{Map, Number, Value};

/// A cursor over the text being parsed.
pub struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    /// The byte offset reached.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Moves back (or forward) to a byte offset previously returned by [`Cursor::pos`].
    pub fn reset(&mut self, pos: usize) {
        self.pos = pos;
    }

    /// The unparsed rest.
    pub fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    /// Skips whitespace.
    pub fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// Consumes `c` (after whitespace) if it is next.
    pub fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.rest().starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    /// Reads an identifier (letters, digits, `_`, and `.` inside dotted names).
    pub fn identifier(&mut self) -> Option<&'a str> {
        self.skip_ws();
        let rest = self.rest();
        let first = rest.chars().next()?;
        if !(first.is_alphabetic() || first == '_') {
            return None;
        }
        let len = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.')).unwrap_or(rest.len());
        let name = rest[..len].trim_end_matches('.');
        self.pos += name.len();
        Some(name)
    }

    /// Reads one literal value.
    pub fn value(&mut self) -> Option<Value> {
        self.skip_ws();
        let c = self.rest().chars().next()?;
        match c {
            '\'' | '"' => self.string(c).map(Value::String),
            '[' => self.sequence('[', ']'),
            '(' => self.sequence('(', ')'),
            '{' => self.dict(),
            '-' | '+' | '0'..='9' | '.' => self.number(),
            _ => self.word(),
        }
    }

    fn string(&mut self, quote: char) -> Option<String> {
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    let (_, escaped) = chars.next()?;
                    out.push(match escaped {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        other => other,
                    });
                }
                c if c == quote => {
                    self.pos += i + 1;
                    return Some(out);
                }
                c => out.push(c),
            }
        }
        None
    }

    fn sequence(&mut self, open: char, close: char) -> Option<Value> {
        self.eat(open);
        let mut items = Vec::new();
        loop {
            if self.eat(close) {
                return Some(Value::Array(items));
            }
            items.push(self.value()?);
            if !self.eat(',') {
                return self.eat(close).then_some(Value::Array(items));
            }
        }
    }

    fn dict(&mut self) -> Option<Value> {
        self.eat('{');
        let mut map = Map::new();
        loop {
            if self.eat('}') {
                return Some(Value::Object(map));
            }
            let key = match self.value()? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            if !self.eat(':') {
                return None;
            }
            map.insert(key, self.value()?);
            if !self.eat(',') {
                return self.eat('}').then_some(Value::Object(map));
            }
        }
    }

    fn number(&mut self) -> Option<Value> {
        let rest = self.rest();
        let len = rest
            .char_indices()
            .find(|&(i, c)| {
                let exponent_sign = (c == '-' || c == '+') && i > 0 && rest[..i].ends_with(['e', 'E']);
                !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E') || ((c == '-' || c == '+') && (i == 0 || exponent_sign)))
            })
            .map_or(rest.len(), |(i, _)| i);
        let text = rest[..len].trim_start_matches('+');
        let number = match text.parse::<i64>() {
            Ok(int) => Number::from(int),
            Err(_) => Number::from_f64(text.parse::<f64>().ok()?)?,
        };
        self.pos += len;
        Some(Value::Number(number))
    }

    fn word(&mut self) -> Option<Value> {
        let word = self.identifier()?;
        Some(match word {
            "True" | "true" => Value::Bool(true),
            "False" | "false" => Value::Bool(false),
            "None" | "null" => Value::Null,
            other => Value::String(other.to_owned()),
        })
    }
}

/// Parses `text` as exactly one literal (surrounding whitespace allowed).
pub fn parse_literal(text: &str) -> Option<Value> {
    let mut cursor = Cursor::new(text);
    let value = cursor.value()?;
    cursor.skip_ws();
    cursor.rest().is_empty().then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_python_and_json_literals() {
        let cases = [
            ("'it\\'s'", json!("it's")),
            ("\"a\\nb\"", json!("a\nb")),
            ("42", json!(42)),
            ("-3.5e2", json!(-350.0)),
            ("+7", json!(7)),
            ("True", json!(true)),
            ("null", json!(null)),
            ("[1, 'x', [2, 3],]", json!([1, "x", [2, 3]])),
            ("(1, 2)", json!([1, 2])),
            ("{'a': 1, \"b\": [None]}", json!({"a": 1, "b": [null]})),
            ("{1: 'x'}", json!({"1": "x"})),
            ("mapController", json!("mapController")),
            ("math.pi", json!("math.pi")),
            ("[]", json!([])),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_literal(text), Some(expected), "{text}");
        }
    }

    #[test]
    fn rejects_malformed_literals() {
        for text in ["'open", "[1, 2", "{'a' 1}", "1 2", "", "--1", "{'a': }"] {
            assert_eq!(parse_literal(text), None, "{text}");
        }
    }
}
