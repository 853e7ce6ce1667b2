"""PyTorch peer for the meft-router bench: dense top-K and grouped Key-Experts on 2 threads.

Usage: python3 torch_peer.py D M T P K REPS. Prints one line: `torch dense_ms=<ms> ke_ms=<ms>`.
Key-Experts here is the best PyTorch formulation measured for this project: tokens grouped by probed
expert, one matmul per expert block against its own keys (no key copies), then a per-token top-K.
"""
import sys
import time

import torch


def dense(x, keys, k):
    return torch.topk(x @ keys.T, k, dim=1)


def key_experts(x, keys, gates, n, p, k):
    t, d = x.shape
    m = keys.shape[0] // n
    g = x @ gates.T
    gs, ge = torch.topk(g, p, dim=1)
    flat_e = ge.reshape(-1)
    order = torch.argsort(flat_e, stable=True)
    counts = torch.bincount(flat_e, minlength=n).tolist()
    tok = (order // p)
    cand = torch.empty(t * p, m)
    start = 0
    blocks = keys.view(n, m, d)
    for e, c in enumerate(counts):
        if c:
            idx = order[start:start + c]
            cand[idx] = x[tok[start:start + c]] @ blocks[e].T
            start += c
    cand = cand.view(t, p, m) * gs.unsqueeze(2)
    ids = ge.unsqueeze(2) * m + torch.arange(m).view(1, 1, m)
    s, j = torch.topk(cand.reshape(t, p * m), min(k, p * m), dim=1)
    return s, torch.gather(ids.reshape(t, p * m), 1, j)


def best_ms(fn, reps):
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


def main():
    d, m_total, t, p, k, reps = (int(a) for a in sys.argv[1:7])
    torch.set_num_threads(2)
    torch.manual_seed(0)
    n = int(round(4 * m_total ** 0.5))
    keys = torch.randn(m_total, d) * 0.02
    x = torch.randn(t, d)
    gates = 50.0 * keys.view(n, m_total // n, d).mean(dim=1)
    with torch.no_grad():
        dense_ms = best_ms(lambda: dense(x, keys, k), reps)
        ke_ms = best_ms(lambda: key_experts(x, keys, gates, n, p, k), reps)
    print(f"torch dense_ms={dense_ms:.2f} ke_ms={ke_ms:.2f}")


if __name__ == "__main__":
    main()
