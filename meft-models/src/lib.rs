//! LLaMA and Mistral models on candle: loaders, tokenizers, generation.

pub mod config;
pub mod error;
pub mod generate;
pub mod hf;
pub mod kv_cache;
pub mod llama;
pub mod ops;
pub mod weights;

pub use config::{Architecture, ModelConfig, RopeLayout};
pub use error::ModelError;
pub use generate::{generate, GenerateConfig, Sampler, Sampling};
pub use kv_cache::KvCache;
pub use llama::{Llama, Score};
pub use ops::OpPath;
pub use weights::WeightMap;
