//! Known cases for call parsing, BFCL matching and API-set IoU.

use super::*;
use serde_json::json;

fn expected(name: &str, args: Value) -> ExpectedCall {
    let args = args.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_array().unwrap().clone())).collect();
    ExpectedCall { name: name.to_owned(), args }
}

fn triangle() -> ToolExpectation {
    ToolExpectation::Calls(vec![expected("calculate_triangle_area", json!({"base": [10], "height": [5], "unit": ["units", ""]}))])
}

#[test]
fn parses_python_style_calls_embedded_in_text() {
    let calls = parse_calls("Sure! [calculate_triangle_area(base=10, height=5.0), spotify.play(artist='Maroon 5')]");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].name, "calculate_triangle_area");
    assert_eq!(calls[0].args["height"], json!(5.0));
    assert_eq!(calls[1].name, "spotify.play");
    assert_eq!(calls[1].args["artist"], json!("Maroon 5"));
    let positional = parse_calls("sort('final_report.pdf')");
    assert_eq!(positional[0].args["#0"], json!("final_report.pdf"));
    assert!(parse_calls("I cannot help with that (sorry).").is_empty());
}

#[test]
fn parses_json_calls_in_several_shapes() {
    let openai = r#"{"name": "f", "arguments": "{\"x\": 1}"}"#;
    let bfcl = r#"```json
[{"f": {"x": 1}}, {"name": "g", "parameters": {"y": [1, 2]}}]
```"#;
    assert_eq!(parse_calls(openai), vec![Call { name: "f".into(), args: [("x".into(), json!(1))].into() }]);
    let calls = parse_calls(bfcl);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].args["y"], json!([1, 2]));
}

#[test]
fn simple_call_matches_with_optional_and_standardised_values() {
    let ok = [
        "calculate_triangle_area(base=10, height=5)",
        "calculate_triangle_area(base=10, height=5, unit='units')",
        "calculate_triangle_area(base=10.0, height=5, unit='Units')",
        r#"{"calculate_triangle_area": {"base": 10, "height": 5}}"#,
    ];
    for text in ok {
        assert!(calls_match(&parse_calls(text), &triangle()), "{text}");
    }
    let wrong = [
        "calculate_triangle_area(base=10)",
        "calculate_triangle_area(base=10, height=6)",
        "calculate_triangle_area(base=10, height=5, colour='red')",
        "triangle_area(base=10, height=5)",
        "calculate_triangle_area(10, 5)",
        "",
    ];
    for text in wrong {
        assert!(!calls_match(&parse_calls(text), &triangle()), "{text}");
    }
}

#[test]
fn parallel_calls_match_in_any_order_one_to_one() {
    let play = ToolExpectation::Calls(vec![
        expected("spotify.play", json!({"artist": ["Taylor Swift"], "duration": [20]})),
        expected("spotify.play", json!({"artist": ["Maroon 5"], "duration": [15]})),
    ]);
    let swapped = "spotify.play(artist='Maroon 5', duration=15); spotify.play(artist='Taylor Swift', duration=20)";
    assert!(calls_match(&parse_calls(swapped), &play));
    let twice = "spotify.play(artist='Maroon 5', duration=15); spotify.play(artist='Maroon 5', duration=15)";
    assert!(!calls_match(&parse_calls(twice), &play));
    let underscored = "spotify_play(artist='Maroon 5', duration=15) spotify_play(artist='Taylor Swift', duration=20)";
    assert!(calls_match(&parse_calls(underscored), &play));
}

#[test]
fn nested_values_lists_and_dicts() {
    let exp =
        ToolExpectation::Calls(vec![expected("math_toolkit.sum_of_multiples", json!({"multiples": [[3, 5]], "opts": [{"mode": ["fast", ""]}]}))]);
    assert!(calls_match(&parse_calls("math_toolkit.sum_of_multiples(multiples=[3, 5], opts={'mode': 'fast'})"), &exp));
    assert!(calls_match(&parse_calls("math_toolkit.sum_of_multiples(multiples=[3, 5], opts={})"), &exp));
    assert!(!calls_match(&parse_calls("math_toolkit.sum_of_multiples(multiples=[5, 3], opts={})"), &exp));
    assert!(value_eq(&json!("[3, 5]"), &json!([3, 5])));
    assert!(value_eq(&json!(10), &json!("10")));
    assert!(!value_eq(&json!(true), &json!(1)));
}

#[test]
fn relevance_and_irrelevance_expectations() {
    assert!(calls_match(&[], &ToolExpectation::NoCall));
    assert!(!calls_match(&parse_calls("f(x=1)"), &ToolExpectation::NoCall));
    assert!(calls_match(&parse_calls("f(x=1)"), &ToolExpectation::AnyCall));
    assert!(!calls_match(&[], &ToolExpectation::AnyCall));
}

#[test]
fn api_set_iou_known_values() {
    assert_eq!(api_iou(["a", "b"], ["b", "c"]), 1.0 / 3.0);
    assert_eq!(api_iou(["a", "a"], ["a"]), 1.0);
    assert_eq!(api_iou([], ["a"]), 0.0);
    assert_eq!(api_iou(Vec::<&str>::new(), Vec::<&str>::new()), 1.0);
}
