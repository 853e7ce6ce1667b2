//! Tokenizers: HF `tokenizer.json`, or a byte-level BPE rebuilt from GGUF metadata.
//!
//! The GGUF rebuild (`tokenizer.ggml.model = gpt2`) takes the vocabulary from
//! `tokenizer.ggml.tokens`, the merge ranks from `tokenizer.ggml.merges` (`"left right"`, rank =
//! position) and the token kinds from `tokenizer.ggml.token_type`: CONTROL (3) tokens such as
//! `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` become special added tokens and USER_DEFINED (4)
//! tokens plain added tokens, so both are split out of the text before BPE runs. Pre-tokenisation
//! follows `tokenizer.ggml.pre`: the GPT-2 regex over byte-level text, preceded for SmolLM2/StarCoder
//! (`smollm`, `starcoder`, `refact`) by splitting every digit into its own piece.
//!
//! Encoding never runs a post-processor; a BOS token is prepended exactly when the model's metadata
//! says so (`add_bos_token`).

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::gguf::GgufFile;

/// GGUF `token_type` of control tokens (split out, special).
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF `token_type` of user-defined tokens (split out, not special).
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// How pieces are cut before BPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// The GPT-2 regex on byte-level text.
    Gpt2,
    /// Every digit alone, then the GPT-2 regex (SmolLM2, StarCoder).
    Gpt2SingleDigits,
}

impl PreTokenizer {
    /// Maps GGUF `tokenizer.ggml.pre` (absent = `default`).
    fn from_gguf(pre: &str) -> Option<Self> {
        match pre {
            "default" | "gpt2" | "gpt-2" => Some(Self::Gpt2),
            "smollm" | "starcoder" | "refact" => Some(Self::Gpt2SingleDigits),
            _ => None,
        }
    }

    fn build(self) -> Sequence {
        let byte_level = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
        let pieces = match self {
            Self::Gpt2 => vec![byte_level],
            Self::Gpt2SingleDigits => {
                vec![PreTokenizerWrapper::Digits(Digits::new(true)), byte_level]
            }
        };
        Sequence::new(pieces)
    }
}

/// A tokenizer plus the model facts that govern encoding.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: PathBuf,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
}

impl Tokenizer {
    /// Loads an HF `tokenizer.json`; BOS/EOS and `add_bos` come from the model config.
    pub fn from_json_file(path: impl AsRef<Path>, config: &ModelConfig) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer { file: path.to_path_buf(), reason: format!("cannot read tokenizer.json: {e}") })?;
        let tok = Self { inner, source: path.to_path_buf(), bos: config.bos_token_id, eos: config.eos_token_id, add_bos: config.add_bos_token };
        tok.check_vocab(config.vocab_size)?;
        Ok(tok)
    }

    /// Rebuilds the byte-level BPE tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(gguf: &GgufFile, config: &ModelConfig) -> Result<Self, ModelError> {
        let file = gguf.path().to_path_buf();
        let fail = |reason: String| ModelError::Tokenizer { file: file.clone(), reason };
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(fail(format!(
                "tokenizer.ggml.model is `{model}`; only byte-level BPE (`gpt2`) is rebuilt from GGUF, \
                 use an HF directory with tokenizer.json instead"
            )));
        }
        let pre_name = gguf.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let pre = PreTokenizer::from_gguf(pre_name)
            .ok_or_else(|| fail(format!("tokenizer.ggml.pre `{pre_name}` is not supported (known: default, gpt2, smollm, starcoder, refact)")))?;
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let types = match gguf.get("tokenizer.ggml.token_type") {
            Some(_) => gguf.get_int_array("tokenizer.ggml.token_type")?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(fail(format!("tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}", types.len(), tokens.len())));
        }
        let merges = gguf
            .get_str_array("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                let (a, b) = m.split_once(' ').ok_or_else(|| fail(format!("merge `{m}` has no space")))?;
                Ok((a.to_string(), b.to_string()))
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let vocab: Vocab = tokens.iter().enumerate().map(|(id, t)| (t.to_string(), id as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| fail(format!("cannot build BPE from tokenizer.ggml.tokens/merges: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre.build()));
        inner.with_decoder(Some(ByteLevel::default()));
        let added = |kind: i64, special: bool| -> Vec<AddedToken> {
            let picked = tokens.iter().zip(&types).filter(|(_, t)| **t == kind);
            picked.map(|(tok, _)| AddedToken::from(tok.to_string(), special)).collect()
        };
        let add_err = |e| fail(format!("cannot add the CONTROL/USER_DEFINED tokens: {e}"));
        inner.add_special_tokens(added(TOKEN_TYPE_CONTROL, true)).map_err(add_err)?;
        inner.add_tokens(added(TOKEN_TYPE_USER_DEFINED, false)).map_err(add_err)?;
        let tok = Self { inner, source: file, bos: config.bos_token_id, eos: config.eos_token_id, add_bos: config.add_bos_token };
        tok.check_vocab(config.vocab_size)?;
        Ok(tok)
    }

    /// Fails when the tokenizer can produce ids the model has no embedding row for.
    pub fn check_vocab(&self, model_vocab: usize) -> Result<(), ModelError> {
        let size = self.vocab_size();
        if size > model_vocab {
            return Err(ModelError::VocabMismatch { file: self.source.clone(), tokenizer: size, model: model_vocab });
        }
        Ok(())
    }

    /// Number of token ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Where the tokenizer came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Beginning-of-sequence id.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id (generation stops on it).
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether [`Tokenizer::encode`] prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Ids of the special (split-out) tokens, sorted.
    pub fn special_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.inner.get_added_tokens_decoder().into_iter().filter(|(_, t)| t.special).map(|(id, _)| id).collect();
        ids.sort_unstable();
        ids
    }

    /// Text of token `id`, if it exists.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Id of token text `token`, if it is one token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes `text` (special tokens in it are recognised); BOS first when the model asks for it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self.inner.encode(text, false).map_err(|e| self.err(format!("encode: {e}")))?;
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        if let (true, Some(bos)) = (self.add_bos, self.bos) {
            ids.push(bos);
        }
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Decodes ids to text, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner.decode(ids, false).map_err(|e| self.err(format!("decode: {e}")))
    }

    fn err(&self, reason: String) -> ModelError {
        ModelError::Tokenizer { file: self.source.clone(), reason }
    }
}

/// Turns a growing list of generated ids into printable text pieces, holding back incomplete
/// UTF-8 sequences (a byte-level token may carry half a character).
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    printed: usize,
}

impl TextStream {
    /// Adds one id and returns the newly completed text, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String, ModelError> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') || text.len() < self.printed || !text.is_char_boundary(self.printed) {
            return Ok(String::new());
        }
        let piece = text[self.printed..].to_string();
        self.printed = text.len();
        Ok(piece)
    }
}
