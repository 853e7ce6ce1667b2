//! Question-answering metrics: the paper's substring EM and the SQuAD v1.1 EM / F1.
//!
//! SQuAD normalisation follows the official v1.1 evaluation script: lower-case, remove ASCII
//! punctuation (Python's `string.punctuation`), replace the whole words `a`, `an`, `the` with a
//! space (a "word" is a maximal run of alphanumeric characters or `_`, as Python's `\b`), then
//! collapse whitespace. F1 is over whitespace tokens of the normalised strings with multiset
//! overlap; as in v1.1, an empty prediction or gold scores F1 0. Both take the maximum over golds.
//! "Whitespace" is Python's `str.split()` set: Unicode White_Space plus U+001C–U+001F.
//!
//! TriviaQA EM follows its official v1.0 script: underscores become spaces, lower-case, ASCII
//! punctuation and the quotes ‘ ’ ´ ` become spaces (SQuAD removes punctuation instead, so
//! `don't` is `dont` there and `don t` here), then the articles and whitespace as SQuAD; the
//! maximum over the aliases. `tests/canonical_scoring.rs` checks both against the rules as
//! written in Python (`tools/make_scoring_fixture.py`).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Whether a substring match respects case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseRule {
    /// Exact characters (the paper's NQ rule).
    Sensitive,
    /// Both sides lower-cased first (the paper's SQuAD rule).
    Insensitive,
}

/// The paper's EM: some non-empty gold answer occurs in `prediction` as a substring.
///
/// Empty golds are ignored (the empty string is a substring of everything).
pub fn substring_match(prediction: &str, golds: &[String], case: CaseRule) -> bool {
    let prepare = |text: &str| match case {
        CaseRule::Sensitive => text.to_owned(),
        CaseRule::Insensitive => text.to_lowercase(),
    };
    let haystack = prepare(prediction);
    golds.iter().filter(|g| !g.is_empty()).any(|gold| haystack.contains(&prepare(gold)))
}

/// SQuAD v1.1 answer normalisation.
pub fn normalize_answer(text: &str) -> String {
    let lowered = text.to_lowercase();
    let no_punct: String = lowered.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    join_words(&remove_articles(&no_punct))
}

/// TriviaQA v1.0 answer normalisation (see the module docs).
pub fn normalize_trivia_answer(text: &str) -> String {
    let lowered = text.replace('_', " ").to_lowercase();
    let spaced: String =
        lowered.chars().map(|c| if c.is_ascii_punctuation() || matches!(c, '\u{2018}' | '\u{2019}' | '\u{b4}') { ' ' } else { c }).collect();
    join_words(&remove_articles(&spaced))
}

/// TriviaQA's official exact match: the normalised prediction equals some normalised alias.
pub fn trivia_exact_match(prediction: &str, aliases: &[String]) -> bool {
    let pred = normalize_trivia_answer(prediction);
    aliases.iter().any(|a| normalize_trivia_answer(a) == pred)
}

/// Python's `" ".join(text.split())`.
fn join_words(text: &str) -> String {
    let python_space = |c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c);
    text.split(python_space).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Replaces each whole word `a`, `an` or `the` with one space.
fn remove_articles(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if is_word_char(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// SQuAD exact match: the normalised prediction equals some normalised gold.
pub fn exact_match(prediction: &str, golds: &[String]) -> bool {
    let pred = normalize_answer(prediction);
    golds.iter().any(|g| normalize_answer(g) == pred)
}

/// SQuAD token F1, maximised over golds (0 when there are no golds).
pub fn f1(prediction: &str, golds: &[String]) -> f64 {
    golds.iter().map(|g| token_f1(prediction, g)).fold(0.0, f64::max)
}

/// Token F1 between one prediction and one gold.
fn token_f1(prediction: &str, gold: &str) -> f64 {
    let pred = normalize_answer(prediction);
    let gold = normalize_answer(gold);
    let pred_tokens: Vec<&str> = pred.split_whitespace().collect();
    let gold_tokens: Vec<&str> = gold.split_whitespace().collect();
    let mut gold_counts: HashMap<&str, usize> = HashMap::new();
    for t in &gold_tokens {
        *gold_counts.entry(t).or_default() += 1;
    }
    let mut same = 0usize;
    for t in &pred_tokens {
        if let Some(count) = gold_counts.get_mut(t).filter(|c| **c > 0) {
            *count -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / pred_tokens.len() as f64;
    let recall = same as f64 / gold_tokens.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golds(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn substring_em_case_rules() {
        let g = golds(&["December 1972"]);
        assert!(substring_match("It was in December 1972 UTC.", &g, CaseRule::Sensitive));
        assert!(!substring_match("it was in december 1972", &g, CaseRule::Sensitive));
        assert!(substring_match("it was in december 1972", &g, CaseRule::Insensitive));
        assert!(!substring_match("anything", &golds(&[""]), CaseRule::Insensitive));
        assert!(!substring_match("anything", &[], CaseRule::Sensitive));
    }

    // Expected values below were produced by the official SQuAD v1.1 `evaluate-v1.1.py` functions
    // (`normalize_answer`, `exact_match_score`, `f1_score`) run on the same strings.
    #[test]
    fn normalization_matches_the_official_script() {
        let cases = [
            ("The Denver Broncos", "denver broncos"),
            ("  A  dog,\tan apple!  ", "dog apple"),
            ("the's theory", "thes theory"),
            ("the’s theory", "’s theory"),
            ("ΤΗΕ Über a1 an", "τηε über a1"),
            ("Theatre, anthem & Athens", "theatre anthem athens"),
            ("U.S.A.", "usa"),
            ("1,000", "1000"),
            ("Saint-Étienne", "saintétienne"),
            ("the – an — a", "– —"),
            ("an_a the_", "ana"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_answer(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn exact_match_and_f1_match_the_official_script() {
        assert!(exact_match("the Denver Broncos!", &golds(&["Denver Broncos"])));
        assert!(!exact_match("Denver", &golds(&["Denver Broncos"])));
        let cases: [(&str, &[&str], f64); 6] = [
            ("Denver Broncos", &["Denver Broncos"], 1.0),
            ("the Broncos", &["Denver Broncos"], 2.0 / 3.0),
            ("Denver Broncos win", &["Broncos", "Denver Broncos"], 0.8),
            ("a a a", &["a"], 0.0),
            ("cat cat dog", &["cat dog dog"], 2.0 / 3.0),
            ("", &["x"], 0.0),
        ];
        for (pred, gold, expected) in cases {
            let got = f1(pred, &golds(gold));
            assert!((got - expected).abs() < 1e-12, "f1({pred:?}, {gold:?}) = {got}, expected {expected}");
        }
    }

    #[test]
    fn f1_is_symmetric_and_bounded() {
        let pairs = [("a b c", "b c d"), ("x y", "y"), ("one two three", "three two one")];
        for (a, b) in pairs {
            let ab = f1(a, &golds(&[b]));
            let ba = f1(b, &golds(&[a]));
            assert!((ab - ba).abs() < 1e-12 && (0.0..=1.0).contains(&ab));
        }
    }
}
