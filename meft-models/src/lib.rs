//! LLaMA and Mistral models on candle: loaders, tokenizers, chat templates, and the KV-cache
//! forward that generation steps through (the decoding rules live in meft-eval).

pub mod chat;
pub mod config;
pub mod error;
pub mod gguf;
pub mod hf;
pub mod kv_cache;
pub mod llama;
pub mod ops;
pub mod resolve;
pub mod tokenizer;
pub mod weights;

pub use config::{Architecture, ModelConfig, RopeLayout};
pub use error::ModelError;
pub use kv_cache::KvCache;
pub use llama::{Llama, Score};
pub use ops::OpPath;
pub use resolve::{ModelBundle, ModelSource};
pub use tokenizer::Tokenizer;
pub use weights::WeightMap;
