//! Typed errors of model loading and execution. Every variant names the file and the field at fault.

use std::path::PathBuf;

/// Errors from loaders, tokenizers and model construction.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor the architecture needs is absent from the checkpoint.
    #[error("{file}: tensor `{tensor}` is missing; is this a LLaMA/Mistral checkpoint of the configured size?")]
    MissingTensor {
        /// Checkpoint file or directory.
        file: PathBuf,
        /// HF name of the tensor.
        tensor: String,
    },
    /// A tensor has a shape other than the configuration implies.
    #[error("{file}: tensor `{tensor}` has shape {found:?}, the config implies {expected:?}; check config.json against the weights")]
    ShapeMismatch {
        /// Checkpoint file or directory.
        file: PathBuf,
        /// HF name of the tensor.
        tensor: String,
        /// Shape implied by the configuration.
        expected: Vec<usize>,
        /// Shape found in the file.
        found: Vec<usize>,
    },
    /// An I/O failure reading a file.
    #[error("{file}: {source}")]
    Io {
        /// The file being read.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not GGUF, or its header is damaged (bad magic, unsupported version, absurd counts).
    #[error("{file}: not a readable GGUF file: {reason}; re-fetch it (`cargo xtask assets`) or check the path")]
    GgufHeader {
        /// The GGUF file.
        file: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The file ends before a structure it declares.
    #[error("{file}: truncated while reading {what}; the download is incomplete, re-fetch it (`cargo xtask assets`)")]
    Truncated {
        /// The file being read.
        file: PathBuf,
        /// The structure being read (metadata key, tensor info, tensor data).
        what: String,
    },
    /// A tensor is stored in a GGML type meft cannot dequantise.
    #[error(
        "{file}: tensor `{tensor}` has GGML type {kind}; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K (re-quantise the model to one of them)"
    )]
    UnsupportedTensorType {
        /// The GGUF file.
        file: PathBuf,
        /// GGUF name of the tensor.
        tensor: String,
        /// The type name or numeric id.
        kind: String,
    },
    /// A metadata key the loader needs is absent or has the wrong type.
    #[error("{file}: metadata `{key}`: {problem}; is this a LLaMA-family model file?")]
    Metadata {
        /// The file (GGUF or config.json).
        file: PathBuf,
        /// The metadata key.
        key: String,
        /// Missing, or the type found versus the type expected.
        problem: String,
    },
    /// The tokenizer and the model disagree on the vocabulary.
    #[error("{file}: the tokenizer has {tokenizer} tokens but the model's vocabulary has {model}; use the tokenizer shipped with these weights")]
    VocabMismatch {
        /// Where the tokenizer came from.
        file: PathBuf,
        /// Tokens known to the tokenizer.
        tokenizer: usize,
        /// Rows of the model's embedding.
        model: usize,
    },
    /// The tokenizer could not be built or could not encode/decode.
    #[error("{file}: tokenizer: {reason}")]
    Tokenizer {
        /// Where the tokenizer came from.
        file: PathBuf,
        /// The underlying failure.
        reason: String,
    },
    /// A `--model` argument names no known model, file or directory.
    #[error("model `{name}`: {reason}")]
    Resolve {
        /// The argument as given.
        name: String,
        /// Why it could not be resolved, with the fix.
        reason: String,
    },
    /// A configuration field is missing, has the wrong type or an unsupported value.
    #[error("{file}: field `{field}`: {reason}")]
    ConfigField {
        /// The configuration file (e.g. `config.json`).
        file: PathBuf,
        /// The field at fault (dotted path for nested fields).
        field: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A JSON file could not be parsed at all.
    #[error("{file}: not valid JSON ({source}); is the file complete?")]
    Json {
        /// The file being parsed.
        file: PathBuf,
        /// The parser error.
        source: serde_json::Error,
    },
    /// A safetensors file is malformed or holds a tensor type the loader cannot convert.
    #[error("{file}: {reason}")]
    Safetensors {
        /// The checkpoint file.
        file: PathBuf,
        /// What is wrong (header, dtype, tensor name) and how to fix it.
        reason: String,
    },
    /// A model call got inputs it cannot process (token id out of range, empty sequence, ...).
    #[error("{op}: {reason}")]
    InvalidInput {
        /// The model operation.
        op: &'static str,
        /// What is wrong with the input.
        reason: String,
    },
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
