//! Loaders on committed fixtures (the first rows of each real cache file) and on bad rows.

mod common;

use common::{check, fixture, jsonl, load_error};
use meft_eval::example::{ExpectedCall, Passage};
use meft_eval::{Example, ToolExpectation, UserFormat, load_user_file};
use serde_json::json;

#[test]
fn nq_open_rows_become_closed_book_qa_with_hashed_ids() {
    let examples = check("nq_open", 3);
    let Example::Qa(first) = &examples[0] else { panic!("not QA") };
    assert_eq!(first.question, "when was the last time anyone was on the moon");
    assert_eq!(first.answers, ["14 December 1972 UTC", "December 1972"]);
    assert!(first.id.starts_with("nq-") && first.id.len() == 19, "{}", first.id);
    assert_eq!(first.context, None);
}

#[test]
fn trivia_qa_answers_are_value_then_aliases_deduplicated() {
    let examples = check("trivia_qa", 3);
    let Example::Qa(first) = &examples[0] else { panic!("not QA") };
    assert_eq!(first.id, "tc_33");
    assert_eq!(first.answers[0], "Sunset Boulevard");
    assert!(first.answers.contains(&"Sunset Blvd.".to_owned()));
    assert!(first.answers.contains(&"sunset blvd".to_owned()));
    let unique: std::collections::HashSet<_> = first.answers.iter().collect();
    assert_eq!(unique.len(), first.answers.len());
}

#[test]
fn squad_query_is_split_into_context_and_question() {
    let examples = check("squad", 3);
    let Example::Qa(first) = &examples[0] else { panic!("not QA") };
    assert_eq!(first.id, "5727dd2e4b864d1900163eba");
    assert_eq!(first.question, "Harvard - Yale Regatta predates \"The Game\" by how many years?");
    assert_eq!(first.answers, ["23 years", "23"]);
    let Some(Passage { title, text }) = &first.context else { panic!("no context") };
    assert_eq!(title.as_deref(), Some("Harvard_University"));
    assert!(text.starts_with("Older than The Game by 23 years") && !text.contains("Question:"));
}

#[test]
fn gsm8k_solutions_end_with_the_answer_phrase() {
    let examples = check("gsm8k", 3);
    let Example::Math(first) = &examples[0] else { panic!("not maths") };
    assert_eq!((first.id.as_str(), first.final_answer.as_str()), ("0", "18"));
    assert!(first.solution.ends_with("market.\nThe answer is: 18"), "{}", first.solution);
    assert!(!first.solution.contains("<<"));
    let Example::Math(third) = &examples[2] else { panic!("not maths") };
    assert_eq!(third.final_answer, "70000");
}

#[test]
fn math_ids_combine_subject_and_index() {
    let examples = check("math", 3);
    let ids: Vec<&str> = examples.iter().map(Example::id).collect();
    assert_eq!(ids, ["algebra-0", "algebra-1", "geometry-0"]);
    let Example::Math(geometry) = &examples[2] else { panic!("not maths") };
    assert_eq!(geometry.final_answer, "\\frac{3}{4}");
    assert_eq!(geometry.subject.as_deref(), Some("geometry"));
    assert!(geometry.level.as_deref().is_some_and(|l| l.starts_with("Level")));
}

#[test]
fn bfcl_rows_carry_schemas_and_expectations() {
    let simple = check("bfcl_simple_python", 3);
    let Example::Tool(first) = &simple[0] else { panic!("not a tool row") };
    assert_eq!(first.id, "simple_python_0");
    assert_eq!(first.functions[0]["name"], json!("calculate_triangle_area"));
    let expected = ExpectedCall {
        name: "calculate_triangle_area".into(),
        args: [("base".to_owned(), vec![json!(10)]), ("height".to_owned(), vec![json!(5)]), ("unit".to_owned(), vec![json!("units"), json!("")])]
            .into(),
    };
    assert_eq!(first.expected, ToolExpectation::Calls(vec![expected]));
    let parallel = check("bfcl_parallel_multiple", 3);
    let Example::Tool(p) = &parallel[0] else { panic!("not a tool row") };
    assert!(matches!(&p.expected, ToolExpectation::Calls(calls) if calls.len() == 2));
    let irrelevant = check("bfcl_irrelevance", 3);
    assert!(irrelevant.iter().all(|e| matches!(e, Example::Tool(t) if t.expected == ToolExpectation::NoCall)));
    let relevant = check("bfcl_live_relevance", 1);
    assert!(matches!(&relevant[0], Example::Tool(t) if t.expected == ToolExpectation::AnyCall));
}

