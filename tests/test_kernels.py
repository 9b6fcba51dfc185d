"""Tests for sparsekit.kernels: Triton kernels vs the pure-torch references.

Without CUDA, ``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before triton is imported,
so the same kernels run in Triton's CPU interpreter (small shapes keep this fast).
GPU-only tests (real Triton compilation, torch semi-structured) skip cleanly without CUDA.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsekit as sk
from sparsekit import kernels
from sparsekit.kernels import triton24

_REASON = triton24.kernels_unavailable_reason()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)
from sparsekit.kernels import _triton_kernels as tk  # noqa: E402 - after the version check (imports triton)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
requires_sparse_tc = pytest.mark.skipif(not kernels.sparse_tensor_cores_available(),
                                        reason="needs a CUDA GPU with compute capability >= 8.0")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.element_size() == 4 else torch.int16)


def _weight(rows: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, k, generator=gen)
    # edges: exact ties, zeros, negative zeros, a whole zero group
    w[torch.rand(rows, k, generator=gen) < 0.15] = 0.0
    w[torch.rand(rows, k, generator=gen) < 0.05] = -0.0
    w[torch.rand(rows, k, generator=gen) < 0.15] = 1.0
    if k >= 4:
        w[0, :4] = 0.0
    return w.to(dtype).to(DEVICE)


# ---------------------------------------------------------------- prune_compress_24

# (3, 1028): two programs along a row (> 64 metadata bytes), an odd number of groups
SHAPES = [(1, 4), (1, 12), (3, 8), (5, 20), (7, 52), (16, 64), (33, 100), (3, 1028)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_prune_compress_24_bit_exact(shape, dtype):
    w = _weight(*shape, dtype, seed=shape[0] * 1000 + shape[1])
    values, meta = kernels.prune_compress_24(w)
    ref_v, ref_m = sk.compress_24(w * sk.nm_mask(w))
    assert values.dtype == dtype and meta.dtype == torch.uint8
    assert values.shape == (shape[0], shape[1] // 2) and meta.shape == (shape[0], math.ceil(shape[1] / 8))
    assert torch.equal(meta, ref_m)
    assert torch.equal(_bits(values), _bits(ref_v))  # bit for bit, signed zeros included


@given(rows=st.integers(1, 24), groups=st.integers(1, 24), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 999))
@settings(max_examples=15, deadline=None)
def test_prune_compress_24_random_shapes(rows, groups, dtype, seed):
    w = _weight(rows, 4 * groups, dtype, seed)
    values, meta = kernels.prune_compress_24(w, block=32)
    ref_v, ref_m = sk.compress_24(w * sk.nm_mask(w))
    assert torch.equal(meta, ref_m) and torch.equal(_bits(values), _bits(ref_v))


def test_prune_compress_24_small_block_many_programs():
    w = _weight(9, 40, torch.float32, seed=3)
    v1, m1 = kernels.prune_compress_24(w, block=16)
    v2, m2 = kernels.prune_compress_24(w, block=256)
    assert torch.equal(m1, m2) and torch.equal(_bits(v1), _bits(v2))


def test_prune_compress_24_non_contiguous_input():
    w = _weight(16, 8, torch.float32, seed=4).t()  # [8, 16], non-contiguous
    values, meta = kernels.prune_compress_24(w)
    ref_v, ref_m = sk.compress_24(w * sk.nm_mask(w))
    assert torch.equal(values, ref_v) and torch.equal(meta, ref_m)


def test_prune_compress_24_bad_input():
    with pytest.raises(ValueError, match="multiple of 4"):
        kernels.prune_compress_24(torch.randn(2, 6, device=DEVICE))
    with pytest.raises(ValueError, match="2-D"):
        kernels.prune_compress_24(torch.randn(2, 2, 8, device=DEVICE))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        kernels.prune_compress_24(torch.ones(2, 8, dtype=torch.int32, device=DEVICE))
    with pytest.raises(TypeError, match="Tensor"):
        kernels.prune_compress_24([[1.0] * 8])
    with pytest.raises(ValueError, match="power of two"):
        kernels.prune_compress_24(torch.randn(2, 8, device=DEVICE), block=10)


# ---------------------------------------------------------------- sparse24_linear

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def _reference(x, values, meta, bias):
    w = sk.decompress_24(values, meta).float()
    y = x.float() @ w.T
    return y if bias is None else y + bias.float()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,n,k,use_bias", [
    ((1,), 16, 32, True),        # batch 1
    ((3,), 5, 20, False),        # N, K not multiples of the block; K % 8 == 4 (odd groups)
    ((2, 3), 17, 36, True),      # two leading dims
    ((), 8, 16, True),           # a single vector
    ((20,), 1, 52, True),        # one output row
])
def test_sparse24_linear_matches_reference(lead, n, k, use_bias, dtype):
    gen = torch.Generator().manual_seed(n * 100 + k)
    w = torch.randn(n, k, generator=gen)
    values, meta = sk.compress_24((w * sk.nm_mask(w)).to(dtype))
    values, meta = values.to(DEVICE), meta.to(DEVICE)
    x = torch.randn(*lead, k, generator=gen).to(dtype).to(DEVICE)
    bias = torch.randn(n, generator=gen).to(dtype).to(DEVICE) if use_bias else None
    y = kernels.sparse24_linear(x, values, meta, bias)
    assert y.shape == (*lead, n) and y.dtype == dtype
    ref = _reference(x, values, meta, bias)
    scale = ref.abs().max().clamp_min(1.0)
    assert float((y.float() - ref).abs().max()) <= TOL[dtype] * float(scale)


@given(lead=st.lists(st.integers(1, 5), max_size=2), n=st.integers(1, 40), groups=st.integers(1, 20),
       dtype=st.sampled_from(DTYPES), use_bias=st.booleans(), seed=st.integers(0, 999))
@settings(max_examples=12, deadline=None)
def test_sparse24_linear_random_shapes(lead, n, groups, dtype, use_bias, seed):
    k = 4 * groups
    gen = torch.Generator().manual_seed(seed)
    values, meta = kernels.prune_compress_24(torch.randn(n, k, generator=gen).to(dtype).to(DEVICE))
    x = torch.randn(*lead, k, generator=gen).to(dtype).to(DEVICE)
    bias = torch.randn(n, generator=gen).to(dtype).to(DEVICE) if use_bias else None
    y = kernels.sparse24_linear(x, values, meta, bias)
    ref = _reference(x, values, meta, bias)
    assert y.shape == (*lead, n)
    assert float((y.float() - ref).abs().max()) <= TOL[dtype] * float(ref.abs().max().clamp_min(1.0))


def test_sparse24_linear_fp32_exact_on_integers():
    # small integers: every product and sum is exact in fp32, so the kernel must match exactly
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(-3, 4, (12, 24), generator=gen).float()
    values, meta = kernels.prune_compress_24(w.to(DEVICE))
    x = torch.randint(-3, 4, (4, 24), generator=gen).float().to(DEVICE)
    y = kernels.sparse24_linear(x, values, meta)
    assert torch.equal(y, x @ sk.decompress_24(values, meta).T)


def test_sparse24_linear_explicit_blocks_and_strided_x():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(20, 40, generator=gen)
    values, meta = sk.compress_24(w * sk.nm_mask(w))
    values, meta = values.to(DEVICE), meta.to(DEVICE)
    x = torch.randn(40, 6, generator=gen).to(DEVICE).t()  # non-contiguous [6, 40]
    y = kernels.sparse24_linear(x, values, meta, blocks=(16, 32, 32))
    torch.testing.assert_close(y, _reference(x, values, meta, None), rtol=1e-5, atol=1e-5)


def test_sparse24_linear_empty_batch():
    values, meta = sk.compress_24(torch.zeros(4, 8))
    y = kernels.sparse24_linear(torch.zeros(0, 8, device=DEVICE), values.to(DEVICE), meta.to(DEVICE))
    assert y.shape == (0, 4)


def test_sparse24_linear_bad_input():
    values, meta = sk.compress_24(torch.zeros(4, 16))
    values, meta = values.to(DEVICE), meta.to(DEVICE)
    x = torch.zeros(2, 16, device=DEVICE)
    with pytest.raises(ValueError, match="K = 16"):
        kernels.sparse24_linear(torch.zeros(2, 12, device=DEVICE), values, meta)
    with pytest.raises(ValueError, match="meta must have shape"):
        kernels.sparse24_linear(x, values, meta[:, :1])
    with pytest.raises(TypeError, match="uint8"):
        kernels.sparse24_linear(x, values, meta.int())
    with pytest.raises(TypeError, match="share a dtype"):
        kernels.sparse24_linear(x.half(), values, meta)
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        kernels.sparse24_linear(x.double(), values.double(), meta)
    with pytest.raises(ValueError, match="bias must have shape"):
        kernels.sparse24_linear(x, values, meta, torch.zeros(3, device=DEVICE))
    with pytest.raises(TypeError, match="bias"):
        kernels.sparse24_linear(x, values, meta, torch.zeros(4, dtype=torch.float16, device=DEVICE))
    with pytest.raises(ValueError, match="power of two"):
        kernels.sparse24_linear(x, values, meta, blocks=(8, 16, 16))
    with pytest.raises(ValueError, match="BLOCK_N must be a power of two >= 16, got 24"):
        kernels.sparse24_linear(x, values, meta, blocks=(16, 24, 16))
    with pytest.raises(TypeError, match="BLOCK_K must be a power of two >= 16, got float"):
        kernels.sparse24_linear(x, values, meta, blocks=(16, 16, 16.0))
    for bad in (0, True, 1.0):
        with pytest.raises(ValueError, match="split_k must be a positive int"):
            kernels.sparse24_linear(x, values, meta, blocks=(16, 16, 16), split_k=bad)


def test_sparse24_linear_equals_pruned_linear_layer():
    sk.seed_everything(0)
    layer = nn.Linear(24, 8)
    sk.nm.apply_nm(layer)
    sk.remove_masks(layer)
    layer = layer.to(DEVICE)
    values, meta = kernels.prune_compress_24(layer.weight.detach())
    x = torch.randn(3, 24, device=DEVICE)
    with torch.no_grad():
        torch.testing.assert_close(kernels.sparse24_linear(x, values, meta, layer.bias.detach()), layer(x),
                                   rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- lazy import, capability, adapter


def test_import_sparsekit_does_not_import_triton():
    code = "import sys, sparsekit, sparsekit.kernels, sparsekit.nm; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cpu_without_interpreter_gives_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        kernels.prune_compress_24(torch.randn(2, 8))


def test_capability_status_is_consistent():
    ok, reason = kernels.semi_structured_status()
    assert ok == kernels.sparse_tensor_cores_available()
    assert isinstance(reason, str) and reason
    if not CUDA:
        assert not ok and "no CUDA GPU" in reason


@pytest.mark.skipif(kernels.sparse_tensor_cores_available(), reason="tests the fallback path")
def test_to_semi_structured_falls_back_with_a_message():
    model = nn.Sequential(nn.Linear(64, 32))
    before = model[0].weight.clone()
    with pytest.warns(UserWarning, match="keeping the model dense"):
        report = kernels.to_semi_structured(model)
    assert not report.available and report.swapped == [] and set(report.skipped) == {"0"}
    assert torch.equal(model[0].weight, before)
    with pytest.raises(TypeError, match="nn.Module"):
        kernels.to_semi_structured("model")


def test_min_weight_shape():
    rows, cols = kernels.semi.min_weight_shape(torch.float16)
    assert rows >= 16 and cols >= 16


@requires_sparse_tc
def test_to_semi_structured_on_gpu():
    sk.seed_everything(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10), nn.Linear(10, 64))
    sk.nm.apply_nm(model)
    sk.remove_masks(model)
    model = model.half().cuda().eval()
    x = torch.randn(64, 128, dtype=torch.float16, device="cuda")
    with torch.no_grad():
        dense = model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = kernels.to_semi_structured(model)
        assert report.available and "0" in report.swapped and "2" in report.skipped
        torch.testing.assert_close(model(x), dense, rtol=2e-2, atol=2e-2)


@requires_sparse_tc
def test_to_semi_structured_rejects_non_24_weight():
    model = nn.Sequential(nn.Linear(128, 128)).half().cuda()
    with pytest.raises(ValueError, match="not 2:4"):
        kernels.to_semi_structured(model, strict=True)


@pytest.mark.skipif(not CUDA, reason="needs CUDA: compiled (not interpreted) kernels")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_compiled_kernels_on_gpu(dtype):
    w = torch.randn(256, 512, dtype=dtype, device="cuda")
    values, meta = kernels.prune_compress_24(w)
    ref_v, ref_m = sk.compress_24(w * sk.nm_mask(w))
    assert torch.equal(meta, ref_m) and torch.equal(_bits(values), _bits(ref_v))
    for batch in (1, 16, 300):  # 1 and 16: split-K configs are candidates of the autotuner
        x = torch.randn(batch, 512, dtype=dtype, device="cuda")
        bias = torch.randn(256, dtype=dtype, device="cuda")
        y = kernels.sparse24_linear(x, values, meta, bias)
        ref = _reference(x, values, meta, bias)
        assert float((y.float() - ref).abs().max()) <= TOL[dtype] * float(ref.abs().max())


# ---------------------------------------------------------------- every autotune config, split-K

CONFIG_IDS = [f"M{c.kwargs['BLOCK_M']}N{c.kwargs['BLOCK_N']}K{c.kwargs['BLOCK_K']}S{c.kwargs['SPLIT_K']}"
              f"w{c.num_warps}s{c.num_stages}" for c in tk.CONFIGS]


def _run_config(x, values, meta, bias, cfg):
    """The jitted kernel (not the autotuner) with one autotune config, reduction pass included."""
    from sparsekit.kernels import triton24

    y = torch.empty(x.shape[0], values.shape[0], dtype=x.dtype, device=x.device)
    kw = cfg.kwargs
    launch = {} if kernels.interpreting() else dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    triton24._LinearCall(x, values, meta, bias, y, kernels.interpreting()).explicit(
        kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], kw["SPLIT_K"], **launch)
    return y


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cfg", tk.CONFIGS, ids=CONFIG_IDS)
def test_sparse24_linear_every_config(cfg, dtype):
    """Every entry of the autotuner's config list, explicitly: K = 260 > every BLOCK_K (so
    tiles accumulate; 65 groups, an odd count), M and N not multiples of the blocks, and the
    split-K path (including splits left without a K tile) where the config has SPLIT_K > 1."""
    m, n, k = 18, 40, 260
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(n, k, generator=gen)
    values, meta = sk.compress_24((w * sk.nm_mask(w)).to(dtype))
    values, meta = values.to(DEVICE), meta.to(DEVICE)
    x = torch.randn(m, k, generator=gen).to(dtype).to(DEVICE)
    bias = torch.randn(n, generator=gen).to(dtype).to(DEVICE)
    assert k > cfg.kwargs["BLOCK_K"]
    try:
        y = _run_config(x, values, meta, bias, cfg)
    except Exception as exc:  # a compiled config may not fit this GPU; the autotuner skips those too
        if CUDA and type(exc).__name__ == "OutOfResources":
            pytest.skip(f"config does not fit this GPU: {exc}")
        raise
    ref = _reference(x, values, meta, bias)
    assert float((y.float() - ref).abs().max()) <= TOL[dtype] * float(ref.abs().max().clamp_min(1.0))


@pytest.mark.parametrize("split_k", [2, 3, 4, 8])
def test_split_k_equals_unsplit_exactly_on_integers(split_k):
    # small integers: every partial sum is exact in fp32, so any split order gives the same bits
    gen = torch.Generator().manual_seed(split_k)
    w = torch.randint(-3, 4, (24, 200), generator=gen).float()
    values, meta = kernels.prune_compress_24(w.to(DEVICE))
    x = torch.randint(-3, 4, (5, 200), generator=gen).float().to(DEVICE)
    bias = torch.randint(-3, 4, (24,), generator=gen).float().to(DEVICE)
    y1 = kernels.sparse24_linear(x, values, meta, bias, blocks=(16, 16, 32))
    ys = kernels.sparse24_linear(x, values, meta, bias, blocks=(16, 16, 32), split_k=split_k)
    assert torch.equal(ys, y1)
    assert torch.equal(ys, x @ sk.decompress_24(values, meta).T + bias)


def test_split_k_argument_checks():
    values, meta = sk.compress_24(torch.zeros(4, 16))
    x = torch.zeros(2, 16, device=DEVICE)
    with pytest.raises(ValueError, match="positive int"):
        kernels.sparse24_linear(x, values.to(DEVICE), meta.to(DEVICE), blocks=(16, 16, 16), split_k=0)
    with pytest.raises(ValueError, match="together with blocks"):
        kernels.sparse24_linear(x, values.to(DEVICE), meta.to(DEVICE), split_k=2)


def test_prune_linear_configs_keeps_split_k_for_small_batches_only():
    def kept(m_bucket, k):
        return [(c.kwargs["BLOCK_M"], c.kwargs["SPLIT_K"], c.kwargs["BLOCK_K"])
                for c in tk.prune_linear_configs(tk.CONFIGS, {"M_BUCKET": m_bucket, "K": k})]

    small = kept(16, 8192)
    assert any(s > 1 for _, s, _ in small) and any(s == 1 for _, s, _ in small)
    assert all(bm == 16 for bm, _, _ in small)  # no 128-row tiles for a batch of 1..16
    assert {s for _, s, _ in kept(32, 8192)} > {1}
    assert all(s == 1 for _, s, _ in kept(64, 8192)) and all(bm <= 64 for bm, _, _ in kept(64, 8192))
    assert all(s == 1 for _, s, _ in kept(4096, 8192)) and len(kept(4096, 8192)) == sum(
        c.kwargs["SPLIT_K"] == 1 for c in tk.CONFIGS)
    assert all(s * bk <= 300 for _, s, bk in kept(16, 300))  # every split gets a K tile
    assert kept(16, 4)  # never empty
    assert tk.MAX_SPLIT_K == max(c.kwargs["SPLIT_K"] for c in tk.CONFIGS) > 1


def test_autotuner_choosing_split_k_runs_the_reduction():
    """The whole autotuned path under a fake clock that favours the last (split) config:
    post_hook reduces while timing each split config, and the final call reduces too."""
    from sparsekit.kernels import triton24

    configs = [tk.CONFIGS[0]] + [c for c in tk.CONFIGS if c.kwargs["SPLIT_K"] > 1][:2]
    gen = torch.Generator().manual_seed(11)
    k = 520  # >= SPLIT_K * BLOCK_K for the chosen split configs, so pruning keeps them
    assert tk.prune_linear_configs(configs, {"M_BUCKET": 16, "K": k}) == configs
    values, meta = kernels.prune_compress_24(torch.randn(20, k, generator=gen).to(DEVICE))
    x = torch.randn(3, k, generator=gen).to(DEVICE)
    bias = torch.randn(20, generator=gen).to(DEVICE)
    ref = _reference(x, values, meta, bias)
    y = torch.empty(3, 20, device=DEVICE)
    timed = []

    def fake_bench(kernel_call, quantiles=None):
        y.fill_(float("nan"))
        kernel_call()
        timed.append(float((y - ref).abs().max()))  # each timed call, split ones too, yields y
        t = 10.0 - len(timed)
        return [t, t, t]

    tuned = tk.make_linear_autotuner(configs, do_bench=fake_bench)
    y.fill_(float("nan"))
    triton24._LinearCall(x, values, meta, bias, y, kernels.interpreting()).tuned(tuned)
    assert tuned.best_config is configs[-1] and configs[-1].kwargs["SPLIT_K"] > 1
    assert len(timed) == len(configs) and all(err < 1e-4 for err in timed)  # NaN fails too
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_quick_bench_skips_a_config_the_compiler_rejects(monkeypatch):
    monkeypatch.setattr(tk.triton.testing, "do_bench", lambda fn, **kw: fn())  # no GPU driver here

    def rejected():
        raise RuntimeError("PassManager::run failed")

    with pytest.warns(RuntimeWarning, match="failed to compile"):
        assert tk.quick_bench(rejected, quantiles=(0.5, 0.2, 0.8)) == [math.inf] * 3
    with pytest.warns(RuntimeWarning):
        assert tk.quick_bench(rejected) == math.inf

    def broken():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):  # real errors still surface
        tk.quick_bench(broken)


def test_triton_version_guard():
    assert triton24.triton_version_ok("3.3.0") and triton24.triton_version_ok("3.10.1+git1234")
    assert not triton24.triton_version_ok("3.2.0") and not triton24.triton_version_ok("2.3.1")
    import triton

    assert triton24.triton_version_ok(triton.__version__)  # the installed one passes


def test_unavailable_reason_names_what_is_needed():
    assert triton24.unavailable_reason("3.9.0", "2.4.6", interpreter=True) is None
    assert triton24.unavailable_reason("3.4.0", "2.3.5", interpreter=True) is None
    assert triton24.unavailable_reason("3.4.0", "2.4.6", interpreter=False) is None  # compiled kernels: fine
    assert "numpy < 2.4 or triton >= 3.7" in triton24.unavailable_reason("3.4.0", "2.4.6", interpreter=True)
    assert "triton >= 3.3" in triton24.unavailable_reason("3.1.0", "1.24.0", interpreter=False)
    assert "needs triton" in triton24.unavailable_reason(None, "2.4.6", interpreter=True)
    assert triton24.kernels_unavailable_reason() is None  # this machine runs them


def test_autotuned_wrapper_kernel_runs_under_fixed_blocks():
    """The autotuner's kernel (with its M_BUCKET argument) computes the same as the plain one."""
    from sparsekit.kernels import triton24

    gen = torch.Generator().manual_seed(5)
    values, meta = kernels.prune_compress_24(torch.randn(20, 40, generator=gen).to(DEVICE))
    x = torch.randn(3, 40, generator=gen).to(DEVICE)
    bias = torch.randn(20, generator=gen).to(DEVICE)
    y = torch.empty(3, 20, device=DEVICE)
    tuned = triton24._kernels()["linear_tuned"]
    tuned.fn[(1, 2, 1)](x, values, meta, bias, y, y, 3, 20, 40, 20, 5, x.stride(0), values.stride(0),
                        meta.stride(0), y.stride(0), triton24._m_bucket(3), HAS_BIAS=True, UPCAST=False,
                        IEEE=True, BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SPLIT_K=1)
    torch.testing.assert_close(y, kernels.sparse24_linear(x, values, meta, bias), rtol=1e-5, atol=1e-5)
    assert triton24._m_bucket(1) == 16 and triton24._m_bucket(17) == 32 and triton24._m_bucket(4096) == 4096


