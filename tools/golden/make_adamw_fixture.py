#!/usr/bin/env python3
"""Write the AdamW golden fixture for meft-core's host optimizer tests.

Runs torch.optim.AdamW (the default single-tensor CPU path, and fused=True for comparison) for a few
steps over a tiny store of rows and records the initial parameters, every step's gradients, the
parameters after every step and the final moments. Some rows get a gradient every step, some only on
some steps, and one never does, so the Rust test can check both the dense step (every row, like
torch) and the lazy step (rows touched every step match torch; never-touched rows stay bit-identical).

Usage: python3 tools/golden/make_adamw_fixture.py [out.json]
Default output: meft-core/tests/fixtures/adamw_torch.json (a few KB; committed).
"""

import json
import pathlib
import sys

import torch

ROW_LEN = 5  # odd on purpose: exercises remainder loops
N_ROWS = 6
STEPS = 5
# Row roles: 0-3 touched every step; 4 never touched; 5 touched on steps 1, 4 and 5 only.
EVERY_STEP_ROWS = [0, 1, 2, 3]
NEVER_ROWS = [4]
SOMETIMES = {5: {1, 4, 5}}

CASES = [
    dict(name="decay", lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1, seed=1),
    dict(name="no_decay_fast_betas", lr=3e-3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.0, seed=2),
]


def f32_list(t):
    """Exact f32 values as JSON numbers (a Python float holds every f32 exactly)."""
    return [float(x) for x in t.reshape(-1).tolist()]


def make_grads(gen):
    grads = []
    for step in range(1, STEPS + 1):
        g = torch.randn(N_ROWS, ROW_LEN, generator=gen, dtype=torch.float32) * 2.0
        g[NEVER_ROWS] = 0.0
        for row, steps in SOMETIMES.items():
            if step not in steps:
                g[row] = 0.0
        grads.append(g)
    return grads


def run(case, init, grads, fused):
    p = torch.nn.Parameter(init.clone())
    opt = torch.optim.AdamW(
        [p], lr=case["lr"], betas=(case["beta1"], case["beta2"]), eps=case["eps"],
        weight_decay=case["weight_decay"], fused=fused,
    )
    history = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        history.append(f32_list(p.detach()))
    state = opt.state[p]
    return history, f32_list(state["exp_avg"]), f32_list(state["exp_avg_sq"])


def make_case(case):
    gen = torch.Generator().manual_seed(case["seed"])
    init = torch.randn(N_ROWS, ROW_LEN, generator=gen, dtype=torch.float32)
    grads = make_grads(gen)
    params, exp_avg, exp_avg_sq = run(case, init, grads, fused=None)
    fused_params, _, _ = run(case, init, grads, fused=True)
    touched = [[r for r in range(N_ROWS) if bool(g[r].ne(0).any())] for g in grads]
    out = {k: case[k] for k in ("name", "lr", "beta1", "beta2", "eps", "weight_decay")}
    out.update(
        n_rows=N_ROWS, row_len=ROW_LEN, every_step_rows=EVERY_STEP_ROWS, never_rows=NEVER_ROWS,
        init=f32_list(init), grads=[f32_list(g) for g in grads], touched=touched,
        params=params, fused_params=fused_params, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
    )
    return out


def main():
    root = pathlib.Path(__file__).resolve().parents[2]
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "meft-core/tests/fixtures/adamw_torch.json"
    torch.set_num_threads(1)
    doc = {"torch_version": torch.__version__, "steps": STEPS, "cases": [make_case(c) for c in CASES]}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
