#!/usr/bin/env python3
"""Writes a tiny dequantisation reference for meft-models' GGUF reader.

For every GGML type meft reads (F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) it draws two random
blocks (scales replaced by finite f16 values), dequantises them with the `gguf` Python package
(independent of the Rust code) and stores the raw bytes (hex) and the expected floats.

Run by hand (no network, needs `pip install gguf numpy`):
    python3 tools/golden/gguf_dequant_reference.py
Output: meft-models/tests/fixtures/gguf_dequant_reference.json (a few KB). The Rust test
`meft-models/tests/gguf_dequant.rs` compares both Rust dequantisers against it.
"""

import json
import pathlib

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

OUT = pathlib.Path(__file__).resolve().parents[2] / "meft-models/tests/fixtures/gguf_dequant_reference.json"
# Byte offsets of the f16 scale fields inside one block, per type.
SCALE_FIELDS = {T.Q4_0: [0], T.Q8_0: [0], T.Q4_1: [0, 2], T.Q4_K: [0, 2], T.Q6_K: [208]}
TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q8_0, T.Q4_K, T.Q6_K]


def random_blocks(rng, qtype, n_blocks):
    block_len, block_bytes = GGML_QUANT_SIZES[qtype]
    if qtype == T.F32:
        raw = rng.standard_normal(n_blocks * block_len).astype("<f4").tobytes()
    elif qtype == T.F16:
        raw = rng.standard_normal(n_blocks * block_len).astype("<f2").tobytes()
    elif qtype == T.BF16:
        bits = (rng.standard_normal(n_blocks * block_len).astype("<f4").view("<u4") >> 16).astype("<u2")
        raw = bits.tobytes()
    else:
        data = bytearray(rng.integers(0, 256, n_blocks * block_bytes, dtype=np.uint8).tobytes())
        for b in range(n_blocks):
            for at in SCALE_FIELDS[qtype]:
                scale = np.float16(rng.uniform(-0.05, 0.05)).tobytes()
                data[b * block_bytes + at : b * block_bytes + at + 2] = scale
        raw = bytes(data)
    return raw, n_blocks * block_len


def main():
    rng = np.random.default_rng(20261123)
    cases = []
    for qtype in TYPES:
        n_blocks = 8 if GGML_QUANT_SIZES[qtype][0] == 1 else 2
        raw, n = random_blocks(rng, qtype, n_blocks)
        values = dequantize(np.frombuffer(raw, dtype=np.uint8), qtype).reshape(-1).astype(np.float32)
        assert values.size == n
        cases.append({"type": qtype.name, "type_id": int(qtype), "n": n, "hex": raw.hex(),
                      "values": [float(v) for v in values]})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"generator": "tools/golden/gguf_dequant_reference.py", "cases": cases}) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
