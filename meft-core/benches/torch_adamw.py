#!/usr/bin/env python3
"""PyTorch CPU AdamW peers for meft-core's host_adamw bench (2 threads).

Dense: torch.optim.AdamW(fused=True) and (foreach=True) on one flat parameter of N million f32,
params/s and effective GB/s at 28 bytes per parameter. Lazy: gather the touched rows of a store,
apply AdamW with per-row bias correction, scatter them back (what PyTorch code does without an
in-place row kernel). Median of timed steps after warm-up. Exits 1 with a reason on stderr when
torch cannot be imported, so the Rust bench can say why the comparison was skipped.
"""

import argparse
import statistics
import sys
import time

try:
    import torch
except ImportError as e:  # the bench prints this and carries on
    sys.exit(f"torch is not importable ({e})")


def timed(fn, warmup=2, reps=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def dense(n, mode):
    p = torch.nn.Parameter(torch.randn(n))
    p.grad = torch.randn(n) * 0.01
    opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.01, **{mode: True})
    return timed(opt.step)


def lazy(rows, row_len, touched):
    gen = torch.Generator().manual_seed(0)
    p, g = torch.randn(rows, row_len), torch.randn(rows, row_len) * 0.01
    m, v = torch.zeros(rows, row_len), torch.zeros(rows, row_len)
    steps = torch.zeros(rows, 1)
    idx = torch.randperm(rows, generator=gen)[:touched].sort().values
    lr, b1, b2, eps, wd = 1e-3, 0.9, 0.999, 1e-8, 0.01

    def step():
        pr, gr, mr, vr = p[idx], g[idx], m[idx], v[idx]
        sr = steps[idx] + 1
        pr.mul_(1 - lr * wd)
        mr.lerp_(gr, 1 - b1)
        vr.mul_(b2).addcmul_(gr, gr, value=1 - b2)
        bc1, bc2 = 1 - b1**sr, 1 - b2**sr
        denom = (vr.sqrt() / bc2.sqrt()).add_(eps)
        pr.sub_(lr / bc1 * mr / denom)
        p[idx], m[idx], v[idx], steps[idx] = pr, mr, vr, sr

    return timed(step)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="16,64", help="dense sizes in millions (2**20) of parameters")
    ap.add_argument("--rows", type=int, default=65536)
    ap.add_argument("--row-len", type=int, default=1152)
    ap.add_argument("--touched", type=int, default=8192)
    a = ap.parse_args()
    torch.set_num_threads(2)
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'case':<34}{'ms':>9}{'G params/s':>12}{'GB/s @28B':>11}")
    for millions in [int(s) for s in a.sizes.split(",") if s]:
        n = millions << 20
        for mode in ("fused", "foreach"):
            t = dense(n, mode)
            print(f"{f'torch dense {mode} {millions}M':<34}{t * 1e3:>9.2f}{n / t / 1e9:>12.3f}{28 * n / t / 1e9:>11.1f}")
    n = a.touched * a.row_len
    t = lazy(a.rows, a.row_len, a.touched)
    case = "torch lazy gather/update/scatter"
    print(f"{case:<34}{t * 1e3:>9.2f}{n / t / 1e9:>12.3f}{28 * n / t / 1e9:>11.1f}")


if __name__ == "__main__":
    main()
