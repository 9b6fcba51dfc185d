"""2:4 sparsity on the GPU: correctness first, then dense vs semi-structured vs Triton timings.

Usage (about 1-3 minutes on an H100; the script stops timing after ``--budget`` seconds)::

    python benchmarks/gpu_24.py                 # on a CUDA GPU: writes benchmarks/results/gpu_24_<gpu>_<date>.md
    python benchmarks/gpu_24.py --dry-run       # CPU, Triton interpreter, tiny shapes: same code paths,
                                                # written to --out (default: a temp dir), marked DRY RUN

What it does (DESIGN section 6):

1. correctness of every path: ``prune_compress_24`` bit-exact vs ``compress_24(w * nm_mask(w))``
   for fp32/fp16/bf16; ``sparse24_linear`` vs the dense reference for every timed shape;
   torch semi-structured vs dense where Sparse Tensor Cores exist;
2. median times (CUDA graphs of back-to-back calls, so Python launch overhead is excluded;
   eager CUDA-event timing if capture fails) for fp16 ``y = x @ W.T``, ``x [batch, size]``,
   ``W [size, size]`` 2:4-pruned: dense cuBLAS (``F.linear``), torch semi-structured,
   ``sparse24_linear``;
3. the achieved bandwidth of ``prune_compress_24`` against a device-to-device copy.

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
import statistics
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
DRY_SIZES = (32, 64)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true",
                   help="CPU + Triton interpreter, tiny shapes; results are not GPU numbers")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: benchmarks/results on a GPU, a temp dir for --dry-run)")
    p.add_argument("--budget", type=float, default=240.0, help="stop timing new shapes after this many seconds")
    p.add_argument("--repeats", type=int, default=None, help="timed repetitions per measurement")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="override the batch sizes")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="override the square weight sizes")
    return p.parse_args(argv)


def setup_environment(dry_run: bool) -> None:
    """The interpreter must be chosen before triton is imported anywhere."""
    if dry_run or not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


# ------------------------------------------------------------------ timing


class Timer:
    """Median seconds per call of ``fn``.

    On CUDA: ``inner`` back-to-back calls are captured in a CUDA graph and replayed
    ``repeats`` times, each replay timed with CUDA events (launch overhead excluded).
    If capture fails, the same loop runs eagerly. On CPU: ``sk.bench.time_fn``.
    """

    def __init__(self, device: str, repeats: int, inner: int) -> None:
        self.device, self.repeats, self.inner = device, repeats, inner

    def __call__(self, fn: Callable[[], object]) -> tuple[float, str]:
        if self.device != "cuda":
            import sparsekit as sk

            return sk.bench.time_fn(fn, warmup=1, repeats=self.repeats).median, "cpu"
        for _ in range(3):  # warm-up (also triggers Triton autotuning, outside any capture)
            fn()
        torch.cuda.synchronize()
        try:
            return self._graph(fn), "graph"
        except Exception:  # noqa: BLE001 - capture is best effort; fall back to eager timing
            torch.cuda.synchronize()
            return self._eager(fn), "eager"

    def _events(self, run: Callable[[], None]) -> float:
        times = []
        for _ in range(self.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / self.inner)
        return statistics.median(times)

    def _graph(self, fn: Callable[[], object]) -> float:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()  # warm up on the side stream, as torch's CUDA-graph docs advise
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(self.inner):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        return self._events(graph.replay)

    def _eager(self, fn: Callable[[], object]) -> float:
        def run() -> None:
            for _ in range(self.inner):
                fn()

        return self._events(run)


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


# ------------------------------------------------------------------ 3. report


def fmt_ms(v: object) -> str:
    return f"{v * 1e3:.4f}" if isinstance(v, float) else (str(v) if v is not None else "-")


def fmt_ratio(a: object, b: object) -> str:
    return f"{a / b:.2f}x" if isinstance(a, float) and isinstance(b, float) else "-"


def render(info: dict[str, str], checks: list[dict[str, str]], timings: list[dict[str, object]],
           bw: list[dict[str, object]], dry_run: bool, semi_reason: str, elapsed: float) -> str:
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
    how = {"graph": "CUDA graphs of back-to-back calls (launch overhead excluded)",
           "eager/graph": "CUDA graphs where capture worked, else eager back-to-back calls (see JSON)",
           "eager": "eager back-to-back calls with CUDA events (launch overhead included)",
           "cpu": "CPU wall clock (sk.bench.time_fn)"}.get(method, method)
    lines += ["", "## fp16 `y = x @ W.T`, W 2:4-sparse, median ms per call",
              "",
              f"Timing: {how}. "
              "A 4096 x 4096 fp16 weight (32 MiB) fits in an H100's L2 cache; 8192 x 8192 (128 MiB) does not.",
              "", "| batch | W | dense cuBLAS | semi-structured | sparse24_linear | semi / dense speedup | "
              "sparse24 / dense speedup |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in timings:
        if "note" in r:
            lines.append(f"| {r['batch']} | {r['size']} | {r['note']} | | | | |")
            continue
        lines.append(f"| {r['batch']} | {r['size']}x{r['size']} | {fmt_ms(r.get('dense'))} | "
                     f"{fmt_ms(r.get('semi'))} | {fmt_ms(r.get('sparse24'))} | "
                     f"{fmt_ratio(r.get('dense'), r.get('semi'))} | "
                     f"{fmt_ratio(r.get('dense'), r.get('sparse24'))} |")
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
    timer = Timer(device, repeats=args.repeats or (3 if dry_run else 20), inner=1 if dry_run else 20)
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
        text = render(info, checks, timings, bw, dry_run, semi_reason, elapsed)
        out_dir = args.out or (Path(tempfile.mkdtemp(prefix="gpu_24_dry_")) if dry_run else RESULTS)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"gpu_24_{'DRYRUN_' if dry_run else ''}{slug(info['device'])}_{info['date'][:10]}"
        (out_dir / f"{stem}.md").write_text(text)
        (out_dir / f"{stem}.json").write_text(json.dumps(
            {"info": info, "dry_run": dry_run, "checks": checks, "timings": timings, "bandwidth": bw},
            indent=1, default=str))
        print(text)
        print(f"wrote {out_dir / stem}.md and .json ({elapsed:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
