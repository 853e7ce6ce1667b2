//! End-to-end scoring of prediction files against the fixtures.

mod common;

use common::{fixture, jsonl};
use meft_eval::results::{read_json, write_json};
use meft_eval::{Coverage, Dataset, EvalError, Metric, Report, score_predictions};

fn score(dataset: &str, predictions: &str, coverage: Coverage) -> meft_eval::Result<Report> {
    let file = jsonl(predictions);
    let parsed = Dataset::parse(dataset).unwrap();
    score_predictions(file.path(), &parsed, &fixture(&format!("{dataset}.jsonl")), coverage)
}

fn nq_id(question: &str) -> String {
    format!("nq-{:016x}", meft_eval::split::fnv1a64(question.as_bytes()))
}

#[test]
fn nq_substring_em_is_case_sensitive() {
    let moon = nq_id("when was the last time anyone was on the moon");
    let lyrics = nq_id("who wrote he ain't heavy he's my brother lyrics");
    let rows = format!("{{\"id\": \"{moon}\", \"prediction\": \"In December 1972.\"}}\n{{\"id\": \"{lyrics}\", \"prediction\": \"bobby scott\"}}\n");
    let report = score("nq_open", &rows, Coverage::Predicted).unwrap();
    assert_eq!(report.metric, Metric::SubstringEm(meft_eval::metrics::qa::CaseRule::Sensitive));
    assert_eq!((report.n_dataset, report.n_scored, report.n_missing), (3, 2, 1));
    assert_eq!(report.primary, 0.5);
    assert_eq!(report.examples[0].scores.primary, 1.0);
    assert_eq!(report.squad_em, Some(0.5)); // "bobby scott" normalises to the gold
    let all = score("nq_open", &rows, Coverage::All).unwrap();
    assert_eq!((all.n_scored, all.examples[2].prediction.clone()), (3, None));
    assert!((all.primary - 1.0 / 3.0).abs() < 1e-12);
}

#[test]
fn squad_and_trivia_are_case_insensitive() {
    let squad = score("squad", "{\"id\": \"5727dd2e4b864d1900163eba\", \"prediction\": \"About 23 Years\"}\n", Coverage::Predicted).unwrap();
    assert_eq!(squad.primary, 1.0);
    assert_eq!(squad.squad_em, Some(0.0));
    let trivia = score("trivia_qa", "{\"id\": \"tc_33\", \"prediction\": \"SUNSET BLVD\"}\n", Coverage::Predicted).unwrap();
    assert_eq!(trivia.primary, 1.0);
}

#[test]
fn gsm8k_and_math_extract_final_answers() {
    let gsm = "{\"id\": 0, \"prediction\": \"She makes $18. The answer is: 18\"}\n{\"id\": \"1\", \"prediction\": \"#### 4\"}\n";
    let report = score("gsm8k", gsm, Coverage::Predicted).unwrap();
    assert_eq!(report.primary, 0.5);
    assert_eq!(report.examples[1].scores.extracted.as_deref(), Some("4"));
    let math = "{\"id\": \"geometry-0\", \"prediction\": \"so $\\\\boxed{\\\\dfrac34}$\"}\n";
    assert_eq!(score("math", math, Coverage::Predicted).unwrap().primary, 1.0);
}

#[test]
fn bfcl_call_match_and_iou() {
    let rows = "{\"id\": \"simple_python_0\", \"prediction\": \"[calculate_triangle_area(base=10, height=5)]\"}\n\
                {\"id\": \"simple_python_1\", \"prediction\": \"[math.factorial(number=6)]\"}\n";
    let report = score("bfcl_simple_python", rows, Coverage::Predicted).unwrap();
    assert_eq!(report.examples[0].scores.primary, 1.0);
    assert_eq!(report.examples[0].scores.api_iou, Some(1.0));
    let irrelevant =
        score("bfcl_irrelevance", "{\"id\": \"irrelevance_0\", \"prediction\": \"None of the functions fit.\"}\n", Coverage::Predicted).unwrap();
    assert_eq!((irrelevant.primary, irrelevant.api_iou), (1.0, Some(1.0)));
}

#[test]
fn unknown_and_duplicate_prediction_ids_are_errors() {
    let err = score("gsm8k", "{\"id\": 0, \"prediction\": \"1\"}\n{\"id\": 99999, \"prediction\": \"1\"}\n", Coverage::Predicted).unwrap_err();
    assert!(matches!(&err, EvalError::UnknownPredictionId { line: 2, id, .. } if id == "99999"), "{err}");
    let dup = score("gsm8k", "{\"id\": 0, \"prediction\": \"1\"}\n{\"id\": \"0\", \"prediction\": \"2\"}\n", Coverage::Predicted).unwrap_err();
    assert!(matches!(dup, EvalError::DuplicateId { line: 2, first_line: 1, .. }), "{dup}");
    let missing = score("gsm8k", "{\"id\": 0}\n", Coverage::Predicted).unwrap_err().to_string();
    assert!(missing.contains(":1: field `prediction`: missing"), "{missing}");
}

#[test]
fn reports_round_trip_through_json() {
    let report = score("gsm8k", "{\"id\": 0, \"prediction\": \"The answer is: 18\"}\n", Coverage::All).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    write_json(&path, &report).unwrap();
    let back: Report = read_json(&path).unwrap();
    assert_eq!(back, report);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"metric\": \"final_number\""), "{text}");
}

#[test]
fn scored_predictions_carry_triviaqa_official_em_and_lm_eval_gsm8k_accuracy() {
    // The official TriviaQA rule turns `_` into a space; SQuAD's keeps "sunset_blvd" one word.
    let trivia = score("trivia_qa", "{\"id\": \"tc_33\", \"prediction\": \"Sunset_Blvd\"}\n", Coverage::Predicted).unwrap();
    assert_eq!((trivia.trivia_em, trivia.squad_em), (Some(1.0), Some(0.0)));
    assert_eq!((trivia.gsm8k_strict, trivia.gsm8k_flexible), (None, None));
    let gsm = "{\"id\": 0, \"prediction\": \"so #### 18.\"}\n{\"id\": \"1\", \"prediction\": \"The answer is 18, then 19\"}\n";
    let report = score("gsm8k", gsm, Coverage::Predicted).unwrap();
    assert_eq!(report.examples[0].scores.gsm8k_strict, Some(1.0));
    assert_eq!(report.examples[0].scores.gsm8k_flexible, Some(1.0));
    assert_eq!(report.examples[1].scores.gsm8k_strict, Some(0.0), "no `#### ` marker: lm-eval's [invalid]");
    assert_eq!(report.trivia_em, None);
}