def test_compiled_ptx_loads_are_vectorized_and_every_config_compiles():
    """The interpreter cannot see vector widths or compiler failures, the compiler can: build
    sm_90 PTX on the CPU (benchmarks/ptx_vectorization.py), check the memory ops of both
    kernels, and compile every autotune config (fp16)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ptx_vectorization.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(script), "--all-configs", "fp16"], capture_output=True, text=True,
                         env=env)
    if out.returncode:
        last = (out.stderr.strip().splitlines() or [""])[-1]
        if last.startswith(("ImportError", "ModuleNotFoundError", "AttributeError", "TypeError")):
            pytest.skip(f"this triton's compile API differs: {last}")
        raise AssertionError(out.stderr[-3000:])
    ops = json.loads(out.stdout)
    prune = ops["prune_compress_kernel"]
    # 8 contiguous fp16 weights per lane: 16-byte loads, 4 values: 8-byte stores; no scalar loads
    assert set(prune["ld"]) == {"ld.global.v4.b32"} and "st.global.v2.b32" in prune["st"]
    for split in (1, 4):
        lin = ops[f"sparse24_linear_kernel SPLIT_K={split}"]
        # metadata no longer byte by byte (ld.global.b8): every tile goes through cp.async,
        # in 8- or 16-byte copies (BLOCK_K = 128: 16 metadata bytes per row)
        assert lin["ld"] == {} and lin["cp.async"] and min(int(b) for b in lin["cp.async"]) >= 8
    # every autotune config compiles for sm_90 (a compiler failure is not an OutOfResources
    # the autotuner would skip); one per config in tk.CONFIGS
    assert len(ops["configs"]) == len(tk.CONFIGS)
    assert {k: v for k, v in ops["configs"].items() if v != "ok"} == {}


def _load_gpu_24():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_24.py"
    spec = importlib.util.spec_from_file_location("gpu_24", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(CUDA, reason="the dry run is the CPU path; on a GPU run the script itself")
def test_gpu_benchmark_dry_run(tmp_path):
    gpu_24 = _load_gpu_24()
    status = gpu_24.main(["--dry-run", "--out", str(tmp_path), "--sizes", "64", "--batches", "1", "3",
                          "--repeats", "1"])
    assert status == 0
    (md,) = tmp_path.glob("gpu_24_DRYRUN_*.md")
    text = md.read_text()
    assert "DRY RUN" in text and "not GPU measurements" in text
    assert text.count("pass (bit-exact)") == 3 and "FAIL" not in text and "ERROR" not in text
    assert "| 1 | 64x64 |" in text and "| 3 | 64x64 |" in text and "unavailable" in text
    assert "64x64 |" in text.split("## `prune_compress_24` bandwidth")[1]
    # the roofline: a model for the GPU shapes, labelled as such, as a table and a figure
    roof = text.split("## Roofline")[1].split("## `prune_compress_24`")[0]
    assert "model, not a measurement" in roof and "H100 SXM" in roof
    assert "| 1 | 8192x8192 | 128 | 72 | 1.78x | memory, memory | 1.78x |" in roof
    assert "| 8192 | 8192x8192 | 128 | 72 | 1.00x | compute, compute | 2.00x |" in roof
    (png,) = tmp_path.glob("gpu_24_DRYRUN_*_roofline.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"Figure: `{png.name}`" in roof
    (js,) = tmp_path.glob("gpu_24_DRYRUN_*.json")
    assert '"dry_run": true' in js.read_text() and '"model_not_a_measurement": true' in js.read_text()
    # the results folder is never written by a dry run
    assert not list((Path(gpu_24.RESULTS)).glob("gpu_24_DRYRUN_*"))


def test_gpu_timers():
    # one GPU timer for benchmarks/gpu_24.py and chapter 5: sk.bench.cuda_graph_time
    # (triton.testing.do_bench_cudagraph); sk.bench.time_fn in a dry run
    gpu_24 = _load_gpu_24()
    if not CUDA:
        with pytest.raises(RuntimeError, match="CUDA"):
            sk.bench.cuda_graph_time(lambda: None)
        seconds, method = gpu_24.make_timer("cpu", repeats=2, rep_ms=1.0)(lambda: sum(range(100)))
        assert method == "cpu" and seconds > 0
        return
    a = torch.randn(512, 512, device="cuda")
    t = sk.bench.cuda_graph_time(lambda: a @ a, rep_ms=2.0)
    assert t.repeats == 10 and 0 < t.q1 <= t.median <= t.q3
    seconds, method = gpu_24.make_timer("cuda", repeats=3, rep_ms=2.0)(lambda: a @ a)
    assert method == "graph" and seconds > 0


def test_roofline_model_numbers():
    gpu_24 = _load_gpu_24()
    peak, bw = 989.4e12, 3.35e12
    # batch 1, large N*K: memory-bound both ways, ceiling 2 / (1 + 1/8) = 32/18 = 1.78x
    r = gpu_24.roofline(1, 1 << 16, 1 << 16, peak, bw)
    assert r["dense_bound"] == r["sparse24_bound"] == "memory"
    assert abs(r["ceiling"] - 32 / 18) < 1e-3 and abs(r["semi_ceiling"] - 32 / 18) < 1e-3
    # exact byte counts: weight, metadata (ceil(K / 8) per row), activations in, outputs out
    r = gpu_24.roofline(16, 8192, 8192, peak, bw)
    io = 2 * 16 * 8192 + 2 * 16 * 8192
    assert r["dense_bytes"] == 2 * 8192 * 8192 + io
    assert r["sparse_bytes"] == 8192 * 8192 + 8192 * 8192 // 8 + io
    assert r["flops"] == 2 * 16 * 8192 * 8192
    assert r["ceiling"] == pytest.approx((2 * 8192 * 8192 + io) / (9 / 8 * 8192 * 8192 + io))
    assert gpu_24.roofline(1, 4, 12, peak, bw)["sparse_bytes"] == 4 * 12 + 4 * 2 + 2 * 12 + 2 * 4  # K % 8 == 4
    # large batch: compute-bound at the same dense peak (sparse24_linear: 1x), Sparse Tensor Cores: 2x
    r = gpu_24.roofline(8192, 8192, 8192, peak, bw)
    assert r["dense_bound"] == r["sparse24_bound"] == "compute"
    assert r["ceiling"] == 1.0 and r["semi_ceiling"] == 2.0
    # the ceiling never rises with batch
    c = [gpu_24.roofline(b, 4096, 4096, peak, bw)["ceiling"] for b in gpu_24.ROOF_BATCHES]
    assert all(a >= b for a, b in zip(c, c[1:]))
    # peaks: by GPU name, specific before general; overrides; unknown device -> the default
    assert gpu_24.model_peaks("NVIDIA H100 80GB HBM3")["label"] == "H100 SXM"
    assert gpu_24.model_peaks("NVIDIA H100 PCIe")["label"] == "H100 PCIe"
    assert gpu_24.model_peaks("NVIDIA H200")["bandwidth"] == 4.8e12
    p = gpu_24.model_peaks("Some GPU", peak_tflops=100.0, bandwidth_gbs=1000.0)
    assert p["peak_flops"] == 100e12 and p["bandwidth"] == 1e12 and "command line" in p["source"]
    assert gpu_24.model_peaks(None)["label"] == gpu_24.DEFAULT_MODEL_DEVICE


def test_gpu_benchmark_render_goals():
    gpu_24 = _load_gpu_24()
    timings = [{"batch": 1, "size": 8192, "dense": 2.0e-4, "sparse24": 1.0e-4, "method": "graph"},
               {"batch": 16, "size": 8192, "dense": 2.0e-4, "sparse24": 1.6e-4, "method": "graph"}]
    bw = [{"size": 8192, "prune_gbps": 2000.0, "copy_gbps": 3000.0, "prune_ms": 0.1, "copy_ms": 0.1}]
    lines = gpu_24.goals(timings, bw, dry_run=False)
    assert "NOT met" in lines[0] and "2.00x, 1.25x" in lines[0]
    assert "met (67%)" in lines[1]
    with pytest.raises(ValueError, match="multiples of 64"):
        gpu_24.main(["--dry-run", "--sizes", "30"])


# ---------------------------------------------------------------- metadata with i0 >= i1 (issue 12)


def _bad_nibble_operands():
    values, meta = sk.compress_24(torch.tensor([[0.0, 2.0, 0.0, 3.0, 1.0, 0.0, 0.0, 4.0]]))
    bad = meta.clone()
    bad[0, 0] = (bad[0, 0] & 0xF0) | 0b0101  # group 0: i0 = i1 = 1 (decompress_24 refuses it)
    return values.to(DEVICE), bad.to(DEVICE)


def test_sparse24_linear_refuses_a_nibble_with_i0_equal_i1():
    values, bad = _bad_nibble_operands()
    with pytest.raises(ValueError, match="i0 >= i1"):
        sk.decompress_24(values.cpu(), bad.cpu())
    with pytest.raises(ValueError, match=r"meta holds 1 nibble\(s\) with i0 >= i1 \(first at group index \[0, 0\], "
                                         r"i0=1, i1=1\)"):
        kernels.sparse24_linear(torch.ones(1, 8, device=DEVICE), values, bad)


def test_sparse24_linear_checks_meta_again_after_an_in_place_change():
    values, meta = sk.compress_24(torch.tensor([[0.0, 2.0, 0.0, 3.0, 1.0, 0.0, 0.0, 4.0]]))
    values, meta = values.to(DEVICE), meta.to(DEVICE)
    x = torch.ones(1, 8, device=DEVICE)
    assert kernels.sparse24_linear(x, values, meta).tolist() == [[10.0]]
    meta[0, 0] = (meta[0, 0] & 0xF0) | 0b0101  # the same tensor, now invalid
    with pytest.raises(ValueError, match="i0 >= i1"):
        kernels.sparse24_linear(x, values, meta)


def test_sparse24_linear_checks_each_meta_tensor_once(monkeypatch):
    from sparsekit.kernels import triton24
    calls = []
    monkeypatch.setattr(triton24, "check_meta_24", lambda meta, k: calls.append(k) or sk.nm.check_meta_24(meta, k))
    w = _weight(4, 16, torch.float32, 0)
    x = torch.randn(2, 16, device=DEVICE)
    values, meta = sk.compress_24(w.cpu() * sk.nm_mask(w.cpu()))
    values, meta = values.to(DEVICE), meta.to(DEVICE)
    for _ in range(3):
        kernels.sparse24_linear(x, values, meta)
    assert calls == [16]  # checked on the first call only
    kernels.sparse24_linear(x, *kernels.prune_compress_24(w))
    assert calls == [16]  # prune_compress_24 writes valid metadata: never checked
    with torch.inference_mode():
        frozen = meta.clone()  # an inference tensor has no version counter: checked every call
    kernels.sparse24_linear(x, values, frozen)
    kernels.sparse24_linear(x, values, frozen)
    assert calls == [16, 16, 16]
