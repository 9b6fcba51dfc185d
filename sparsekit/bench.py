"""Honest timing: warm-up runs, several repeats, the median, and CUDA synchronisation.

A single ``time.perf_counter()`` around one call measures allocator warm-up, lazy
initialisation and noise. ``time_fn`` runs the function a few times first, then reports
the median of ``repeats`` timed calls (and the spread), synchronising CUDA around each
call so asynchronous kernels are actually counted.

``cuda_graph_time`` is the one GPU kernel timer (``benchmarks/gpu_24.py`` and chapter 5
use it): CUDA-graph replays timed with CUDA events, so CPU launch overhead is excluded.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


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


def time_fn(fn: Callable[[], object], *, warmup: int = 3, repeats: int = 10,
            min_time: float = 0.0, clock: Clock = time.perf_counter) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls.

    ``min_time`` (seconds) keeps repeating until that much time was measured, which
    steadies very short functions. ``clock`` returns seconds; tests inject a fake one.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup}, {repeats}")
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        _sync()
        times: list[float] = []
        while len(times) < repeats or sum(times) < min_time:
            start = clock()
            fn()
            _sync()
            times.append(clock() - start)
    return summarize(times)


def summarize(times: list[float]) -> Timing:
    """The median and quartiles of measured seconds per call."""
    if not times:
        raise ValueError("need at least one time")
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return Timing(statistics.median(times), quartiles[0], quartiles[2], len(times))


def interleaved_times(fns: dict[str, Callable[[], object]], *, warmup: int = 1, repeats: int = 5,
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
    if not fns or warmup < 0 or repeats < 1 or inner < 1:
        raise ValueError(f"need functions, warmup >= 0, repeats >= 1 and inner >= 1; got "
                         f"{len(fns)}, {warmup}, {repeats}, {inner}")
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


def cuda_graph_time(fn: Callable[[], object], *, repeats: int = 20, inner: int = 20,
                    warmup: int = 3) -> Timing:
    """Seconds per call of ``fn`` on the GPU, from CUDA-graph replays (launch overhead excluded).

    ``fn`` runs ``warmup`` times eagerly first (this is also when Triton compiles and
    autotunes, which cannot happen inside a capture), once more on a side stream, then
    ``inner`` back-to-back calls are captured in one CUDA graph. The graph is replayed
    ``repeats`` times, each replay timed with CUDA events; the result is the median (and
    quartiles) of replay time / ``inner``. A failed capture raises: there is no eager
    fallback, so every number in a table comes from this one method.

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
    HBM roofline. Needs CUDA (``RuntimeError`` otherwise).
    """
    if not torch.cuda.is_available():
        raise RuntimeError("cuda_graph_time needs a CUDA GPU; on CPU use sk.bench.time_fn")
    if warmup < 1 or repeats < 1 or inner < 1:
        raise ValueError(f"need warmup, repeats and inner >= 1, got {warmup}, {repeats}, {inner}")
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()  # warm up on a side stream, as torch's CUDA-graph docs advise
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(inner):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / inner)
    return summarize(times)


def speedup(baseline: Timing, candidate: Timing) -> float:
    """How many times faster ``candidate`` is than ``baseline`` (ratio of medians)."""
    return baseline.median / candidate.median
