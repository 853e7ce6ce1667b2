//! `meft score`: mean next-token negative log-likelihood of a text, as one JSON object.
//!
//! The text is encoded as is: no chat template, and a BOS token only when the model's metadata
//! asks for one (`add_bos_token`). `tokens` counts the encoded tokens; the mean runs over the
//! `tokens − 1` predictions.

use super::ModelArgs;

/// Arguments of `meft score`.
#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to score.
    #[arg(long)]
    pub text: String,
}

/// Prints `{"tokens": n, "mean_nll": x}`.
pub fn run(args: &ScoreArgs) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let ids = loaded.bundle.tokenizer.encode(&args.text)?;
    let score = loaded.model.score(&ids)?;
    println!("{}", serde_json::json!({ "tokens": score.tokens, "mean_nll": score.mean_nll }));
    Ok(())
}
