//! `meft info`: architecture, tensor shapes, parameter counts, dtype and tokenizer facts as JSON.

use meft_models::ModelConfig;
use meft_models::resolve::Storage;
use serde_json::json;

use super::ModelArgs;

/// Arguments of `meft info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
}

/// Parameter counts implied by the configuration: `(embedding, per layer, total)`.
fn parameter_counts(c: &ModelConfig) -> (usize, usize, usize) {
    let (d, hd) = (c.hidden_size, c.head_dim);
    let attn = d * c.num_attention_heads * hd * 2 + d * c.num_key_value_heads * hd * 2;
    let per_layer = attn + 3 * d * c.intermediate_size + 2 * d;
    let embedding = c.vocab_size * d;
    let head = if c.tie_word_embeddings { 0 } else { embedding };
    (embedding, per_layer, embedding + c.num_hidden_layers * per_layer + d + head)
}

/// Prints the facts.
pub fn run(args: &InfoArgs) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let (c, tok) = (&loaded.bundle.config, &loaded.bundle.tokenizer);
    let (embedding, per_layer, total) = parameter_counts(c);
    let storage = match &loaded.bundle.storage {
        Storage::Gguf { version, parameters_by_type } => json!({
            "format": "gguf", "version": version,
            "parameters_by_type": parameters_by_type.iter().map(|(t, n)| json!({"type": t, "parameters": n})).collect::<Vec<_>>(),
        }),
        Storage::Safetensors => json!({ "format": "safetensors" }),
    };
    let layer0 = &loaded.model.layers[0];
    let shapes = json!({
        "embed_tokens": loaded.model.embed_tokens.dims(),
        "q_proj": layer0.self_attn.q_proj.dims(),
        "k_proj": layer0.self_attn.k_proj.dims(),
        "v_proj": layer0.self_attn.v_proj.dims(),
        "o_proj": layer0.self_attn.o_proj.dims(),
        "gate_proj": layer0.mlp.gate_proj.dims(),
        "up_proj": layer0.mlp.up_proj.dims(),
        "down_proj": layer0.mlp.down_proj.dims(),
    });
    let name = |id: Option<u32>| id.map(|i| json!({"id": i, "text": tok.token(i)}));
    let info = json!({
        "path": loaded.path,
        "config": c,
        "dtype": format!("{:?}", loaded.model.embed_tokens.dtype()).to_lowercase(),
        "storage": storage,
        "shapes_layer0": shapes,
        "parameters": { "embedding": embedding, "per_layer": per_layer, "total": total },
        "tokenizer": {
            "source": tok.source(), "vocab_size": tok.vocab_size(), "bos": name(tok.bos()), "eos": name(tok.eos()),
            "adds_bos": tok.adds_bos(), "special_ids": tok.special_ids(),
            "chat_template": loaded.bundle.chat.as_ref().map(|t| t.name()),
        },
        "load_seconds": loaded.load_seconds,
    });
    println!("{}", serde_json::to_string_pretty(&info)?);
    Ok(())
}
