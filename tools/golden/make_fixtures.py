"""Golden fixtures for meft-models: tiny random LLaMA and Mistral checkpoints with PyTorch outputs.

Run by hand (from the repository root) when the fixture set must change:

    python3 tools/golden/make_fixtures.py

Written with torch 2.15 (CPU) and transformers 5.23, safetensors 0.8; any later versions that keep
`LlamaForCausalLM` / `MistralForCausalLM` numerics work. Everything runs on the CPU in float32 with
the eager attention implementation and fixed seeds, so reruns reproduce the files.

For every case it writes `meft-models/tests/fixtures/<case>/`:
  config.json, model.safetensors  the checkpoint exactly as `save_pretrained` writes it
  expected.safetensors            tokens (batch, seq) int64, logits (batch, seq, vocab), loss (),
                                  grad.<param name> for a few parameters,
                                  grad_ffn_in.<layer> = d loss / d (FFN input of that layer),
                                  i.e. of the post-attention RMSNorm output the adapters read,
                                  grad_embeds = d loss / d (token embeddings)
The loss is the mean next-token cross-entropy over every position (HF `labels=input_ids`).
The Rust test `meft-models/tests/golden.rs` loads these and checks the candle model against them.
"""

import json
import pathlib
import shutil

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[2] / "meft-models" / "tests" / "fixtures"
BATCH, SEQ = 2, 12

# Parameters whose gradients are recorded (present in every case unless noted).
GRAD_PARAMS = [
    "model.embed_tokens.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.1.self_attn.q_proj.weight",
    "model.layers.1.self_attn.k_proj.weight",
    "model.norm.weight",
]

CASES = {
    # GQA 4/2, tied output head, a non-default RoPE base.
    "llama_tiny": (
        LlamaForCausalLM,
        LlamaConfig(
            vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
            rope_theta=500.0, max_position_embeddings=64, tie_word_embeddings=True,
            bos_token_id=1, eos_token_id=2,
        ),
    ),
    # GQA 4/1, separate lm_head, sliding window 5 < sequence 12.
    "mistral_tiny": (
        MistralForCausalLM,
        MistralConfig(
            vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, rms_norm_eps=1e-6,
            rope_theta=10000.0, max_position_embeddings=64, sliding_window=5,
            tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        ),
    ),
}


def randomise(model: torch.nn.Module, seed: int) -> None:
    """O(1) activations: matrices (embedding included) ~ N(0, 1/fan_in), norms ~ 1 + N(0, 0.1²)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)


def run_case(name: str, cls, config, seed: int) -> None:
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(config).float().eval()
    randomise(model, seed)
    out_dir = ROOT / name
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "generation_config.json").unlink(missing_ok=True)

    gen = torch.Generator().manual_seed(seed + 1)
    tokens = torch.randint(0, config.vocab_size, (BATCH, SEQ), generator=gen)
    captured = {}

    def keep(key):
        def hook(_module, args, output):
            t = args[0] if key.startswith("ffn") else output
            t.retain_grad()
            captured[key] = t
        return hook

    model.model.embed_tokens.register_forward_hook(keep("embeds"))
    for i, layer in enumerate(model.model.layers):
        layer.mlp.register_forward_hook(keep(f"ffn{i}"))
    out = model(input_ids=tokens, labels=tokens)
    out.loss.backward()

    params = dict(model.named_parameters())
    expected = {
        "tokens": tokens.to(torch.int64),
        "logits": out.logits.detach().contiguous(),
        "loss": out.loss.detach().reshape(()),
        "grad_embeds": captured["embeds"].grad.contiguous(),
    }
    for i in range(config.num_hidden_layers):
        expected[f"grad_ffn_in.{i}"] = captured[f"ffn{i}"].grad.contiguous()
    names = GRAD_PARAMS + ([] if config.tie_word_embeddings else ["lm_head.weight"])
    for p in names:
        expected[f"grad.{p}"] = params[p].grad.contiguous()
    save_file(expected, out_dir / "expected.safetensors")
    print(f"{name}: loss {out.loss.item():.6f}, files {sorted(f.name for f in out_dir.iterdir())}")


def check_window_matters() -> None:
    """The Mistral case must actually exercise the window: full attention gives other logits."""
    cls, config = CASES["mistral_tiny"]
    path = ROOT / "mistral_tiny"
    windowed = cls.from_pretrained(path, attn_implementation="eager").eval()
    full_cfg = json.loads((path / "config.json").read_text())
    assert full_cfg["sliding_window"] < SEQ
    tokens = torch.arange(SEQ).unsqueeze(0) % config.vocab_size
    full = cls.from_pretrained(path, attn_implementation="eager", sliding_window=None).eval()
    with torch.no_grad():
        diff = (windowed(tokens).logits - full(tokens).logits).abs().max().item()
    assert diff > 1e-3, f"sliding window had no effect ({diff})"


if __name__ == "__main__":
    for i, (case, (cls, cfg)) in enumerate(CASES.items()):
        run_case(case, cls, cfg, seed=1234 + i)
    check_window_matters()
    total = sum(f.stat().st_size for f in ROOT.rglob("*") if f.is_file())
    assert total < 2_000_000, f"fixtures too large: {total} bytes"
    print(f"total fixture size {total} bytes")
