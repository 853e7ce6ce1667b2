#!/usr/bin/env python3
"""Independent reference numbers for the real SmolLM2-135M-Instruct GGUF (spec section 11).

Everything here is computed without meft: the `gguf` Python package reads and dequantises the file,
`transformers` (its own GGUF tokenizer conversion) tokenises, and a float64 NumPy LLaMA forward
(interleaved RoPE on the GGUF Q/K layout, GQA, RMSNorm, SwiGLU, tied head) gives the mean
next-token NLL of a fixed English sentence and a few greedy tokens.

Run by hand after `cargo xtask assets` (or with the GGUF at $MEFT_HOME/models/):
    python3 tools/golden/smollm2_reference.py
Output: meft-models/tests/fixtures/smollm2_reference.json (about 2 KB), read by
meft-models/tests/real_smollm2.rs.
"""

import json
import os
import pathlib

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "meft-models/tests/fixtures/smollm2_reference.json"
HOME = pathlib.Path(os.environ.get("MEFT_HOME", pathlib.Path.home() / ".cache/meft"))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs back into the forest to sleep."
PROMPT = "The capital of France is"
TOKENIZER_CASES = [SENTENCE, PROMPT, "In 2024, 12345 apples<|im_end|> cost $3.50!", "héllo wörld 日本語 🙂"]
GREEDY_STEPS = 6
CHECKED_TENSORS = ["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight", "blk.0.attn_norm.weight"]


class Model:
    def __init__(self, path):
        reader = GGUFReader(path)
        meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
        self.layers = meta["llama.block_count"]
        self.heads = meta["llama.attention.head_count"]
        self.kv_heads = meta["llama.attention.head_count_kv"]
        self.eps = meta["llama.attention.layer_norm_rms_epsilon"]
        self.theta = meta["llama.rope.freq_base"]
        self.w = {}
        self.checks = {}
        for t in reader.tensors:
            values = dequantize(t.data, t.tensor_type).astype(np.float32)
            if t.name in CHECKED_TENSORS:
                flat = values.reshape(-1).astype(np.float64)
                self.checks[t.name] = {"type": t.tensor_type.name, "first": [float(v) for v in flat[:8]],
                                       "sum": float(flat.sum()), "abs_sum": float(np.abs(flat).sum())}
            self.w[t.name] = values.astype(np.float64)

    def rms(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def rope(self, x):
        """Adjacent pairs (2i, 2i+1) rotate by pos * theta^(-2i/d)."""
        seq, _, d = x.shape
        inv = self.theta ** (-np.arange(0, d, 2) / d)
        ang = np.arange(seq)[:, None] * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def attention(self, i, x):
        seq = x.shape[0]
        w = lambda n: self.w[f"blk.{i}.{n}.weight"]
        q = (x @ w("attn_q").T).reshape(seq, self.heads, -1)
        k = (x @ w("attn_k").T).reshape(seq, self.kv_heads, -1)
        v = (x @ w("attn_v").T).reshape(seq, self.kv_heads, -1)
        q, k = self.rope(q), self.rope(k)
        group = self.heads // self.kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1])
        scores = scores + np.triu(np.full((seq, seq), -np.inf), 1)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", probs, v).reshape(seq, -1)
        return out @ w("attn_output").T

    def logits(self, ids):
        emb = self.w["token_embd.weight"]
        x = emb[ids]
        for i in range(self.layers):
            x = x + self.attention(i, self.rms(x, self.w[f"blk.{i}.attn_norm.weight"]))
            h = self.rms(x, self.w[f"blk.{i}.ffn_norm.weight"])
            gate = h @ self.w[f"blk.{i}.ffn_gate.weight"].T
            up = h @ self.w[f"blk.{i}.ffn_up.weight"].T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ self.w[f"blk.{i}.ffn_down.weight"].T
        x = self.rms(x, self.w["output_norm.weight"])
        return x @ self.w.get("output.weight", emb).T


def mean_nll(logits, ids):
    logits = logits[:-1]
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return float((logz - logits[np.arange(len(ids) - 1), ids[1:]]).mean())


def main():
    from transformers import AutoTokenizer

    path = HOME / "models" / GGUF_NAME
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = Model(str(path))
    ids = tok.encode(SENTENCE, add_special_tokens=False)
    nll = mean_nll(model.logits(np.array(ids)), np.array(ids))
    greedy = tok.encode(PROMPT, add_special_tokens=False)
    start = len(greedy)
    for _ in range(GREEDY_STEPS):
        greedy.append(int(model.logits(np.array(greedy))[-1].argmax()))
    out = {
        "generator": "tools/golden/smollm2_reference.py (gguf + transformers tokenizer + float64 NumPy)",
        "gguf": GGUF_NAME,
        "sentence": SENTENCE,
        "sentence_ids": ids,
        "mean_nll": nll,
        "prompt": PROMPT,
        "greedy_ids": greedy[start:],
        "greedy_text": tok.decode(greedy[start:]),
        "tokenizer_cases": [{"text": t, "ids": tok.encode(t, add_special_tokens=False)} for t in TOKENIZER_CASES],
        "tensors": model.checks,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}: mean_nll {nll:.6f}, greedy {out['greedy_text']!r}")


if __name__ == "__main__":
    main()
