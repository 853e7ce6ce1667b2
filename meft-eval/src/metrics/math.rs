//! Final-answer accuracy for GSM8K (a number) and MATH (a `\boxed{}` LaTeX expression).
//!
//! GSM8K: the answer is the first number after the last `The answer is` (case-insensitive, the
//! paper's rule), else after the last `####`, else the last number in the text. Beside it,
//! [`Gsm8kExtraction`] gives lm-eval's strict and flexible scoring to the letter. Numbers may carry a
//! sign, thousands commas and decimals; comparison is numeric (`1,000` = `1000` = `1000.0`).
//!
//! MATH: the answer is the content of the last `\boxed{..}` / `\fbox{..}` (nested braces allowed),
//! else what follows `The answer is`. Both sides get a light normalisation (see
//! [`normalize_math_answer`]) and are then compared as strings, or as numbers when both parse.

/// Finds every number in `text` as (start byte, the matched text).
///
/// A number is an optional `-` (a sign only when not preceded by an alphanumeric character),
/// digits with optional thousands commas (a comma must be followed by a digit), and an optional
/// fractional part (a `.` followed by digits).
fn numbers(text: &str) -> Vec<(usize, &str)> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let sign = bytes[i] == b'-' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric());
        if !(bytes[i].is_ascii_digit() || sign) {
            i += 1;
            continue;
        }
        let start = i;
        i += usize::from(sign);
        while i < bytes.len() {
            let digit_follows = bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
            match bytes[i] {
                b'0'..=b'9' => i += 1,
                b',' if digit_follows => i += 1,
                b'.' if digit_follows && !text[start..i].contains('.') => i += 1,
                _ => break,
            }
        }
        found.push((start, &text[start..i]));
    }
    found
}

