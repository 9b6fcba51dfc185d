"""CPU benchmark of sparse execution across batch sizes: ``layout="auto"`` vs dense, CSR and BSR.

A ``[4096 x 4096]`` Linear (float32) applied to ``B`` input rows, ``B`` in 1, 8, 64, 256
(one token being decoded ... a batch of 256), for unstructured sparsities 50-99 % and for
masks of whole ``32 x 32`` tiles (70 %, 90 %). In each cell the four layers compute the same
function (checked) and are timed in the same run, interleaved (every layer after every other)
(``sk.bench.interleaved_times``), so the *ratios* hold even on a loaded machine. ``auto`` is
``sk.execute.sparse_linear(linear, "auto")`` built once per weight, *without* telling it the
batch: it picks its layout on every call from the rows of its input (issue 20).

Target (``--check``): in every cell ``auto`` runs at >= 0.9x the speed of the fastest of
dense / CSR / BSR. Also reported, not checked: issue 3's targets at batch 256 (95 % unstructured
>= 1.8x dense, 90 % tiles >= 3x, 50 % unstructured >= 0.9x dense), set on the Intel Xeon
(AVX-512) the book was first run on; they measure MKL's kernels on that CPU, not ``auto``'s
choice (on the AMD EPYC, BSR of 90 % tiles runs at 2.5-2.7x dense).

    python benchmarks/bench_execute.py [--repeats 12] [--batches 1,8,64,256] [--check]

Prints markdown tables and writes them to ``benchmarks/results/execute_cpu.md``. Sparse
kernels suffer more from a busy machine than dense GEMM (at batch 1 with 2 threads on an
oversubscribed CPU, a CSR product waits for its threads far longer than it computes): run it
quiet, and read the load averages it records.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

import sparsekit as sk
from sparsekit import execute as ex
from sparsekit import synthetic
from sparsekit.bench import cpu_name

N = 4096
BATCHES = (1, 8, 64, 256)
SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99)
TILES = (0.7, 0.9)
WITHIN = 0.9
# issue 3's targets at batch 256, set on the Intel Xeon: (kind, sparsity) -> minimum speedup of
# "auto" over dense (reported, not checked: they measure that CPU's kernels)
XEON_TARGETS = {("unstructured", 0.5): 0.9, ("unstructured", 0.95): 1.8, ("tiles", 0.9): 3.0}
LAYERS = ("dense", "auto", "csr", "bsr")


def williams_orders(n: int) -> list[list[int]]:
    """A balanced Latin square (Williams 1949) for even ``n``: ``n`` orders of ``range(n)`` in
    which every item takes every position once and follows every other item exactly once.

    A plain rotation keeps the cyclic order, so one layer would always run right after the
    dense product has swept 64 MB through the caches (a measured 10-25 % penalty for a CSR
    product of 0.7 ms); here each layer's predecessor is every other layer equally often.
    """
    first = [0] + [(k + 1) // 2 if k % 2 else n - k // 2 for k in range(1, n)]
    return [[(i + shift) % n for i in first] for shift in range(n)]


def masked_linear(kind: str, sparsity: float) -> nn.Linear:
    torch.manual_seed(0)
    linear = nn.Linear(N, N)
    mask = (synthetic.unstructured_mask((N, N), sparsity) if kind == "unstructured"
            else synthetic.block_mask((N, N), sparsity, (32, 32)))
    sk.apply_masks(linear, {"weight": mask})
    return linear


def run_weight(kind: str, sparsity: float, batches: list[int], repeats: int) -> list[dict[str, object]]:
    """Time dense / auto / CSR / BSR for one weight at every batch size."""
    linear = masked_linear(kind, sparsity)
    w, b = linear.weight.detach().clone(), linear.bias.detach().clone()
    layers = {"dense": ex.SparseLinear(w, b, "dense"), "auto": ex.sparse_linear(linear, "auto"),
              "csr": ex.SparseLinear(w, b, "csr"), "bsr": ex.SparseLinear(w, b, "bsr")}
    rows = []
    for batch in batches:
        x = torch.randn(batch, N, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref = linear(x)
            for name, layer in layers.items():  # same function, whatever the layout
                torch.testing.assert_close(layer(x), ref, rtol=1e-4, atol=1e-3, msg=f"{name} differs")
        fns = {k: (lambda layer=layer, x=x: layer(x)) for k, layer in layers.items()}
        # short products: average back-to-back calls, enough for the fastest layout to run ~5 ms
        once = sk.bench.interleaved_times(fns, warmup=2, repeats=1, inner=1)  # also the warm-up
        inner = min(64, max(1, round(5e-3 / min(t for v in once.values() for t in v))))
        times = {k: [] for k in LAYERS}
        orders = williams_orders(len(LAYERS))
        for r in range(repeats):  # round-robin; over 4 rounds each layer follows each other one once
            order = [LAYERS[i] for i in orders[r % len(orders)]]
            for k, v in sk.bench.interleaved_times({k: fns[k] for k in order}, warmup=0, repeats=1,
                                                   inner=inner).items():
                times[k] += v
        med = {k: statistics.median(v) for k, v in times.items()}
        # paired: the ratio within each round (the four calls ran back to back), then the median
        speed = {k: statistics.median(d / t for d, t in zip(times["dense"], times[k])) for k in LAYERS}
        best = max(("dense", "csr", "bsr"), key=speed.__getitem__)
        ratio = statistics.median(t_best / t_auto for t_best, t_auto in zip(times[best], times["auto"]))
        picks = layers["auto"].layout_for(batch)
        rows.append({"kind": kind, "sparsity": sparsity, "batch": batch, "dense_ms": med["dense"] * 1e3,
                     "speed": speed, "best": best, "picks": picks, "ratio": ratio,
                     "pick_ratio": speed[picks] / speed[best]})
    return rows


def matrix(rows: list[dict], kind: str, batches: list[int], cell) -> list[str]:
    sps = sorted({r["sparsity"] for r in rows if r["kind"] == kind})
    out = ["| batch | " + " | ".join(f"{s:.0%}" for s in sps) + " |", "|---|" + "---:|" * len(sps)]
    for batch in batches:
        by_s = {r["sparsity"]: r for r in rows if r["kind"] == kind and r["batch"] == batch}
        out.append(f"| {batch} | " + " | ".join(cell(by_s[s]) for s in sps) + " |")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "execute_cpu.md")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")

    load0 = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    start = dt.datetime.now(dt.timezone.utc)
    rows = []
    for kind, grid in (("unstructured", SPARSITIES), ("tiles", TILES)):
        for s in grid:
            for r in run_weight(kind, s, batches, args.repeats):
                rows.append(r)
                sp = r["speed"]
                print(f"{kind:12s} {s:4.0%} batch {r['batch']:3d}: dense {r['dense_ms']:7.2f} ms, "
                      f"CSR {sp['csr']:5.2f}x, BSR {sp['bsr']:5.2f}x, auto ({r['picks']}) {sp['auto']:5.2f}x, "
                      f"auto/best {r['ratio']:.2f}", flush=True)
    load1 = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3

    failed = [f"{r['kind']} {r['sparsity']:.0%} batch {r['batch']}: auto/best {r['ratio']:.2f}"
              for r in rows if r["ratio"] < WITHIN]
    xeon = [f"{kind} {s:.0%}: auto {r['speed']['auto']:.2f}x dense (Xeon target {target}x: "
            f"{'met' if r['speed']['auto'] >= target else 'missed'})"
            for (kind, s), target in XEON_TARGETS.items()
            for r in rows if r["kind"] == kind and r["sparsity"] == s and r["batch"] == 256]

    head = (f"# Sparse execution on CPU across batch sizes\n\n"
            f"[{N} x {N}] float32 weight (+ bias) x [{N} x B] input; dense, auto, CSR and BSR (8 x 8 storage "
            f"blocks) timed in {args.repeats} rounds in which each layer follows each other one equally "
            f"often (a Williams square); a timing is a run of back-to-back calls lasting ~5 ms for the "
            f"fastest layout; a speedup is the median over rounds of the "
            f"ratio within a round (paired), \"fastest\" is the layout with the highest such speedup.\n\n"
            f"device: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
            f"date: {start:%Y-%m-%d %H:%M} UTC; load average (1, 5, 15 min) at start "
            f"{', '.join(f'{v:.1f}' for v in load0)}, at end {', '.join(f'{v:.1f}' for v in load1)}.\n\n"
            f"`auto` = `sk.execute.sparse_linear(linear, \"auto\")`, built once per weight; it picks by "
            f"the rows of each input (`sk.execute.CROSSOVERS`).\n")
    parts = [head,
             "## CSR speedup over dense (unstructured sparsity)\n", *matrix(rows, "unstructured", batches,
                                                                            lambda r: f"{r['speed']['csr']:.2f}x"),
             "\n## `auto`: its pick and its speed relative to the fastest layout (target >= 0.9)\n",
             *matrix(rows, "unstructured", batches, lambda r: f"{r['picks']} {r['ratio']:.2f}"),
             "\n(Cell: the layout `auto` picks for that batch, and `auto`'s measured speed / the fastest layout's.)",
             "\n## Every cell\n",
             "| mask | sparsity | batch | dense ms | CSR | BSR | fastest | auto picks | auto | auto / fastest "
             "| its pick's own column / fastest | ok |",
             "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---|"]
    for r in rows:
        sp = r["speed"]
        parts.append(f"| {r['kind']} | {r['sparsity']:.0%} | {r['batch']} | {r['dense_ms']:.2f} | "
                     f"{sp['csr']:.2f}x | {sp['bsr']:.2f}x | {r['best']} | {r['picks']} | {sp['auto']:.2f}x | "
                     f"{r['ratio']:.2f} | {r['pick_ratio']:.2f} | {'yes' if r['ratio'] >= WITHIN else 'NO'} |")
    n_ok = len(rows) - sum(r["ratio"] < WITHIN for r in rows)
    n_pick = len(rows) - sum(r["pick_ratio"] < WITHIN for r in rows)
    parts.append(f"\n`auto` measured itself within {WITHIN}x of the fastest layout in {n_ok} of {len(rows)} cells; "
                 f"the layout it picks, read from that layout's own column, is within {WITHIN}x in {n_pick} of "
                 f"{len(rows)} (a gap between the two is timing noise between two copies of the same kernel)."
                 + (f" Missed: {'; '.join(failed)}." if failed else ""))
    if xeon:
        parts.append("\nIssue 3's batch-256 targets, set on the Intel Xeon (reported, not checked here): "
                     + "; ".join(xeon) + ".")
    text = "\n".join(parts) + "\n"
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if failed:
        print(f"targets missed: {'; '.join(failed)}", file=sys.stderr)
        return 1 if args.check else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
