//! The bridge to `meft-models`: a [`Stepper`] over a [`Llama`] with its KV cache, the model's chat
//! template as a [`crate::ChatTemplate`], and the stop tokens of a template.

use candle_core::{DType, Tensor};
use meft_core::AdapterHook;
use meft_models::chat;
use meft_models::{KvCache, Llama, Tokenizer};

use crate::error::Result;
use crate::example::ChatMessage;
use crate::generation::decode::Stepper;
use crate::prompt::ChatTemplate;

/// Next-token logits from a [`Llama`] with adapters, one KV cache per state (beams clone it).
pub struct LlamaStepper<'a> {
    /// The model.
    pub model: &'a Llama,
    /// Its adapters ([`meft_core::NoAdapters`] for the base model).
    pub hook: &'a dyn AdapterHook,
    /// Called after every forward call: an adapter that records each forward for a backward
    /// (MEFT's routing and working set) drops that record here. `None` when nothing to drop.
    pub after_forward: Option<&'a dyn Fn()>,
    /// Most rows one batched step may hold ([`Stepper::step_many`] runs larger sets in groups
    /// of this size; 1 = one forward per row).
    pub rows: usize,
}

impl LlamaStepper<'_> {
    /// The next-token logits after `tokens` fed onto `cache` (the head on the last position only).
    fn run(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let device = self.model.embed_tokens.device();
        let ids = Tensor::from_slice(tokens, (1, tokens.len()), device).map_err(meft_models::ModelError::from)?;
        let logits = self.model.forward_cached_last(&ids, cache, self.hook);
        self.release();
        Ok(rows(&logits?)?.remove(0))
    }

    fn release(&self) {
        if let Some(release) = self.after_forward {
            release();
        }
    }
}

/// The rows of `(n, vocab)` logits as f32 vectors.
fn rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(logits.to_dtype(DType::F32).and_then(|t| t.to_vec2::<f32>()).map_err(meft_models::ModelError::from)?)
}

impl Stepper for LlamaStepper<'_> {
    type State = KvCache;

    fn start(&self, prompt: &[u32]) -> Result<(KvCache, Vec<f32>)> {
        if prompt.is_empty() {
            return Err(crate::EvalError::Decode { problem: "the prompt encodes to no tokens".into() });
        }
        let mut cache = KvCache::new(self.model.layers.len());
        let logits = self.run(prompt, &mut cache)?;
        Ok((cache, logits))
    }

    fn step(&self, cache: &mut KvCache, token: u32) -> Result<Vec<f32>> {
        self.run(&[token], cache)
    }

    /// One batched forward ([`Llama::forward_step_batch`]) per group of at most `rows` rows.
    fn step_many(&self, caches: &mut [&mut KvCache], tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(tokens.len());
        for (group, fed) in caches.chunks_mut(self.rows.max(1)).zip(tokens.chunks(self.rows.max(1))) {
            if fed.len() == 1 {
                out.push(self.step(group[0], fed[0])?);
                continue;
            }
            let logits = self.model.forward_step_batch(fed, group, self.hook);
            self.release();
            out.extend(rows(&logits?)?);
        }
        Ok(out)
    }
}

impl ChatTemplate for chat::ChatTemplate {
    fn prompt(&self, messages: &[ChatMessage]) -> String {
        self.render(messages)
    }

    fn completion(&self, reply: &str) -> String {
        chat::ChatTemplate::completion(self, reply)
    }
}

/// The tokens that end a reply: the tokenizer's EOS plus every special token in the template's
/// end-of-turn text (ChatML `<|im_end|>`) other than BOS, sorted and deduplicated.
pub fn stop_tokens(tokenizer: &Tokenizer, template: &dyn ChatTemplate) -> Result<Vec<u32>> {
    let special = tokenizer.special_ids();
    let end_of_turn = tokenizer.encode(&template.completion(""))?;
    let mut stops: Vec<u32> = tokenizer.eos().into_iter().collect();
    stops.extend(end_of_turn.into_iter().filter(|t| special.contains(t) && Some(*t) != tokenizer.bos()));
    stops.sort_unstable();
    stops.dedup();
    Ok(stops)
}
