"""Benchmark: exact global top-k selection over 50 M weights.

Compares, side by side in one run, on 12 x Linear(2048, 2048) (50.3 M weights) at 90 %
sparsity:

* ``torch.nn.utils.prune.global_unstructured`` with L1 importance (the stock tool),
* ``sparsekit.select_masks(scope="global")`` (exact count, deterministic ties),
* one ``torch.kthvalue`` over the concatenated scores (a threshold only: the floor).

Goals: select_masks >= 8x faster than global_unstructured, within 3x of kthvalue.
The three are timed round-robin (``sk.bench.compare``: one warm-up round, the median of
three), so background load hits them alike and the ratios are paired; the stock tool's
15 s per call makes this about a minute on a 2-core CPU.
Run: ``.venv/bin/python benchmarks/bench_select.py``.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

import sparsekit as sk

SPARSITY = 0.9


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(12)])
    n = sum(m.weight.numel() for m in model)
    scores = sk.scores.magnitude(model)

    def ours() -> dict:
        return sk.select_masks(scores, SPARSITY, scope="global")

    def floor() -> torch.Tensor:
        flat = torch.cat([s.flatten() for s in scores.values()])
        return torch.kthvalue(flat, round(SPARSITY * n)).values

    def stock() -> None:
        copy = nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(12)])
        copy.load_state_dict(model.state_dict())
        prune.global_unstructured([(m, "weight") for m in copy], prune.L1Unstructured, amount=SPARSITY)

    masks = ours()
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(SPARSITY * n), (pruned, round(SPARSITY * n))

    timings = sk.bench.compare({"ours": ours, "floor": floor, "stock": stock}, warmup=1, repeats=3)
    t_ours, t_floor, t_stock = (timings[k].median for k in ("ours", "floor", "stock"))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Global selection over 50 M weights (CPU)",
        "",
        f"{n / 1e6:.1f} M weights (12 x Linear(2048, 2048)), sparsity {SPARSITY:.0%}; torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
        f"{now}; load average at start {os.getloadavg()[0]:.1f}",
        "",
        "| method | seconds (median of 3, interleaved) |",
        "|---|---:|",
        f"| torch prune.global_unstructured (L1) | {t_stock:.3f} |",
        f"| sparsekit.select_masks(scope='global') | {t_ours:.3f} |",
        f"| torch.kthvalue (threshold only) | {t_floor:.3f} |",
        "",
        f"speedup over global_unstructured: {t_stock / t_ours:.1f}x (goal >= 8x); "
        f"ratio to the kthvalue floor: {t_ours / t_floor:.2f}x (goal <= 3x)",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).resolve().parent / "results" / "select_cpu.md"
    out.write_text(text + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
