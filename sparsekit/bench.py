"""Honest timing for the *finalize* step (score -> select -> mask -> train -> finalize):
what a sparse layout or a smaller model actually buys, measured with warm-up runs,
several repeats, the median, and CUDA synchronisation.

A single ``time.perf_counter()`` around one call measures allocator warm-up, lazy
initialisation and noise. ``time_fn`` runs the function a few times first, then reports
the median of ``repeats`` timed calls (and the spread), each one a
``torch.utils.benchmark.Timer`` measurement with an explicit thread count, synchronising
CUDA inside the timed statement so asynchronous kernels are actually counted.

``interleaved_times`` / ``compare`` time several candidates round-robin, for *paired*
comparisons on a busy machine; ``crossover`` reads the break-even sparsity off a sweep.

``cuda_graph_time`` times GPU kernels from CUDA-graph replays with CUDA events, so CPU
launch overhead is excluded (chapter 5 uses it; ``benchmarks/gpu_24.py`` uses Triton's
``triton.testing.do_bench_cudagraph``, the same method with the graph sized by time).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Real

import torch

from . import _validate


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median and the interquartile range of the repeats."""

    median: float
    q1: float
    q3: float
    repeats: int

    @property
    def ms(self) -> float:
        """Median in milliseconds."""
        return self.median * 1e3

    def __str__(self) -> str:
        return f"{self.ms:.3f} ms (IQR {self.q1 * 1e3:.3f}-{self.q3 * 1e3:.3f}, n={self.repeats})"


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


Clock = Callable[[], float]


