"""CPU benchmark: a channel-pruned CNN is a smaller *dense* model, so it is faster anywhere.

Removes 50 % of the output channels of every hidden layer of the MNIST-1D CNN
(``sparsekit.models.CNN1d``, L1 filter norms, ``sk.structured.shrink_channels``) at several
widths and compares parameters, FLOPs and measured latency (batch 256) of the dense and the
shrunk model. Both are measured as deployed: in eval mode with every BatchNorm folded into
the convolution before it (``torch.fx.experimental.optimization.fuse``; ``--no-fuse`` keeps
them). The two models of a width are timed in alternation, and the speedup is the median of
the per-round ratios (each round times both within milliseconds, so a drift in machine speed
cancels).

Target (issue 4): the measured speedup is at least 0.8 x the FLOP reduction. It is checked
at ``--target-width`` (256 channels): how much of the FLOP reduction becomes time depends on
whether the convolutions are compute-bound, and the sweep shows where that starts on this CPU
(at 32 channels, the book's CNN, fixed per-layer costs dominate).

    .venv/bin/python benchmarks/bench_structured.py [--widths 32 64 128 256] [--threads N] [--check]

Writes ``benchmarks/results/structured_cpu.md`` (with machine, torch version and date).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
from pathlib import Path

import torch
from torch.fx.experimental.optimization import fuse

import sparsekit as sk

RESULTS = Path(__file__).resolve().parent / "results" / "structured_cpu.md"
TARGET = 0.8
WARMUP_S = 0.5  # seconds of round-robin warm-up: oneDNN builds kernels for new shapes


def measure(width: int, sparsity: float, x: torch.Tensor, rounds: int, folded: bool) -> dict[str, object]:
    """Costs and paired latencies of CNN1d(width) and its channel-pruned copy."""
    sk.seed_everything(0)
    dense = sk.models.CNN1d(channels=(width,) * 3).eval()
    small = sk.structured.shrink_channels(dense, sparsity, x[:8]).eval()
    cd, cs = sk.structured.cost(dense, x), sk.structured.cost(small, x)
    if folded:
        fused = fuse(dense), fuse(small)
        with torch.no_grad():  # folding BatchNorm into the convolution changes rounding only
            for f, m in zip(fused, (dense, small)):
                torch.testing.assert_close(f(x), m(x), rtol=1e-4, atol=1e-5)
        dense, small = fused
    times = sk.bench.interleaved_times({"dense": lambda: dense(x), "shrunk": lambda: small(x)},
                                       warmup=3, repeats=rounds, inner=5, warmup_s=WARMUP_S)
    ratios = [d / s for d, s in zip(times["dense"], times["shrunk"])]
    q1, speedup, q3 = statistics.quantiles(ratios, n=4)
    return {"width": width, "dense": cd, "shrunk": cs, "flop_red": cd.flops / cs.flops,
            "lat_dense": statistics.median(times["dense"]), "lat_shrunk": statistics.median(times["shrunk"]),
            "speedup": speedup, "q1": q1, "q3": q3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256],
                    help="channels of every conv layer of the dense CNN")
    ap.add_argument("--target-width", type=int, default=256, help="width at which the target is checked")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--sparsity", type=float, default=0.5, help="fraction of channels removed per hidden layer")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: steady on a shared machine; 0 keeps torch's default)")
    ap.add_argument("--no-fuse", action="store_true", help="keep BatchNorm layers separate")
    ap.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write the results file")
    args = ap.parse_args()
    if args.target_width not in args.widths:
        ap.error(f"--target-width {args.target_width} is not among --widths {args.widths}")
    if args.threads:
        torch.set_num_threads(args.threads)

    x = torch.randn(args.batch, 40, generator=torch.Generator().manual_seed(0))
    rows = ["| width | params dense → shrunk | MFLOPs dense → shrunk | latency ms dense → shrunk "
            "| FLOP reduction | speedup (quartiles) | speedup / FLOP red. |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    target_ratio = None
    for width in args.widths:
        r = measure(width, args.sparsity, x, args.rounds, folded=not args.no_fuse)
        ratio = r["speedup"] / r["flop_red"]
        if width == args.target_width:
            target_ratio = ratio
        rows.append(f"| {width} | {r['dense'].params:,} → {r['shrunk'].params:,} "
                    f"| {r['dense'].flops / 1e6:.1f} → {r['shrunk'].flops / 1e6:.1f} "
                    f"| {r['lat_dense'] * 1e3:.2f} → {r['lat_shrunk'] * 1e3:.2f} | {r['flop_red']:.2f}x "
                    f"| {r['speedup']:.2f}x ({r['q1']:.2f}-{r['q3']:.2f}) | {ratio:.2f} |")
        print(rows[-1], flush=True)
    met = target_ratio >= TARGET
    summary = (f"Target: at width {args.target_width}, speedup / FLOP reduction = {target_ratio:.2f} "
               f"(>= {TARGET}: {'met' if met else 'NOT met'}).")
    header = (f"# Structured pruning, CPU latency\n\n{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
              f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, batch {args.batch}, {args.sparsity:.0%} of the channels of every "
              f"hidden layer removed, {args.rounds} interleaved rounds; BatchNorm "
              f"{'kept' if args.no_fuse else 'folded into the convolutions (both models)'}; "
              f"params and FLOPs are of the models before folding\n")
    text = "\n".join([header, *rows, "", summary, ""])
    print("\n" + text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
    if not met:
        print(f"target missed at width {args.target_width}", file=sys.stderr)
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
