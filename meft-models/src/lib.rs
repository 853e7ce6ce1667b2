//! LLaMA and Mistral models on candle: loaders, tokenizers, generation.

pub mod config;
pub mod error;
pub mod weights;

pub use config::{Architecture, ModelConfig, RopeLayout};
pub use error::ModelError;
pub use weights::WeightMap;
