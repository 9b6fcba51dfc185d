"""Tests for sparsekit.bench: time_fn (torch.utils.benchmark.Timer), interleaved timing, crossover.

Timing tests use a fake clock that moves only when the function under test "works", by
durations exact in binary, so every assertion is exact and nothing sleeps.
"""

import gc
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsekit import bench


class FakeClock:
    """A clock that only moves when the code under test "works": each fn() call advances it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def work(self, seconds: float) -> None:
        self.now += seconds


# --- time_fn ------------------------------------------------------------------------


def test_time_fn_counts_calls_and_orders_quartiles():
    # 2 warm-up calls, then per timed call torch's Timer runs fn twice untimed and once timed
    timed = [3.0, 1.0, 2.0, 5.0, 4.0]
    clock, durations = FakeClock(), iter([9.0, 9.0] + [d for v in timed for d in (9.0, 9.0, v)])
    calls = []
    t = bench.time_fn(lambda: (calls.append(1), clock.work(next(durations))), warmup=2, repeats=5, clock=clock)
    assert len(calls) == 2 + 3 * 5 and t.repeats == 5
    assert (t.median, t.q1, t.q3) == (3.0, 1.5, 4.5)  # the untimed calls (9 s each) are not counted
    assert t.ms == 3000.0 and "ms" in str(t)


def test_time_fn_min_time_repeats_until_enough_was_measured():
    clock = FakeClock()
    calls = []
    t = bench.time_fn(lambda: (calls.append(1), clock.work(0.25)), warmup=0, repeats=2, min_time=1.0, clock=clock)
    assert t.repeats == 4 and len(calls) == 3 * 4  # 4 x 0.25 s (exact in binary) reaches min_time
    assert t.median == 0.25


def test_time_fn_measures_with_torch_timer_threads_and_gc_off():
    seen = []

    def fn():
        seen.append((torch.get_num_threads(), gc.isenabled()))

    before = torch.get_num_threads()
    bench.time_fn(fn, warmup=1, repeats=2, num_threads=1)
    # warm-up: the caller's threads, gc on; every Timer call: 1 thread, gc off (timeit's rule)
    assert seen == [(before, True)] + [(1, False)] * 6
    assert torch.get_num_threads() == before and gc.isenabled()
    seen.clear()
    bench.time_fn(fn, warmup=0, repeats=1)  # default: the caller's thread count, not the Timer's 1
    assert seen == [(before, False)] * 3


def test_time_fn_runs_in_inference_mode():
    seen = []
    bench.time_fn(lambda: seen.append(torch.is_inference_mode_enabled()), warmup=1, repeats=1)
    assert seen == [True] * 4


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(repeats=0), ValueError, "repeats must be a positive int, got 0"),
    (dict(repeats=True), TypeError, "repeats must be a positive int, got bool"),
    (dict(warmup=-1), ValueError, "warmup must be a non-negative int, got -1"),
    (dict(min_time=-1.0), ValueError, "min_time must be a finite number >= 0"),
    (dict(num_threads=0), ValueError, "num_threads must be a positive int, got 0"),
    (dict(num_threads=2.0), TypeError, "num_threads must be a positive int, got float"),
    (dict(clock="now"), TypeError, "clock must be callable, got str"),
])
def test_time_fn_named_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        bench.time_fn(lambda: None, **kwargs)
    with pytest.raises(TypeError, match="fn must be callable, got str"):
        bench.time_fn("f")


# --- interleaved timing -------------------------------------------------------------


def test_interleaved_times_round_robin_with_inner_calls():
    clock = FakeClock()
    calls = []
    cost = {"a": 1.0, "b": 3.0}

    def make(key):
        return lambda: (calls.append(key), clock.work(cost[key]))

    times = bench.interleaved_times({"a": make("a"), "b": make("b")}, warmup=2, repeats=3, inner=2, clock=clock)
    assert calls == ["a", "b"] * 2 + (["a", "a", "b", "b"] * 3)
    assert times == {"a": [1.0] * 3, "b": [3.0] * 3}  # each entry is the mean of `inner` calls
    # warmup_s keeps warming up round-robin until that much (fake) time has passed: 0.25 s at 0.0625 s
    # per round (both exact in binary) is 4 rounds, then 1 timed call
    calls.clear()
    clock = FakeClock()
    bench.interleaved_times({"a": lambda: (calls.append("a"), clock.work(0.0625))}, warmup=0, repeats=1,
                            warmup_s=0.25, clock=clock)
    assert len(calls) == 4 + 1


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(fns={}), ValueError, "fns must be a non-empty mapping name -> function, got dict {}"),
    (dict(fns=[lambda: None]), ValueError, "fns must be a non-empty mapping name -> function, got list"),
    (dict(fns={"a": 3}), TypeError, r"fns\['a'\] must be callable, got int"),
    (dict(repeats=0), ValueError, "repeats must be a positive int, got 0"),
    (dict(inner=0), ValueError, "inner must be a positive int, got 0"),
    (dict(warmup=-1), ValueError, "warmup must be a non-negative int, got -1"),
    (dict(warmup_s=float("nan")), ValueError, "warmup_s must be a finite number >= 0"),
    (dict(clock=0.0), TypeError, "clock must be callable, got float"),
])
def test_interleaved_times_named_errors(kwargs, exc, match):
    kwargs = {"fns": {"a": lambda: None}, **kwargs}
    with pytest.raises(exc, match=match):
        bench.interleaved_times(**kwargs)


def test_compare_returns_one_timing_per_function():
    calls = []
    res = bench.compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3)
    assert set(res) == {"a", "b"} and all(t.repeats == 3 and t.q1 <= t.median <= t.q3 for t in res.values())
    assert calls == ["a", "b"] * 4  # interleaved round-robin, warm-up included
    with pytest.raises(ValueError, match="fns must be a non-empty mapping"):
        bench.compare({}, repeats=1)


def test_summarize_median_and_quartiles():
    t = bench.summarize([3.0, 1.0, 2.0, 4.0, 5.0])
    assert (t.median, t.q1, t.q3, t.repeats) == (3.0, 1.5, 4.5, 5)
    assert bench.summarize([2.0]) == bench.Timing(2.0, 2.0, 2.0, 1)
    with pytest.raises(ValueError, match=r"times must hold at least one time in seconds, got \[\]"):
        bench.summarize([])
    with pytest.raises(ValueError, match="times must be seconds: finite and >= 0, got -1.0"):
        bench.summarize([1.0, -1.0])
    with pytest.raises(TypeError, match="times must be seconds"):
        bench.summarize(["1"])


def test_speedup_needs_timings():
    assert bench.speedup(bench.Timing(2.0, 2, 2, 1), bench.Timing(1.0, 1, 1, 1)) == 2.0
    with pytest.raises(TypeError, match="baseline must be a sparsekit.bench.Timing, got float"):
        bench.speedup(2.0, bench.Timing(1.0, 1, 1, 1))


def test_cuda_graph_time_needs_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="cuda_graph_time needs a CUDA GPU"):
        bench.cuda_graph_time(lambda: None)
    with pytest.raises(ValueError, match="rep_ms must be a positive number of milliseconds"):  # checked first
        bench.cuda_graph_time(lambda: None, rep_ms=0)
    with pytest.raises(TypeError, match="fn must be callable"):
        bench.cuda_graph_time(None)


# --- crossover ----------------------------------------------------------------------


def test_crossover_interpolates_and_handles_edges():
    s = [0.5, 0.7, 0.9]
    assert bench.crossover(s, 1.0, [4.0, 1.0, 0.25]) == pytest.approx(0.7)
    mid = bench.crossover(s, 1.0, [4.0, 2.0, 0.5])
    assert mid == pytest.approx(0.7 + 0.2 * math.log(2) / math.log(4))
    assert bench.crossover(s, [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]) == 0.5
    assert bench.crossover(s, 1.0, [2.0, 2.0, 2.0]) is None
    assert bench.crossover(s, 1.0, [0.5, 2.0, 0.5]) == pytest.approx(0.7 + 0.2 * 0.5)  # last run counts
    # a NumPy scalar is a number like a float (np.float32 is not a Python float)
    assert bench.crossover(s, np.float32(1.0), [4.0, 1.0, 0.25]) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="increasing"):
        bench.crossover([0.9, 0.5], 1.0, [1.0, 1.0])
    with pytest.raises(ValueError, match="dense_times must be a number or 3 numbers, got 2"):
        bench.crossover(s, [1.0, 1.0], [1.0, 1.0, 1.0])


@pytest.mark.parametrize("dense, sparse, exc", [
    (0.0, [1.0, 1.0, 1.0], ValueError),
    (1.0, [1.0, float("nan"), 1.0], ValueError),
    (1.0, [1.0, float("inf"), 1.0], ValueError),
    (True, [1.0, 1.0, 1.0], TypeError),
])
def test_crossover_times_must_be_positive_and_finite(dense, sparse, exc):
    with pytest.raises(exc, match="times must be positive and finite"):
        bench.crossover([0.5, 0.7, 0.9], dense, sparse)


@settings(max_examples=25, deadline=None)
@given(st.floats(0.1, 0.9), st.floats(0.1, 0.9), st.floats(0.1, 10.0))
def test_crossover_of_a_line_is_its_root(a, b, scale):
    # log(ratio) linear in s with a root r inside the grid: the interpolation is exact.
    lo, hi = sorted((a, b))
    if hi - lo < 1e-3:
        return
    r = (lo + hi) / 2
    grid = [lo, r - (r - lo) / 3, r + (hi - r) / 3, hi]
    times = [math.exp(-scale * (g - r)) for g in grid]
    assert bench.crossover(grid, 1.0, times) == pytest.approx(r, abs=1e-9)
