"""2:4 sparsity on the GPU: correctness first, then dense vs semi-structured vs Triton timings.

Usage (about 1-3 minutes on an H100; the script stops timing after ``--budget`` seconds)::

    python benchmarks/gpu_24.py                 # on a CUDA GPU: writes benchmarks/results/gpu_24_<gpu>_<date>.md
    python benchmarks/gpu_24.py --dry-run       # CPU, Triton interpreter, tiny shapes: same code paths,
                                                # written to --out (default: a temp dir), marked DRY RUN

What it does (DESIGN section 6):

1. correctness of every path: ``prune_compress_24`` bit-exact vs ``compress_24(w * nm_mask(w))``
   for fp32/fp16/bf16; ``sparse24_linear`` vs the dense reference for every timed shape;
   torch semi-structured vs dense where Sparse Tensor Cores exist;
2. median times (``triton.testing.do_bench_cudagraph``: CUDA graphs of back-to-back calls, so CPU
   launch overhead is excluded; the only timing method) for fp16 ``y = x @ W.T``, ``x [batch, size]``,
   ``W [size, size]`` 2:4-pruned: dense cuBLAS (``F.linear``), torch semi-structured,
   ``sparse24_linear``;
3. the achieved bandwidth of ``prune_compress_24`` against a device-to-device copy;
4. a roofline (a model, not a measurement): from byte counts and FLOPs, the predicted
   ceiling of the speedup over dense vs batch (``roofline``), with datasheet peaks per device
   (``DEVICE_PEAKS``, or ``--peak-tflops`` / ``--bandwidth-gbs``); written as a markdown table
   beside the measured one and as a PNG figure. ``--dry-run`` writes it too (for the GPU
   shapes and an H100 SXM unless ``--model-device`` says otherwise), labelled as a model.

Every step records errors instead of crashing; the markdown table is always written.
Goals from the issue: ``sparse24_linear`` >= 1.5x dense at batch <= 16 for 8192 x 8192
(the byte ratio caps it near 1.78x) and ``prune_compress_24`` >= 60 % of copy bandwidth.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GPU_BATCHES = (1, 8, 16, 64, 4096)
GPU_SIZES = (4096, 8192)
DRY_BATCHES = (1, 3)
DRY_SIZES = (64, 128)  # multiples of 64, as main() requires of every size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true",
                   help="CPU + Triton interpreter, tiny shapes; results are not GPU numbers")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: benchmarks/results on a GPU, a temp dir for --dry-run)")
    p.add_argument("--budget", type=float, default=240.0, help="stop timing new shapes after this many seconds")
    p.add_argument("--repeats", type=int, default=3, help="dry run: timed calls per measurement (sk.bench.time_fn)")
    p.add_argument("--rep-ms", type=float, default=20.0,
                   help="GPU: milliseconds of back-to-back calls per CUDA graph (do_bench_cudagraph's rep)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="override the batch sizes")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="override the square weight sizes")
    p.add_argument("--model-device", default=None, choices=[d[1] for d in DEVICE_PEAKS],
                   help="roofline peaks from this datasheet entry (default: the GPU found; H100 SXM on CPU)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="roofline: dense fp16 tensor-core peak in TFLOP/s (overrides the table)")
    p.add_argument("--bandwidth-gbs", type=float, default=None,
                   help="roofline: memory bandwidth in GB/s (overrides the table)")
    return p.parse_args(argv)


def setup_environment(dry_run: bool) -> None:
    """The interpreter must be chosen before triton is imported anywhere."""
    if dry_run or not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


# ------------------------------------------------------------------ timing


Timer = Callable[[Callable[[], object]], tuple[float, str]]


def make_timer(device: str, repeats: int, rep_ms: float) -> Timer:
    """``timer(fn) -> (median seconds per call, method)``: one method per device.

    On CUDA: ``sk.bench.cuda_graph_time(fn, rep_ms=rep_ms)``, Triton's
    ``triton.testing.do_bench_cudagraph`` (the timer chapter 5 uses too): CPU launch
    overhead excluded, median over 10 graph replays of ``rep_ms`` of back-to-back calls.
    A failed capture is reported as an error in that cell, never timed another way.
    On CPU (dry run): ``sk.bench.time_fn`` wall clock under the Triton interpreter.
    """
    import sparsekit as sk

    def timer(fn: Callable[[], object]) -> tuple[float, str]:
        if device != "cuda":
            return sk.bench.time_fn(fn, warmup=1, repeats=repeats).median, "cpu"
        return sk.bench.cuda_graph_time(fn, rep_ms=rep_ms).median, "graph"

    return timer


# ------------------------------------------------------------------ helpers


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.element_size() == 4 else torch.int16)


def short_error(exc: BaseException) -> str:
    msg = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")
    return msg[:160]


def device_info(device: str) -> dict[str, str]:
    import triton

    info = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version()}
    if device == "cuda":
        cap = torch.cuda.get_device_capability()
        info.update(device=torch.cuda.get_device_name(), capability=f"{cap[0]}.{cap[1]}",
                    cuda=str(torch.version.cuda))
    else:
        info.update(device=f"CPU ({platform.processor() or platform.machine()}), Triton interpreter",
                    capability="n/a", cuda="n/a")
    return info


@functools.lru_cache(maxsize=4)
def pruned_weight(size: int, dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    """A ``[size, size]`` 2:4-pruned weight (cached: the CPU pruning of 8192^2 takes seconds)."""
    import sparsekit as sk

    gen = torch.Generator(device="cpu").manual_seed(seed)
    w = (torch.randn(size, size, generator=gen) / math.sqrt(size)).to(device)
    return (w * sk.nm_mask(w)).to(dtype)


# ------------------------------------------------------------------ 1. correctness


def check_prune_compress(device: str, rows: int, k: int) -> list[dict[str, str]]:
    import sparsekit as sk
    from sparsekit import kernels

    out = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        name = f"prune_compress_24 {str(dtype).replace('torch.', '')} [{rows}x{k}]"
        try:
            w = torch.randn(rows, k, device=device).to(dtype)
            w[0, :4] = 0.0
            w[1 % rows, 4:8] = 1.0  # ties
            values, meta = kernels.prune_compress_24(w)
            ref_v, ref_m = sk.compress_24(w * sk.nm_mask(w))
            ok = torch.equal(meta, ref_m) and torch.equal(bits(values), bits(ref_v))
            out.append({"check": name, "result": "pass (bit-exact)" if ok else "FAIL (differs from reference)"})
        except Exception as exc:  # noqa: BLE001
            out.append({"check": name, "result": f"ERROR {short_error(exc)}"})
    return out


def check_linear(device: str, batch: int, size: int, semi_ok: bool) -> list[dict[str, str]]:
    """sparse24_linear and (if available) semi-structured vs the fp32 dense reference."""
    import torch.nn.functional as F

    from sparsekit import kernels

    out = []
    w = pruned_weight(size, torch.float16, device)
    x = torch.randn(batch, size, device=device).to(torch.float16)
    ref = x.float() @ w.float().T
    scale = float(ref.abs().max().clamp_min(1e-3))
    tol = 2e-2
    try:
        values, meta = kernels.prune_compress_24(w)
        err = float((kernels.sparse24_linear(x, values, meta).float() - ref).abs().max()) / scale
        out.append({"check": f"sparse24_linear fp16 [{batch}x{size}]x[{size}x{size}]^T",
                    "result": f"{'pass' if err <= tol else 'FAIL'} (max rel err {err:.1e})"})
    except Exception as exc:  # noqa: BLE001
        out.append({"check": f"sparse24_linear fp16 [{batch}x{size}]", "result": f"ERROR {short_error(exc)}"})
    if semi_ok:
        try:
            ws = torch.sparse.to_sparse_semi_structured(w)
            err = float((F.linear(x, ws).float() - ref).abs().max()) / scale
            out.append({"check": f"semi-structured fp16 [{batch}x{size}]x[{size}x{size}]^T",
                        "result": f"{'pass' if err <= tol else 'FAIL'} (max rel err {err:.1e})"})
        except Exception as exc:  # noqa: BLE001
            out.append({"check": f"semi-structured fp16 [{batch}x{size}]", "result": f"ERROR {short_error(exc)}"})
    return out


# ------------------------------------------------------------------ 2. timings


def time_shapes(device: str, batches: tuple[int, ...], sizes: tuple[int, ...], timer: Timer,
                semi_ok: bool, deadline: float) -> list[dict[str, object]]:
    import torch.nn.functional as F

    from sparsekit import kernels

    rows: list[dict[str, object]] = []
    for size in sizes:
        w = pruned_weight(size, torch.float16, device)
        values, meta = kernels.prune_compress_24(w)
        try:
            ws = torch.sparse.to_sparse_semi_structured(w) if semi_ok else None
            semi_err = None if semi_ok else "unavailable"
        except Exception as exc:  # noqa: BLE001
            ws, semi_err = None, f"error: {short_error(exc)}"
        for batch in batches:
            row: dict[str, object] = {"batch": batch, "size": size}
            if time.monotonic() > deadline:
                row["note"] = "skipped: time budget"
                rows.append(row)
                continue
            x = torch.randn(batch, size, device=device).to(torch.float16)
            candidates = {
                "dense": lambda x=x, w=w: F.linear(x, w),
                "sparse24": lambda x=x, v=values, m=meta: kernels.sparse24_linear(x, v, m),
            }
            if ws is not None:  # last: if its graph capture misbehaves, the others are already timed
                candidates["semi"] = lambda x=x, ws=ws: F.linear(x, ws)
            else:
                row["semi"] = semi_err
            methods = []
            for key, fn in candidates.items():
                try:
                    seconds, method = timer(fn)
                    row[key] = seconds
                    methods.append(method)
                except Exception as exc:  # noqa: BLE001
                    row[key] = f"error: {short_error(exc)}"
                    if device == "cuda":
                        try:
                            torch.cuda.synchronize()
                        except Exception:  # noqa: BLE001 - a sticky CUDA error will show in later rows
                            pass
            row["method"] = "/".join(sorted(set(methods))) or "n/a"
            rows.append(row)
    return rows


def bandwidth(device: str, sizes: tuple[int, ...], timer: Timer, deadline: float) -> list[dict[str, object]]:
    from sparsekit import kernels

    rows: list[dict[str, object]] = []
    for size in sizes:
        if time.monotonic() > deadline:
            rows.append({"size": size, "note": "skipped: time budget"})
            continue
        row: dict[str, object] = {"size": size}
        try:
            w = torch.randn(size, size, device=device).to(torch.float16)
            moved = w.numel() * 2 + w.numel() // 2 * 2 + size * math.ceil(size / 8)  # read w, write values+meta
            t_pc, _ = timer(lambda w=w: kernels.prune_compress_24(w))
            dst = torch.empty_like(w)
            t_copy, _ = timer(lambda w=w, dst=dst: dst.copy_(w))
            row.update(prune_gbps=moved / t_pc / 1e9, copy_gbps=2 * w.numel() * 2 / t_copy / 1e9,
                       prune_ms=t_pc * 1e3, copy_ms=t_copy * 1e3)
        except Exception as exc:  # noqa: BLE001
            row["note"] = f"error: {short_error(exc)}"
        rows.append(row)
    return rows


# ------------------------------------------------------------------ 3. roofline (a model, not a measurement)

# Datasheet peaks: (substring of torch.cuda.get_device_name, label, dense fp16 tensor-core
# FLOP/s without sparsity, memory bandwidth in bytes/s). First match wins, so specific names
# come before general ones. Not measured here; override with --peak-tflops / --bandwidth-gbs.
DEVICE_PEAKS = [
    ("H200", "H200 SXM", 989.4e12, 4.8e12),
    ("H100 PCIe", "H100 PCIe", 756.0e12, 2.0e12),
    ("H100", "H100 SXM", 989.4e12, 3.35e12),
    ("A100-SXM4-80GB", "A100 SXM4 80GB", 312.0e12, 2.039e12),
    ("A100 80GB PCIe", "A100 PCIe 80GB", 312.0e12, 1.935e12),
    ("A100", "A100 40GB", 312.0e12, 1.555e12),
]
DEFAULT_MODEL_DEVICE = "H100 SXM"
ROOF_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def model_peaks(device_name: str | None, model_device: str | None = None, peak_tflops: float | None = None,
                bandwidth_gbs: float | None = None) -> dict[str, object]:
    """The peaks the roofline uses: a ``DEVICE_PEAKS`` entry (by label, or matched in the
    GPU's name, else ``DEFAULT_MODEL_DEVICE``), with either number overridable."""
    entry = None
    if model_device is not None:
        entry = next(d for d in DEVICE_PEAKS if d[1] == model_device)
    elif device_name:
        entry = next((d for d in DEVICE_PEAKS if d[0] in device_name), None)
    source = "datasheet"
    if entry is None:
        entry = next(d for d in DEVICE_PEAKS if d[1] == DEFAULT_MODEL_DEVICE)
        source = ("datasheet; no GPU here, so the default model device" if not device_name
                  else f"datasheet of the default model device: {device_name} is not in the table")
    _, label, flops, bw = entry
    if peak_tflops is not None or bandwidth_gbs is not None:
        source = "given on the command line" + ("" if peak_tflops and bandwidth_gbs else f", rest from {label}")
    flops = peak_tflops * 1e12 if peak_tflops is not None else flops
    bw = bandwidth_gbs * 1e9 if bandwidth_gbs is not None else bw
    return {"label": label, "peak_flops": flops, "bandwidth": bw, "source": source}


def roofline(batch: int, n: int, k: int, peak_flops: float, bandwidth: float, elem: int = 2) -> dict[str, object]:
    """Predicted best times of ``y = x @ W.T`` (``x [batch, k]``, ``W [n, k]``, ``elem``-byte
    elements) from bytes moved and FLOPs: ``t = max(bytes / bandwidth, flops / peak)``.

    * dense: weight ``elem * n * k`` bytes;
    * 2:4: values ``elem * n * k / 2`` plus metadata ``n * ceil(k / 8)`` bytes, which is
      9/16 of the dense weight for fp16 (``n * k + n * k / 8``);
    * both: activations ``elem * batch * k`` read and outputs ``elem * batch * n`` written;
      ``2 * batch * n * k`` FLOPs. ``sparse24_linear`` rebuilds dense tiles and runs them at
      the dense peak; torch semi-structured uses Sparse Tensor Cores, 2x the dense peak.

    At batch 1 and large ``n * k`` both are memory-bound and the ceiling is
    ``2 / (1 + 1/8) = 32 / 18 = 1.78x``; at large batch both are compute-bound and the
    ceiling of ``sparse24_linear`` falls to 1x (of semi-structured: 2x).
    """
    io = elem * batch * k + elem * batch * n
    dense_bytes = elem * n * k + io
    sparse_bytes = elem * n * (k // 2) + n * math.ceil(k / 8) + io
    flops = 2.0 * batch * n * k
    t_compute = flops / peak_flops
    t_dense = max(dense_bytes / bandwidth, t_compute)
    t_sparse = max(sparse_bytes / bandwidth, t_compute)
    t_semi = max(sparse_bytes / bandwidth, t_compute / 2)
    return {"batch": batch, "n": n, "k": k, "dense_bytes": dense_bytes, "sparse_bytes": sparse_bytes,
            "flops": flops, "t_dense": t_dense, "t_sparse24": t_sparse, "t_semi": t_semi,
            "ceiling": t_dense / t_sparse, "semi_ceiling": t_dense / t_semi,
            "dense_bound": "memory" if dense_bytes / bandwidth >= t_compute else "compute",
            "sparse24_bound": "memory" if sparse_bytes / bandwidth >= t_compute else "compute"}


def roofline_rows(batches: tuple[int, ...], sizes: tuple[int, ...],
                  peaks: dict[str, object]) -> list[dict[str, object]]:
    return [roofline(b, size, size, peaks["peak_flops"], peaks["bandwidth"])  # type: ignore[arg-type]
            for size in sizes for b in batches]


def render_roofline(rows: list[dict[str, object]], peaks: dict[str, object], png: str | None) -> list[str]:
    lines = ["## Roofline: predicted ceiling of the speedup over dense (model, not a measurement)", "",
             f"**Model, not a measurement**: byte counts and FLOPs of fp16 `y = x @ W.T` with the peaks of "
             f"**{peaks['label']}** ({peaks['source']}): {peaks['peak_flops'] / 1e12:.0f} TFLOP/s dense fp16, "
             f"{peaks['bandwidth'] / 1e9:.0f} GB/s. Predicted time = max(bytes / bandwidth, FLOPs / peak). "
             "Weight bytes: dense 2NK; 2:4 values NK + metadata NK/8 (9/16 of dense); activations 2BK and "
             "outputs 2BN both ways. `sparse24_linear` does dense math on rebuilt tiles (dense peak); "
             "semi-structured runs on Sparse Tensor Cores (2x peak). A weight that fits in L2 can beat "
             "this HBM model when timed back to back.", ""]
    if png:
        lines += [f"Figure: `{png}`", ""]
    lines += ["| batch | W | dense weight MiB | 2:4 weight MiB | sparse24 / dense ceiling | bound (dense, 2:4) | "
              "semi / dense ceiling |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        n, k = r["n"], r["k"]
        lines.append(f"| {r['batch']} | {n}x{k} | {2 * n * k / 2**20:.0f} | "  # type: ignore[operator]
                     f"{(n * k + n * math.ceil(k / 8)) / 2**20:.0f} | {r['ceiling']:.2f}x | "  # type: ignore[operator]
                     f"{r['dense_bound']}, {r['sparse24_bound']} | {r['semi_ceiling']:.2f}x |")
    return lines


def plot_roofline(rows: list[dict[str, object]], timings: list[dict[str, object]], peaks: dict[str, object],
                  path: Path, dry_run: bool) -> None:
    """The predicted ceiling vs batch (lines) and, on a GPU run, the measured speedups (markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    sizes = sorted({int(r["n"]) for r in rows})  # type: ignore[call-overload]
    for i, size in enumerate(sizes):
        color = f"C{i}"
        rs = [r for r in rows if r["n"] == size]
        ax.plot([r["batch"] for r in rs], [r["ceiling"] for r in rs], color=color,
                label=f"sparse24_linear ceiling, {size}x{size} (model)")
        ax.plot([r["batch"] for r in rs], [r["semi_ceiling"] for r in rs], color=color, ls=":",
                label=f"semi-structured ceiling, {size}x{size} (model)")
        for key, marker, name in (("sparse24", "o", "sparse24_linear"), ("semi", "s", "semi-structured")):
            pts = [(t["batch"], t["dense"] / t[key]) for t in timings if t.get("size") == size
                   and isinstance(t.get("dense"), float) and isinstance(t.get(key), float)]
            if pts and not dry_run:
                ax.plot(*zip(*pts), marker=marker, ls="none", color=color, label=f"{name}, {size}x{size} (measured)")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (rows of x)")
    ax.set_ylabel("speedup over dense fp16")
    kind = "model, not a measurement" if dry_run or not timings else "model (lines) vs measured (markers)"
    ax.set_title(f"2:4 roofline on {peaks['label']} ({kind})", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ 4. report


def fmt_ms(v: object) -> str:
    return f"{v * 1e3:.4f}" if isinstance(v, float) else (str(v) if v is not None else "-")


def fmt_ratio(a: object, b: object) -> str:
    return f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) else "-"


def render(info: dict[str, str], checks: list[dict[str, str]], timings: list[dict[str, object]],
           bw: list[dict[str, object]], dry_run: bool, semi_reason: str, elapsed: float,
           peaks: dict[str, object] | None = None, roof_rows: list[dict[str, object]] | None = None,
           png: str | None = None) -> str:
    lines = ["# 2:4 sparsity on the GPU: `benchmarks/gpu_24.py`", ""]
    if dry_run:
        lines += ["**DRY RUN** on CPU under the Triton interpreter with tiny shapes: this checks the script's",
                  "code paths only. These are **not GPU measurements**; do not quote them.", ""]
    lines += [f"- device: **{info['device']}** (compute capability {info['capability']}, CUDA {info['cuda']})",
              f"- date: {info['date']}",
              f"- torch {info['torch']}, triton {info['triton']}, python {info['python']}",
              f"- semi-structured: {semi_reason}",
              f"- total script time: {elapsed:.0f} s", "",
              "## Correctness", "", "| check | result |", "| --- | --- |"]
    lines += [f"| {c['check']} | {c['result']} |" for c in checks]
    method = next((str(r["method"]) for r in timings if "method" in r), "n/a")
    how = {"graph": "`triton.testing.do_bench_cudagraph`: CUDA graphs of back-to-back calls (CPU launch overhead "
                    "excluded: at batch 1 an eager loop can be launch-bound and show less speedup)",
           "cpu": "CPU wall clock (sk.bench.time_fn)"}.get(method, method)
    lines += ["", "## fp16 `y = x @ W.T`, W 2:4-sparse, median ms per call",
              "",
              f"Timing: {how}. "
              "A 4096 x 4096 fp16 weight (32 MiB) fits in an H100's L2 cache; 8192 x 8192 (128 MiB) does not.",
              "The last two columns are the roofline **model** (next section): its predicted ceiling for "
              "sparse24 / dense, and the model's sparse24 time as a fraction of the measured one"
              + (" (left out in a dry run: CPU times against a GPU model mean nothing)." if dry_run else "."),
              "", "| batch | W | dense cuBLAS | semi-structured | sparse24_linear | semi / dense speedup | "
              "sparse24 / dense speedup | model ceiling sparse24 / dense | sparse24: model time / measured |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in timings:
        if "note" in r:
            lines.append(f"| {r['batch']} | {r['size']} | {r['note']} | | | | | | |")
            continue
        model = (roofline(int(r["batch"]), int(r["size"]), int(r["size"]), peaks["peak_flops"],  # type: ignore[call-overload]
                          peaks["bandwidth"]) if peaks else None)  # type: ignore[arg-type]
        ceiling = f"{model['ceiling']:.2f}x" if model else "-"
        of_model = (f"{model['t_sparse24'] / r['sparse24']:.0%}" if model and not dry_run
                    and isinstance(r.get("sparse24"), float) else "-")
        lines.append(f"| {r['batch']} | {r['size']}x{r['size']} | {fmt_ms(r.get('dense'))} | "
                     f"{fmt_ms(r.get('semi'))} | {fmt_ms(r.get('sparse24'))} | "
                     f"{fmt_ratio(r.get('dense'), r.get('semi'))} | "
                     f"{fmt_ratio(r.get('dense'), r.get('sparse24'))} | {ceiling} | {of_model} |")
    if peaks and roof_rows:
        lines += [""] + render_roofline(roof_rows, peaks, png)
    lines += ["", "## `prune_compress_24` bandwidth (fp16, bytes read + written) vs a device-to-device copy", "",
              "| W | prune_compress_24 ms | GB/s | copy ms | copy GB/s | fraction of copy |",
              "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in bw:
        if "note" in r:
            lines.append(f"| {r['size']} | {r['note']} | | | | |")
            continue
        lines.append(f"| {r['size']}x{r['size']} | {r['prune_ms']:.4f} | {r['prune_gbps']:.0f} | {r['copy_ms']:.4f} | "
                     f"{r['copy_gbps']:.0f} | {r['prune_gbps'] / r['copy_gbps']:.0%} |")
    lines += ["", "## Goals (from the issue)", ""]
    lines += goals(timings, bw, dry_run)
    return "\n".join(lines) + "\n"


def goals(timings: list[dict[str, object]], bw: list[dict[str, object]], dry_run: bool) -> list[str]:
    if dry_run:
        return ["- not evaluated in a dry run"]
    out = []
    small = [r for r in timings if r.get("size") == 8192 and isinstance(r.get("batch"), int) and r["batch"] <= 16]
    ratios = [r["dense"] / r["sparse24"] for r in small
              if isinstance(r.get("dense"), float) and isinstance(r.get("sparse24"), float)]
    if ratios:
        out.append(f"- sparse24_linear >= 1.5x dense at batch <= 16, 8192x8192: "
                   f"{'met' if min(ratios) >= 1.5 else 'NOT met'} (speedups {', '.join(f'{x:.2f}x' for x in ratios)})")
    else:
        out.append("- sparse24_linear >= 1.5x dense at batch <= 16, 8192x8192: not measured")
    fracs = [r["prune_gbps"] / r["copy_gbps"] for r in bw if "prune_gbps" in r]
    if fracs:
        out.append(f"- prune_compress_24 >= 60 % of copy bandwidth: {'met' if min(fracs) >= 0.6 else 'NOT met'} "
                   f"({', '.join(f'{f:.0%}' for f in fracs)})")
    else:
        out.append("- prune_compress_24 >= 60 % of copy bandwidth: not measured")
    return out


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dry_run = args.dry_run or not torch.cuda.is_available()
    if not args.dry_run and dry_run:
        print("no CUDA GPU found: running as --dry-run (CPU, Triton interpreter, tiny shapes)")
    setup_environment(dry_run)
    sys.path.insert(0, str(ROOT))
    from sparsekit import kernels

    start = time.monotonic()
    deadline = start + args.budget
    device = "cpu" if dry_run else "cuda"
    semi_ok, semi_reason = kernels.semi_structured_status()
    semi_ok = semi_ok and not dry_run
    batches, sizes = (DRY_BATCHES, DRY_SIZES) if dry_run else (GPU_BATCHES, GPU_SIZES)
    batches = tuple(args.batches or batches)
    sizes = tuple(args.sizes or sizes)
    if any(s % 64 for s in sizes) or any(b < 1 for b in batches):
        raise ValueError(f"sizes must be multiples of 64 and batches positive, got {sizes}, {batches}")
    peaks = model_peaks(None if dry_run else torch.cuda.get_device_name(), args.model_device,
                        args.peak_tflops, args.bandwidth_gbs)
    roof_sizes = GPU_SIZES if dry_run else sizes
    roof_batches = ROOF_BATCHES if dry_run else tuple(sorted(set(ROOF_BATCHES) | set(batches)))
    roof_rows = roofline_rows(roof_batches, roof_sizes, peaks)
    if args.repeats < 1 or not args.rep_ms > 0:
        raise ValueError(f"--repeats must be >= 1 and --rep-ms > 0, got {args.repeats}, {args.rep_ms}")
    timer = make_timer(device, repeats=args.repeats, rep_ms=args.rep_ms)
    info = device_info(device)
    print(f"device: {info['device']}  ({info['date']})", flush=True)

    checks: list[dict[str, str]] = []
    timings: list[dict[str, object]] = []
    bw: list[dict[str, object]] = []
    status = 0
    try:
        checks += check_prune_compress(device, *((5, 52) if dry_run else (1024, 4100)))
        for size in sizes:
            for batch in batches:
                checks += check_linear(device, batch, size, semi_ok)
        for c in checks:
            print(f"  {c['check']}: {c['result']}", flush=True)
        if any(not c["result"].startswith("pass") for c in checks):
            status = 1
        timings = time_shapes(device, batches, sizes, timer, semi_ok, deadline)
        bw = bandwidth(device, sizes, timer, deadline)
    except Exception:  # noqa: BLE001 - always write what we have
        traceback.print_exc()
        checks.append({"check": "script", "result": "ERROR " + short_error(sys.exc_info()[1])})  # type: ignore[arg-type]
        status = 1
    finally:
        elapsed = time.monotonic() - start
        out_dir = args.out or (Path(tempfile.mkdtemp(prefix="gpu_24_dry_")) if dry_run else RESULTS)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"gpu_24_{'DRYRUN_' if dry_run else ''}{slug(info['device'])}_{info['date'][:10]}"
        png: str | None = f"{stem}_roofline.png"
        try:
            plot_roofline(roof_rows, timings, peaks, out_dir / png, dry_run)  # type: ignore[operator]
        except Exception as exc:  # noqa: BLE001 - the tables matter more than the figure
            checks.append({"check": "roofline figure", "result": f"ERROR {short_error(exc)}"})
            png, status = None, 1
        text = render(info, checks, timings, bw, dry_run, semi_reason, elapsed, peaks, roof_rows, png)
        (out_dir / f"{stem}.md").write_text(text)
        (out_dir / f"{stem}.json").write_text(json.dumps(
            {"info": info, "dry_run": dry_run, "checks": checks, "timings": timings, "bandwidth": bw,
             "roofline": {"model_not_a_measurement": True, "peaks": peaks, "rows": roof_rows}},
            indent=1, default=str))
        print(text)
        print(f"wrote {out_dir / stem}.md, .json and {png or '(no figure)'} ({elapsed:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
