//! When the real asset cache is present (`$MEFT_HOME/data`, default `~/.cache/meft/data`), every
//! benchmark file loads without error and has the pinned row count. Skips, saying why, when a file
//! is absent (run `cargo xtask assets` to fetch them).

use meft_eval::Dataset;

#[test]
fn real_cache_files_load_with_the_pinned_row_counts() {
    let data_dir = meft_assets::Cache::from_env().root().join("data");
    let expected = [("nq_open", 3610), ("trivia_qa", 7993), ("gsm8k", 1319), ("squad", 1000), ("math", 5000)];
    for (name, rows) in expected {
        let dataset = Dataset::parse(name).unwrap();
        let Some(path) = dataset.cache_file(&data_dir).filter(|p| p.exists()) else {
            println!("SKIP {name}: {} not found (run `cargo xtask assets`)", data_dir.join(format!("{name}.jsonl")).display());
            continue;
        };
        let examples = dataset.load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(examples.len(), rows, "{name}");
    }
    let categories = [
        "simple_python",
        "simple_java",
        "simple_javascript",
        "multiple",
        "parallel",
        "parallel_multiple",
        "irrelevance",
        "live_simple",
        "live_multiple",
        "live_parallel",
        "live_parallel_multiple",
        "live_irrelevance",
        "live_relevance",
    ];
    for category in categories {
        let dataset = Dataset::Bfcl(category.to_owned());
        match dataset.cache_file(&data_dir).filter(|p| p.exists()) {
            Some(path) => assert!(!dataset.load(&path).unwrap_or_else(|e| panic!("bfcl_{category}: {e}")).is_empty()),
            None => println!("SKIP bfcl_{category}: not in {}", data_dir.display()),
        }
    }
}