/// Parses a number written with optional thousands commas.
pub fn parse_number(text: &str) -> Option<f64> {
    let cleaned: String = text.trim().chars().filter(|&c| c != ',').collect();
    cleaned.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Numeric equality with a relative tolerance of 1e-9.
pub fn numbers_equal(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Byte offset just after the last case-insensitive occurrence of `marker` in `text`.
fn after_last(text: &str, marker: &str) -> Option<usize> {
    text.to_ascii_lowercase().rfind(&marker.to_ascii_lowercase()).map(|pos| pos + marker.len())
}

/// The GSM8K answer number in `text` (as written), by the rules in the module docs.
pub fn extract_final_number(text: &str) -> Option<&str> {
    for marker in ["the answer is", "####"] {
        if let Some(pos) = after_last(text, marker)
            && let Some(&(_, number)) = numbers(&text[pos..]).first()
        {
            return Some(number);
        }
    }
    numbers(text).last().map(|&(_, n)| n)
}

/// How a GSM8K answer is read from generated text, for the report's side-by-side columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gsm8kExtraction {
    /// The paper's rule alone: the first number after the last `The answer is`, compared
    /// numerically.
    Paper,
    /// lm-eval's `strict-match`: the first `#### ` followed by `-?[0-9.,]+`, scored as lm-eval's
    /// `gsm8k` task does ([`lm_eval_clean`], then string equality).
    Strict,
    /// lm-eval's `flexible-extract`: the last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`, scored the
    /// same way.
    Flexible,
}

/// The answer `rule` reads from `text`, or `None` (lm-eval's `[invalid]`).
pub fn extract_gsm8k(text: &str, rule: Gsm8kExtraction) -> Option<&str> {
    match rule {
        Gsm8kExtraction::Paper => after_last(text, "the answer is").and_then(|pos| numbers(&text[pos..]).first().map(|&(_, n)| n)),
        Gsm8kExtraction::Strict => lm_eval_strict(text),
        Gsm8kExtraction::Flexible => lm_eval_flexible(text),
    }
}

/// The first `#### ` followed by `-?[0-9.,]+` (the regex's group), as `re.findall` finds it.
fn lm_eval_strict(text: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(at) = text[from..].find("#### ") {
        let start = from + at + 5;
        let rest = &text.as_bytes()[start..];
        let sign = usize::from(rest.first() == Some(&b'-'));
        let body = rest[sign..].iter().take_while(|&&c| c.is_ascii_digit() || c == b'.' || c == b',').count();
        if body > 0 {
            return Some(&text[start..start + sign + body]);
        }
        from += at + 1;
    }
    None
}

/// The last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`, scanning as `re.findall` does (leftmost,
/// the first alternative first, greedy, non-overlapping).
fn lm_eval_flexible(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let class = |c: u8| c.is_ascii_digit() || matches!(c, b'$' | b'.' | b',');
    let (mut i, mut last) = (0, None);
    while i < bytes.len() {
        let body = i + usize::from(bytes[i] == b'-');
        let wide = bytes[body..].iter().take_while(|&&c| class(c)).count();
        let digits = bytes[body..].iter().take_while(|c| c.is_ascii_digit()).count();
        let end = if wide >= 2 { Some(body + wide) } else { (digits >= 1).then_some(body + digits) };
        match end {
            Some(end) => {
                last = Some(&text[i..end]);
                i = end;
            }
            None => i += 1,
        }
    }
    last
}

/// lm-eval `gsm8k`'s `regexes_to_ignore` and `ignore_case`: drop `,` and `$`, everything up to
/// the last `#### `, and a final `.` (Python's `\.$`, which also matches before a final newline),
/// then lower-case.
pub fn lm_eval_clean(text: &str) -> String {
    let mut s: String = text.chars().filter(|&c| c != ',' && c != '$').collect();
    if let Some(pos) = s.rfind("#### ") {
        s.drain(..pos + 5);
    }
    let dot = if s.ends_with(".\n") { s.len().checked_sub(2) } else { s.ends_with('.').then(|| s.len() - 1) };
    if let Some(dot) = dot {
        s.remove(dot);
    }
    s.to_lowercase()
}

/// Whether the answer `rule` reads from `prediction` equals the gold solution (`... #### n`):
/// numerically for [`Gsm8kExtraction::Paper`], as lm-eval's exact match for the other two.
pub fn gsm8k_correct(prediction: &str, gold: &str, rule: Gsm8kExtraction) -> bool {
    let extracted = extract_gsm8k(prediction, rule);
    if rule != Gsm8kExtraction::Paper {
        return lm_eval_clean(extracted.unwrap_or("[invalid]")) == lm_eval_clean(gold);
    }
    let gold_value = extract_final_number(gold).and_then(parse_number);
    match (extracted.and_then(parse_number), gold_value) {
        (Some(p), Some(g)) => numbers_equal(p, g),
        _ => false,
    }
}

/// GSM8K scoring: (correct, the extracted answer).
pub fn final_number_correct(prediction: &str, gold: &str) -> (bool, Option<String>) {
    let extracted = extract_final_number(prediction);
    let gold_value = extract_final_number(gold).and_then(parse_number);
    let correct = match (extracted.and_then(parse_number), gold_value) {
        (Some(p), Some(g)) => numbers_equal(p, g),
        _ => false,
    };
    (correct, extracted.map(str::to_owned))
}

/// The content of the last `\boxed{..}` or `\fbox{..}` (or `\boxed x`), or `None`.
pub fn last_boxed(text: &str) -> Option<&str> {
    let start = ["\\boxed", "\\fbox"].iter().filter_map(|m| text.rfind(m).map(|p| p + m.len())).max()?;
    let rest = &text[start..];
    if rest.starts_with('{') {
        return braced_group(rest);
    }
    let bare = rest.strip_prefix(' ')?.split(['$', ' ', '\n']).next()?;
    (!bare.is_empty()).then_some(bare)
}

/// The MATH answer in a prediction: last boxed expression, else the rest of the line after the
/// last `The answer is`.
pub fn extract_math_answer(text: &str) -> Option<&str> {
    if let Some(boxed) = last_boxed(text) {
        return Some(boxed);
    }
    let pos = after_last(text, "the answer is")?;
    let line = text[pos..].trim_start_matches([':', ' ']).lines().next()?.trim();
    (!line.is_empty()).then_some(line)
}

/// MATH scoring: (correct, the extracted answer).
pub fn math_answer_correct(prediction: &str, gold: &str) -> (bool, Option<String>) {
    let Some(extracted) = extract_math_answer(prediction) else {
        return (false, None);
    };
    let (p, g) = (normalize_math_answer(extracted), normalize_math_answer(gold));
    let correct = match (parse_number(&p), parse_number(&g)) {
        (Some(a), Some(b)) => numbers_equal(a, b),
        _ => p == g,
    };
    (correct, Some(extracted.to_owned()))
}

/// Replaces `\cmd{..}` with its content for text-like commands.
fn unwrap_command(text: &str, command: &str) -> String {
    let mut out = text.to_owned();
    let pattern = format!("{command}{{");
    while let Some(pos) = out.find(&pattern) {
        let open = pos + command.len();
        let Some(inner) = braced_group(&out[open..]) else {
            break;
        };
        let inner = inner.to_owned();
        out.replace_range(pos..open + inner.len() + 2, &inner);
    }
    out
}

/// The content of a `{..}` group at the start of `text`, braces balanced.
fn braced_group(text: &str) -> Option<&str> {
    let inner = text.strip_prefix('{')?;
    let mut depth = 1usize;
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 1 => return Some(&inner[..i]),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Light normalisation of a MATH answer: unwrap `\text{}`/`\mbox{}`/`\textbf{}`; drop `\left`,
/// `\right`, spacing commands, `$`, `%`, degree marks and all whitespace; `\dfrac`/`\tfrac` →
/// `\frac`; drop a single-letter `x=` prefix and a trailing `.`; brace single-character arguments
/// (`\frac12` → `\frac{1}{2}`, `\sqrt2` → `\sqrt{2}`); write an integer ratio `a/b` as `\frac{a}{b}`;
/// drop thousands commas in plain numbers; `.5` → `0.5`.
pub fn normalize_math_answer(answer: &str) -> String {
    let mut s = answer.trim().to_owned();
    for command in ["\\text", "\\textbf", "\\mbox", "\\mathrm"] {
        s = unwrap_command(&s, command);
    }
    for junk in ["\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle", "^{\\circ}", "^\\circ", "\\$", "$", "\\%", "%"] {
        s = s.replace(junk, "");
    }
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac");
    s.retain(|c| !c.is_whitespace());
    if let Some((lhs, rhs)) = s.split_once('=')
        && lhs.len() == 1
        && lhs.chars().all(|c| c.is_ascii_alphabetic())
    {
        s = rhs.to_owned();
    }
    let s = s.strip_suffix('.').unwrap_or(&s);
    let s = brace_short_arguments(s);
    if let Some((a, b)) = s.split_once('/')
        && [a, b].iter().all(|t| !t.is_empty() && t.trim_start_matches('-').chars().all(|c| c.is_ascii_digit()))
    {
        return format!("\\frac{{{a}}}{{{b}}}");
    }
    if parse_number(&s).is_some() {
        let plain: String = s.chars().filter(|&c| c != ',').collect();
        return if plain.starts_with('.') { format!("0{plain}") } else { plain };
    }
    s
}

/// `\frac12` → `\frac{1}{2}`, `\frac1{2}` → `\frac{1}{2}`, `\sqrt2` → `\sqrt{2}`.
fn brace_short_arguments(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut rest = s;
    while !rest.is_empty() {
        let (command, arity) = if rest.starts_with("\\frac") {
            ("\\frac", 2)
        } else if rest.starts_with("\\sqrt") {
            ("\\sqrt", 1)
        } else {
            let c = rest.chars().next().unwrap_or_default();
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        };
        out.push_str(command);
        rest = &rest[command.len()..];
        for _ in 0..arity {
            match rest.chars().next() {
                Some('{') => match braced_group(rest) {
                    Some(inner) => {
                        out.push_str(&format!("{{{inner}}}"));
                        rest = &rest[inner.len() + 2..];
                    }
                    None => break,
                },
                Some(c) if c.is_ascii_alphanumeric() => {
                    out.push_str(&format!("{{{c}}}"));
                    rest = &rest[1..];
                }
                _ => break,
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm8k_extraction_rules_read_different_numbers() {
        let text = "3 apples, then 5 more. The answer is 8 apples.\n#### 8\nCheck: 9";
        assert_eq!(extract_gsm8k(text, Gsm8kExtraction::Paper), Some("8"));
        assert_eq!(extract_gsm8k(text, Gsm8kExtraction::Strict), Some("8"));
        assert_eq!(extract_gsm8k(text, Gsm8kExtraction::Flexible), Some("9"));
        assert_eq!(extract_gsm8k("no marker, 1,200 total", Gsm8kExtraction::Paper), None);
        assert_eq!(extract_gsm8k("#### x 4", Gsm8kExtraction::Strict), None);
        assert!(gsm8k_correct("The answer is 1,200.", "#### 1200", Gsm8kExtraction::Paper));
        assert!(!gsm8k_correct("The answer is 1,200. #### 7", "#### 1200", Gsm8kExtraction::Strict));
    }

    #[test]
    fn gsm8k_extraction_prefers_the_answer_phrase_then_hashes_then_last_number() {
        assert_eq!(extract_final_number("3 eggs... The answer is: 18. Check: 20"), Some("18"));
        assert_eq!(extract_final_number("the answer is $1,234.50."), Some("1,234.50"));
        assert_eq!(extract_final_number("9 * 2 = 18\n#### 18"), Some("18"));
        assert_eq!(extract_final_number("so 5 - 3 = 2 left"), Some("2"));
        assert_eq!(extract_final_number("loss of -7 dollars"), Some("-7"));
        assert_eq!(extract_final_number("x-5"), Some("5"));
        assert_eq!(extract_final_number("no numbers"), None);
        assert_eq!(extract_final_number("The answer is: unknown, maybe 4"), Some("4"));
    }

    #[test]
    fn gsm8k_comparison_is_numeric() {
        for (pred, gold) in [("The answer is: 1,000", "1000"), ("The answer is 18.0", "18"), ("#### 0.50", "0.5")] {
            assert!(final_number_correct(pred, gold).0, "{pred} vs {gold}");
        }
        assert!(!final_number_correct("The answer is: 17", "18").0);
        assert!(!final_number_correct("I do not know", "18").0);
        assert_eq!(final_number_correct("The answer is: 18.", "18").1.as_deref(), Some("18"));
    }

    #[test]
    fn boxed_extraction_handles_nesting_and_takes_the_last() {
        assert_eq!(last_boxed("so $\\boxed{\\frac{1}{2}}$"), Some("\\frac{1}{2}"));
        assert_eq!(last_boxed("\\boxed{1} then \\boxed{\\{a, b\\}}"), Some("\\{a, b\\}"));
        assert_eq!(last_boxed("\\boxed{x^{2}+{y}}"), Some("x^{2}+{y}"));
        assert_eq!(last_boxed("\\fbox{7}"), Some("7"));
        assert_eq!(last_boxed("answer \\boxed 5$"), Some("5"));
        assert_eq!(last_boxed("\\boxed{unclosed"), None);
        assert_eq!(last_boxed("nothing"), None);
    }

    #[test]
    fn math_normalisation_equates_common_variants() {
        let same = [
            ("\\dfrac{1}{2}", "\\frac12"),
            ("\\frac{1}{2}", "1/2"),
            ("x = 5", "5"),
            ("10\\%", "10"),
            ("90^\\circ", "90"),
            ("\\text{(C)}", "(C)"),
            ("\\textbf{7}\\text{cm}", "7cm"),
            ("\\left( 1, 2 \\right)", "(1,2)"),
            ("1,000", "1000"),
            (".5", "0.5"),
            ("\\sqrt2", "\\sqrt{2}"),
            ("5.", "5"),
        ];
        for (a, b) in same {
            assert_eq!(normalize_math_answer(a), normalize_math_answer(b), "{a} vs {b}");
        }
        assert_ne!(normalize_math_answer("\\frac{1}{3}"), normalize_math_answer("\\frac{1}{2}"));
    }

    #[test]
    fn math_scoring_uses_the_boxed_answer_or_the_answer_phrase() {
        assert!(math_answer_correct("Thus $\\boxed{\\dfrac{3}{4}}$.", "\\frac{3}{4}").0);
        assert!(math_answer_correct("The answer is: 2", "2").0);
        assert!(math_answer_correct("\\boxed{2.0}", "2").0);
        assert!(!math_answer_correct("\\boxed{3}", "2").0);
        assert_eq!(math_answer_correct("no answer", "2"), (false, None));
    }
}
