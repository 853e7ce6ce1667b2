"""PyTorch CPU baseline for `cargo bench -p meft-models` (called by benches/forward.rs).

A self-contained LLaMA module (no transformers) with SmolLM2-135M shapes and random f32 weights
(timing does not depend on weight values), run on `--threads` CPU threads. Prints one JSON line:
{"infer_tok_s": ..., "fwd_bwd_tok_s": ...} for the inference forward at 1 × seq and for
forward + backward with a frozen base (gradient to the input embeddings only).

Usage: python3 meft-models/benches/torch_llama.py [--seq 256] [--threads 2] [--iters 5]
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

D, LAYERS, FFN, HEADS, KV_HEADS, VOCAB, THETA, EPS = 576, 30, 1536, 9, 3, 49152, 100000.0, 1e-5
HEAD_DIM = D // HEADS


def rms_norm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * w


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Llama(torch.nn.Module):
    def __init__(self):
        super().__init__()
        p = lambda *s: torch.nn.Parameter(torch.randn(*s) / s[-1] ** 0.5, requires_grad=False)
        self.embed = p(VOCAB, D)
        self.layers = torch.nn.ModuleList()
        for _ in range(LAYERS):
            layer = torch.nn.Module()
            layer.q, layer.k = p(HEADS * HEAD_DIM, D), p(KV_HEADS * HEAD_DIM, D)
            layer.v, layer.o = p(KV_HEADS * HEAD_DIM, D), p(D, HEADS * HEAD_DIM)
            layer.gate, layer.up, layer.down = p(FFN, D), p(FFN, D), p(D, FFN)
            layer.n1 = torch.nn.Parameter(torch.ones(D), requires_grad=False)
            layer.n2 = torch.nn.Parameter(torch.ones(D), requires_grad=False)
            self.layers.append(layer)
        self.norm = torch.nn.Parameter(torch.ones(D), requires_grad=False)

    def forward(self, h):
        b, s, _ = h.shape
        inv = 1.0 / THETA ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM)
        ang = torch.arange(s).float()[:, None] * inv[None, :]
        cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
        mask = torch.full((s, s), float("-inf")).triu(1)
        for l in self.layers:
            x = rms_norm(h, l.n1)
            q = (x @ l.q.t()).view(b, s, HEADS, HEAD_DIM).transpose(1, 2)
            k = (x @ l.k.t()).view(b, s, KV_HEADS, HEAD_DIM).transpose(1, 2)
            v = (x @ l.v.t()).view(b, s, KV_HEADS, HEAD_DIM).transpose(1, 2)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            rep = HEADS // KV_HEADS
            k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
            att = torch.softmax(q @ k.transpose(-1, -2) / HEAD_DIM ** 0.5 + mask, -1)
            h = h + ((att @ v).transpose(1, 2).reshape(b, s, D) @ l.o.t())
            x = rms_norm(h, l.n2)
            h = h + (F.silu(x @ l.gate.t()) * (x @ l.up.t())) @ l.down.t()
        return rms_norm(h, self.norm) @ self.embed.t()


def timed(fn, iters):
    fn()
    fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Llama().eval()
    tokens = torch.randint(0, VOCAB, (1, args.seq))

    def infer():
        with torch.inference_mode():
            model(model.embed[tokens])

    def fwd_bwd():
        h = model.embed[tokens].detach().requires_grad_(True)
        logits = model(h)
        F.cross_entropy(logits[0, :-1], tokens[0, 1:]).backward()

    t_inf, t_fb = timed(infer, args.iters), timed(fwd_bwd, args.iters)
    print(json.dumps({"infer_tok_s": args.seq / t_inf, "fwd_bwd_tok_s": args.seq / t_fb}))


if __name__ == "__main__":
    main()