#[test]
fn bfcl_multi_turn_rows_are_rejected_with_a_reason() {
    let err = meft_eval::Dataset::parse("bfcl_multi_turn_base").unwrap().load(&fixture("bfcl_multi_turn_base.jsonl")).unwrap_err().to_string();
    assert!(err.contains(":1: field `question`:") && err.contains("only single-turn"), "{err}");
}

#[test]
fn user_formats_load_and_are_detected() {
    for (name, format, rows) in [("user_qa", UserFormat::Qa, 2), ("user_instruction", UserFormat::Instruction, 2), ("user_chat", UserFormat::Chat, 1)]
    {
        let examples = check(name, rows);
        let (detected, again) = load_user_file(&fixture(&format!("{name}.jsonl"))).unwrap();
        assert_eq!((detected, &again), (format, &examples));
    }
    let qa = check("user_qa", 2);
    assert_eq!(qa[0].id(), "capital-fr");
    assert!(qa[1].id().starts_with("user-"));
    assert_eq!(check("user_instruction", 2)[1].id(), "7");
}

#[test]
fn bad_rows_name_file_line_and_field() {
    let cases = [
        ("nq_open", "{\"question\": \"q\", \"answer\": [\"a\"]}\n{\"question\": \"q2\"}\n", ":2: field `answer`: missing"),
        ("nq_open", "{\"question\": \"q\", \"answer\": [1]}\n", "field `answer`: element 0: expected a string"),
        ("nq_open", "{\"question\": \"q\", \"answer\": [\"\"]}\n", "field `answer`: no non-empty answer"),
        ("trivia_qa", "{\"question\": \"q\", \"question_id\": \"x\", \"answer\": {\"aliases\": []}}\n", "field `answer.value`: missing"),
        ("gsm8k", "{\"id\": 1, \"question\": \"q\", \"answer\": \"no hashes\"}\n", "field `answer`: expected the GSM8K form"),
        ("squad", "{\"id\": \"s\", \"query\": \"garbage\", \"answers_text\": [\"a\"]}\n", "field `query`: expected `Title:"),
        ("math", "{\"index\": 0, \"subset\": \"a\", \"problem\": \"p\", \"solution\": \"none\"}\n", "field `answer`: absent"),
        (
            "bfcl_simple_python",
            "{\"id\": \"simple_python_9\", \"question\": [[{\"role\": \"user\", \"content\": \"x\"}]], \"function\": []}\n",
            "field `ground_truth`: missing",
        ),
        (
            "user_chat",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"bot\", \"content\": \"yo\"}]}\n",
            "field `messages[1].role`: unknown role `bot`",
        ),
        ("user_chat", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n", "field `messages`: need at least two"),
        (
            "user_qa",
            "{\"id\": \"a\", \"question\": \"q\", \"answer\": \"x\"}\n{\"id\": \"a\", \"question\": \"r\", \"answer\": \"y\"}\n",
            ":2: duplicate id `a` (first seen on line 1)",
        ),
        ("user_instruction", "{\"instruction\": \"i\"}\n", "field `output`: missing"),
    ];
    for (dataset, text, expected) in cases {
        let err = load_error(dataset, text);
        assert!(err.contains(".jsonl:"), "error does not name the file: {err}");
        assert!(err.contains(expected), "{dataset}: `{err}` lacks `{expected}`");
    }
}

#[test]
fn undetectable_user_rows_are_an_error() {
    let file = jsonl("{\"prompt\": \"x\"}\n");
    let err = load_user_file(file.path()).unwrap_err().to_string();
    assert!(err.contains("cannot tell the format"), "{err}");
}
