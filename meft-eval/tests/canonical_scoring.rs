//! Our scorers against the canonical rules on tricky strings: SQuAD v1.1 EM / F1, TriviaQA v1.0
//! EM and lm-eval's GSM8K strict and flexible scoring, as `tools/make_scoring_fixture.py` writes
//! them from their definitions (articles, punctuation, unicode quotes and spaces, numbers with
//! commas and signs, first vs last markers).

use meft_eval::metrics::math::{Gsm8kExtraction, extract_gsm8k, gsm8k_correct};
use meft_eval::metrics::qa::{exact_match, f1, trivia_exact_match};
use serde_json::Value;

fn rows(kind: &str) -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/canonical_scores.jsonl");
    let text = std::fs::read_to_string(path).expect("fixture");
    let all: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("fixture row")).collect();
    all.into_iter().filter(|r| r["kind"] == kind).collect()
}

fn text<'a>(row: &'a Value, key: &str) -> &'a str {
    row[key].as_str().unwrap_or_else(|| panic!("{key} in {row}"))
}

fn indicator(flag: bool) -> f64 {
    if flag { 1.0 } else { 0.0 }
}

#[test]
fn squad_and_trivia_scores_equal_the_official_scripts_on_every_fixture_row() {
    let rows = rows("qa");
    assert!(rows.len() >= 20);
    let mut wrong = Vec::new();
    for row in &rows {
        let prediction = text(row, "prediction");
        let golds: Vec<String> = row["golds"].as_array().expect("golds").iter().map(|g| g.as_str().expect("gold").to_owned()).collect();
        let ours = [indicator(exact_match(prediction, &golds)), f1(prediction, &golds), indicator(trivia_exact_match(prediction, &golds))];
        let want = ["squad_em", "squad_f1", "trivia_em"].map(|k| row[k].as_f64().expect("score"));
        if ours.iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-12) {
            wrong.push(format!("{prediction:?} vs {golds:?}: ours {ours:?}, canonical {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn gsm8k_strict_and_flexible_equal_lm_eval_on_every_fixture_row() {
    let rows = rows("gsm8k");
    assert!(rows.len() >= 15);
    let mut wrong = Vec::new();
    for row in &rows {
        let (prediction, gold) = (text(row, "prediction"), text(row, "gold"));
        for (rule, name) in [(Gsm8kExtraction::Strict, "strict"), (Gsm8kExtraction::Flexible, "flexible")] {
            let extracted = extract_gsm8k(prediction, rule).unwrap_or("[invalid]");
            let correct = indicator(gsm8k_correct(prediction, gold, rule));
            let (want_extracted, want) = (text(row, &format!("{name}_extracted")), row[name].as_f64().expect("score"));
            if extracted != want_extracted || correct != want {
                wrong.push(format!("{name} {prediction:?} vs {gold:?}: ours ({extracted:?}, {correct}), lm-eval ({want_extracted:?}, {want})"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