def _check_callable(fn: object, name: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")


def time_fn(fn: Callable[[], object], *, warmup: int = 3, repeats: int = 10, min_time: float = 0.0,
            num_threads: int | None = None, clock: Clock = time.perf_counter) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` timed calls after ``warmup`` untimed calls.

    Each timed call is one ``torch.utils.benchmark.Timer(...).timeit(number=1)``: torch's
    timer runs it with ``num_threads`` intra-op threads (default ``torch.get_num_threads()``,
    what the caller's own code uses; the Timer's default is 1) and the garbage collector
    off, and runs ``fn`` twice untimed just before (its own warm-up). So ``fn`` runs
    ``warmup + 3 * repeats`` times in all, and every timed call follows two back-to-back
    calls: the steady state, not a cold start. ``min_time`` (seconds) keeps adding timed
    calls until that much time was measured, which steadies very short functions.
    ``clock`` returns seconds (the Timer's ``timer=``); tests inject a fake one.
    """
    _check_callable(fn, "fn")
    _check_callable(clock, "clock")
    warmup = _validate.integer(warmup, "warmup", low=0)
    repeats = _validate.positive_int(repeats, "repeats")
    min_time = _validate.real(min_time, "min_time", low=0.0)
    threads = torch.get_num_threads() if num_threads is None else _validate.positive_int(num_threads, "num_threads")
    from torch.utils.benchmark import Timer  # here: importing it costs ~0.15 s, most callers never time

    timer = Timer("fn()\nsync()", globals={"fn": fn, "sync": _sync}, timer=clock, num_threads=threads)
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        _sync()
        times: list[float] = []
        while len(times) < repeats or sum(times) < min_time:
            times.append(timer.timeit(number=1).times[0])
    return summarize(times)


def summarize(times: Sequence[float]) -> Timing:
    """The median and quartiles of measured seconds per call."""
    if isinstance(times, (str, bytes)) or not isinstance(times, Sequence) or not times:
        raise ValueError(f"times must hold at least one time in seconds, got {times!r}")
    times = [_validate.real(t, "times", low=0.0, what="seconds: finite and >= 0") for t in times]
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return Timing(statistics.median(times), quartiles[0], quartiles[2], len(times))


def _check_fns(fns: Mapping[str, Callable[[], object]]) -> None:
    if not isinstance(fns, Mapping) or not fns:
        raise ValueError(f"fns must be a non-empty mapping name -> function, got {type(fns).__name__} {fns!r}")
    for key, fn in fns.items():
        _check_callable(fn, f"fns[{key!r}]")


def interleaved_times(fns: Mapping[str, Callable[[], object]], *, warmup: int = 1, repeats: int = 5,
                      inner: int = 1, warmup_s: float = 0.0,
                      clock: Clock = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each function in every round, the functions timed round-robin.

    Interleaving (a, b, c, a, b, c, ...) exposes every candidate to the same background
    load, so *ratios* stay meaningful, and the per-round ratios can be paired, even when
    absolute times drift. Warm-up is round-robin too: at least ``warmup`` rounds and at
    least ``warmup_s`` seconds (oneDNN generates kernels for a new shape on first calls).
    Each timed entry is the mean of ``inner`` back-to-back calls. ``clock`` returns
    seconds; tests inject a fake one.
    """
    _check_fns(fns)
    _check_callable(clock, "clock")
    warmup = _validate.integer(warmup, "warmup", low=0)
    repeats = _validate.positive_int(repeats, "repeats")
    inner = _validate.positive_int(inner, "inner")
    warmup_s = _validate.real(warmup_s, "warmup_s", low=0.0)
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        start, rounds = clock(), 0
        while rounds < warmup or clock() - start < warmup_s:
            for fn in fns.values():
                fn()
            rounds += 1
        _sync()
        for _ in range(repeats):
            for key, fn in fns.items():
                start = clock()
                for _ in range(inner):
                    fn()
                _sync()
                times[key].append((clock() - start) / inner)
    return times


def compare(fns: Mapping[str, Callable[[], object]], *, warmup: int = 1, repeats: int = 5) -> dict[str, Timing]:
    """The median (and quartiles) of each function's :func:`interleaved_times`.

    Interleaving (dense, csr, bsr, dense, csr, ...) exposes every candidate to the same
    background load, so the *ratios* of the medians stay meaningful on a busy machine
    even when the absolute times drift.
    """
    times = interleaved_times(fns, warmup=warmup, repeats=repeats)
    return {key: summarize(ts) for key, ts in times.items()}


def crossover(sparsities: Sequence[float], dense_times: Sequence[float] | float,
              sparse_times: Sequence[float]) -> float | None:
    """Sparsity above which the sparse kernel beats dense, from a measured sweep.

    ``dense_times`` is one time per sparsity (measured beside each sparse one, as
    :func:`compare` does) or a single number. The ratio ``sparse / dense`` is
    interpolated linearly in ``log(ratio)`` between the last grid point where sparse was
    slower and the first point of the final run where it is faster. Returns the first
    grid point if sparse already wins there, and ``None`` if it never wins on the grid.
    """
    s = [float(v) for v in sparsities]
    if len(s) == 0 or len(sparse_times) != len(s) or any(b <= a for a, b in zip(s, s[1:])):
        raise ValueError("sparsities must be increasing and as long as sparse_times")
    dense = [dense_times] * len(s) if isinstance(dense_times, Real) else list(dense_times)
    if len(dense) != len(s):
        raise ValueError(f"dense_times must be a number or {len(s)} numbers, got {len(dense)}")
    times = [_validate.real(t, "times", low=0.0, low_open=True, what="positive and finite")
             for t in [*dense, *sparse_times]]
    logr = [math.log(st / dt) for st, dt in zip(times[len(s):], times[:len(s)])]
    if logr[-1] >= 0:
        return None
    i = len(s) - 1
    while i > 0 and logr[i - 1] < 0:
        i -= 1
    if i == 0:
        return s[0]
    a, b = logr[i - 1], logr[i]  # a >= 0 > b
    return s[i - 1] + (s[i] - s[i - 1]) * a / (a - b)


def cuda_graph_time(fn: Callable[[], object], *, rep_ms: float = 20.0) -> Timing:
    """Seconds per call of ``fn`` on the GPU, from CUDA-graph replays (launch overhead excluded).

    Triton's ``triton.testing.do_bench_cudagraph``, under ``torch.no_grad()``: ``fn`` runs
    once eagerly (Triton compiles and autotunes here, which cannot happen inside a
    capture), 5 timed calls estimate its duration, as many back-to-back calls as fill
    ``rep_ms`` milliseconds are captured in one CUDA graph, and the graph is replayed 10
    times, each replay timed with CUDA events. The result is the median (and quartiles) of
    replay time / calls. A failed capture raises: there is no eager fallback, so every
    number in a table comes from this one method (``benchmarks/gpu_24.py`` uses it too).

    **What is excluded.** Everything the CPU does per call: Python, the PyTorch dispatcher,
    Triton's launcher (argument specialization, autotune-cache lookup), ``cudaLaunchKernel``
    and allocations. What remains is GPU time of the kernels back to back (small gaps
    between graph nodes included): the kernel's own speed, which a deployment sees only if
    it also replays graphs (``torch.cuda.graphs``, ``torch.compile(mode="reduce-overhead")``)
    or keeps the GPU queue full.

    **What that means at batch 1.** A matrix-vector product is short: moving a 4096 x 4096
    fp16 weight (32 MiB) at an H100's 3.35 TB/s datasheet bandwidth takes about 10 us,
    comparable to what one eager kernel launch from Python costs on the CPU. In an eager
    loop at batch 1 the CPU can then be the bottleneck, and the 2:4 kernel's saving of 7/16
    of the weight bytes may not show at all; this timer reports the GPU-side time that the
    byte-count roofline predicts, not that end-to-end latency. Replays of the same weights
    also keep them in L2 when they fit (an H100 has 50 MiB), so such shapes can beat the
    HBM roofline. Needs CUDA and Triton (``RuntimeError`` otherwise).
    """
    _check_callable(fn, "fn")
    rep_ms = _validate.real(rep_ms, "rep_ms", low=0.0, high=math.inf, low_open=True, high_open=True,
                            what="a positive number of milliseconds")
    if not torch.cuda.is_available():
        raise RuntimeError("cuda_graph_time needs a CUDA GPU; on CPU use sk.bench.time_fn")
    from triton.testing import do_bench_cudagraph  # Triton only where a GPU is

    with torch.no_grad():
        replays_ms = do_bench_cudagraph(fn, rep=rep_ms, return_mode="all")
    return summarize([ms / 1e3 for ms in replays_ms])


def speedup(baseline: Timing, candidate: Timing) -> float:
    """How many times faster ``candidate`` is than ``baseline`` (ratio of medians)."""
    for name, t in (("baseline", baseline), ("candidate", candidate)):
        if not isinstance(t, Timing):
            raise TypeError(f"{name} must be a sparsekit.bench.Timing, got {type(t).__name__}")
    return baseline.median / candidate.median


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows: which machine a
    recorded result came from."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
