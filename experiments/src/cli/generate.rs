//! `meft generate`: streams a continuation of a prompt to stdout.
//!
//! Greedy unless `--temperature` is positive (then seeded sampling). With `--chat` the prompt is
//! wrapped as one user message in the model's chat template and generation stops at the end of
//! the assistant turn; without it the prompt is encoded as plain text. Tokens/s goes to stderr.
//! Decoding is meft-eval's ([`meft_eval::generation::decode_streaming`]), the one the
//! evaluations use.

use std::io::Write;
use std::ops::ControlFlow;
use std::time::Instant;

use anyhow::bail;
use meft_core::NoAdapters;
use meft_eval::generation::{DecodeConfig, Decoding, LlamaStepper, RepetitionPenalty, decode_streaming};
use meft_models::chat::Message;
use meft_models::tokenizer::TextStream;

use super::ModelArgs;

/// Arguments of `meft generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Seed of the sampler (ignored when greedy).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Generates and streams.
pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let tokenizer = &loaded.bundle.tokenizer;
    let text = match (args.chat, &loaded.bundle.chat) {
        (false, _) => args.prompt.clone(),
        (true, Some(template)) => template.render(&[Message::user(args.prompt.as_str())]),
        (true, None) => bail!("{} declares no chat template; run without --chat", loaded.path.display()),
    };
    let prompt = tokenizer.encode(&text)?;
    let decoding = if args.temperature > 0.0 { Decoding::Sample { temperature: args.temperature, seed: args.seed } } else { Decoding::Greedy };
    let config = DecodeConfig { decoding, max_new_tokens: args.max_new_tokens, repetition_penalty: RepetitionPenalty::default() };
    let stop_tokens: Vec<u32> = tokenizer.eos().into_iter().collect();
    let stepper = LlamaStepper { model: &loaded.model, hook: &NoAdapters, after_forward: None, rows: 1 };
    let mut stream = TextStream::default();
    let mut stdout = std::io::stdout().lock();
    let mut failure = None;
    let start = Instant::now();
    let decoded = decode_streaming(&stepper, &prompt, &config, &stop_tokens, &mut |id| {
        if Some(id) == tokenizer.eos() {
            return ControlFlow::Continue(());
        }
        let piece = stream.push(tokenizer, id).and_then(|p| {
            stdout
                .write_all(p.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|source| meft_models::ModelError::Io { file: "<stdout>".into(), source })
        });
        match piece {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failure = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    writeln!(stdout)?;
    let seconds = start.elapsed().as_secs_f64();
    let new = decoded.tokens.len();
    eprintln!("{} prompt + {new} new tokens in {seconds:.2} s ({:.1} tokens/s)", prompt.len(), new as f64 / seconds);
    Ok(())
}
