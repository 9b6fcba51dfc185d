"""CPU benchmark: a channel-pruned CNN is a smaller *dense* model, so it is faster anywhere.

Removes 50 % of the output channels of every hidden layer of the MNIST-1D CNN
(``sparsekit.models.CNN1d``, L1 filter norms, ``sk.structured.prune_channels``) and
compares parameters, FLOPs and measured latency (batch 256, median of interleaved
repeats) of the dense and the shrunk model, in one run. Target (issue 4): the measured
speedup is at least 0.8 x the FLOP reduction.

    .venv/bin/python benchmarks/bench_structured.py [--width 128] [--batch 256] [--threads N]

Writes ``benchmarks/results/structured_cpu.md`` (with machine, torch version and date).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time
from pathlib import Path

import torch

import sparsekit as sk

RESULTS = Path(__file__).resolve().parent / "results" / "structured_cpu.md"


def interleaved_medians(fns: dict[str, object], x: torch.Tensor, rounds: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each model, timing them in alternation so load drifts hit all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for f in fns.values():
            for _ in range(3):
                f(x)
        for _ in range(rounds):
            for k, f in fns.items():
                start = time.perf_counter()
                for _ in range(inner):
                    f(x)
                times[k].append((time.perf_counter() - start) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=128, help="channels of every conv layer of the dense CNN")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--sparsity", type=float, default=0.5, help="fraction of channels removed per hidden layer")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: steady on a shared machine; 0 keeps torch's default)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write the results file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    sk.seed_everything(0)
    dense = sk.models.CNN1d(channels=(args.width,) * 3).eval()
    x = torch.randn(args.batch, 40)
    small = sk.structured.prune_channels(dense, args.sparsity, x[:8]).eval()
    cd, cs = sk.structured.cost(dense, x), sk.structured.cost(small, x)
    lat = interleaved_medians({"dense": dense, "shrunk": small}, x, args.rounds, inner=5)
    flop_red = cd.flops / cs.flops
    speedup = lat["dense"] / lat["shrunk"]
    ratio = speedup / flop_red
    rows = [
        "| model | params | MFLOPs (batch) | latency ms |",
        "| --- | ---: | ---: | ---: |",
        f"| dense CNN1d({args.width}x3) | {cd.params:,} | {cd.flops / 1e6:.1f} | {lat['dense'] * 1e3:.3f} |",
        f"| shrunk ({args.sparsity:.0%} channels removed) | {cs.params:,} | {cs.flops / 1e6:.1f} "
        f"| {lat['shrunk'] * 1e3:.3f} |",
    ]
    summary = (f"FLOP reduction {flop_red:.2f}x, parameter reduction {cd.params / cs.params:.2f}x, "
               f"measured speedup {speedup:.2f}x; speedup / FLOP reduction = {ratio:.2f} "
               f"(target >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'})")
    header = (f"# Structured pruning, CPU latency\n\n{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
              f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, batch {args.batch}, median of {args.rounds} interleaved rounds\n")
    text = "\n".join([header, *rows, "", summary, ""])
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
