//! Properties of the metrics and splits over random inputs.

use meft_eval::SplitConfig;
use meft_eval::metrics::qa::{CaseRule, exact_match, f1, normalize_answer, substring_match};
use meft_eval::metrics::value::parse_literal;
use proptest::prelude::*;
use serde_json::Value;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i32>().prop_map(Value::from),
        any::<bool>().prop_map(Value::Bool),
        "[a-zA-Z0-9 ,._'-]{0,12}".prop_map(Value::String),
        Just(Value::Null),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,5}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn normalisation_is_idempotent(text in "\\PC{0,40}") {
        let once = normalize_answer(&text);
        prop_assert_eq!(normalize_answer(&once), once.clone());
    }

    #[test]
    fn exact_match_implies_full_f1_on_non_empty_answers(text in "[a-zA-Z ,.!]{0,30}") {
        let golds = vec![text.clone()];
        prop_assert!(exact_match(&text, &golds));
        let score = f1(&text, &golds);
        if normalize_answer(&text).is_empty() { prop_assert_eq!(score, 0.0) } else { prop_assert_eq!(score, 1.0) }
    }

    #[test]
    fn case_sensitive_substring_implies_insensitive(pred in "[a-zA-Z ]{0,30}", gold in "[a-zA-Z]{1,4}") {
        let golds = vec![gold];
        if substring_match(&pred, &golds, CaseRule::Sensitive) {
            prop_assert!(substring_match(&pred, &golds, CaseRule::Insensitive));
        }
    }

    #[test]
    fn json_text_parses_back_to_the_same_value(value in json_value()) {
        let text = serde_json::to_string(&value).unwrap();
        prop_assert_eq!(parse_literal(&text), Some(value));
    }

    #[test]
    fn split_depends_only_on_id_and_seed(id in "\\PC{0,20}", seed in any::<u64>(), fraction in 0.0f64..=1.0) {
        let config = SplitConfig::new(fraction, seed).unwrap();
        let u = config.unit_hash(&id);
        prop_assert!((0.0..1.0).contains(&u));
        prop_assert_eq!(config.split_of(&id), SplitConfig::new(fraction, seed).unwrap().split_of(&id));
    }
}
