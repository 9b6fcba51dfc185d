"""The Triton kernels behind ``sparsekit.kernels.triton24`` (imported on first use only).

Kept in their own module because ``@triton.jit`` functions resolve the functions they call
as module globals (not closures): ``sparse24_linear_bucketed`` calls
``sparse24_linear_kernel`` by its global name.

Split-K combines its fp32 partials with a second pass (``splitk_reduce_kernel``), not with
atomics: the partials go to a ``[SPLIT_K, M, N]`` fp32 workspace and are summed in a fixed
order, so results are bit-reproducible run to run (atomic float adds land in whatever order
the programs finish), no zero-filled accumulator has to be launched first, and the bias
and the cast to the output dtype happen once, in the same pass. The price is one small
launch and ``2 * SPLIT_K * M * N * 4`` bytes of traffic, negligible next to the weight at
the batches (<= 32) where split-K is used.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import triton
import triton.language as tl
import triton.testing


@triton.jit
def prune_compress_kernel(w_ptr, val_ptr, meta_ptr, R, K, KV, MB, stride_w, stride_v, stride_m,
                          BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK: tl.constexpr):
    """Prune to 2:4 and compress ``[BLOCK_R rows, BLOCK_J metadata bytes]`` per program.

    Lane ``b`` of the ``BLOCK = BLOCK_R * BLOCK_J`` lanes owns metadata byte ``j`` of row
    ``row``, i.e. the 8 contiguous weights ``w[row, 8j : 8j + 8]`` (groups ``2j``, ``2j + 1``).
    They are read as one ``[BLOCK, 8]`` tile (consecutive lanes are consecutive in memory, 8
    contiguous elements per lane: vector loads) and split in registers; the 4 kept values
    per lane are written as one ``[BLOCK, 4]`` tile, the byte as one ``[BLOCK]`` vector.
    """
    tl.static_assert(BLOCK == BLOCK_R * BLOCK_J)
    lane = tl.arange(0, BLOCK)
    row = tl.program_id(0).to(tl.int64) * BLOCK_R + lane // BLOCK_J  # int64: rows * K may exceed 2**31
    j = tl.program_id(1) * BLOCK_J + lane % BLOCK_J  # metadata byte within the row
    row_ok = row < R
    col = 8 * j[:, None] + tl.arange(0, 8)[None, :]  # [BLOCK, 8], column 4h + 2a + b of byte j
    x = tl.load(w_ptr + row[:, None] * stride_w + col, mask=row_ok[:, None] & (col < K), other=0.0)
    # Split in registers: [BLOCK, 8] -> [BLOCK, h, a, b] -> x_{2a+b}, each [BLOCK, 2 (h: group 2j + h)].
    xe, xo = tl.split(tl.reshape(x, [BLOCK, 2, 2, 2]))  # b = 0 / 1: [BLOCK, h, a]
    x0, x2 = tl.split(xe)
    x1, x3 = tl.split(xo)
    a0, a1, a2, a3 = tl.abs(x0), tl.abs(x1), tl.abs(x2), tl.abs(x3)
    # rank_t = #{larger} + #{equal with a lower index}; keep rank < 2 (ties -> lower index,
    # the rule of sparsekit.nm._rank_in_group, so the choice is the reference's bit for bit).
    r0 = (a1 > a0).to(tl.int32) + (a2 > a0).to(tl.int32) + (a3 > a0).to(tl.int32)
    r1 = (a0 >= a1).to(tl.int32) + (a2 > a1).to(tl.int32) + (a3 > a1).to(tl.int32)
    r2 = (a0 >= a2).to(tl.int32) + (a1 >= a2).to(tl.int32) + (a3 > a2).to(tl.int32)
    r3 = (a0 >= a3).to(tl.int32) + (a1 >= a3).to(tl.int32) + (a2 >= a3).to(tl.int32)
    k0, k1, k2, k3 = r0 < 2, r1 < 2, r2 < 2, r3 < 2
    i0 = tl.where(k0, 0, tl.where(k1, 1, 2))
    i1 = tl.where(k3, 3, tl.where(k2, 2, 1))
    v0 = tl.where(k0, x0, tl.where(k1, x1, x2))  # selects, never arithmetic: bits (and -0.0) kept
    v1 = tl.where(k3, x3, tl.where(k2, x2, x1))
    # values of byte j: [v0(2j), v1(2j), v0(2j+1), v1(2j+1)] = join -> [BLOCK, h, t] -> 2h + t.
    vcol = 4 * j[:, None] + tl.arange(0, 4)[None, :]
    tl.store(val_ptr + row[:, None] * stride_v + vcol, tl.reshape(tl.join(v0, v1), [BLOCK, 4]),
             mask=row_ok[:, None] & (vcol < KV))
    # A group past K (the high nibble when K % 8 == 4) gets nibble 0, as in compress_24.
    g_ok = (8 * j[:, None] + 4 * tl.arange(0, 2)[None, :]) < K
    nib_lo, nib_hi = tl.split(tl.where(g_ok, i0 | (i1 << 2), 0))
    tl.store(meta_ptr + row * stride_m + j, (nib_lo | (nib_hi << 4)).to(tl.uint8), mask=row_ok & (j < MB))


@triton.jit
def sparse24_linear_kernel(x_ptr, v_ptr, m_ptr, b_ptr, y_ptr, ws_ptr, M, N, K, KV, MB,
                           stride_xm, stride_vn, stride_mn, stride_ym,
                           HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           SPLIT_K: tl.constexpr):
    """``y[BLOCK_M, BLOCK_N]`` tile of ``x @ W.T (+ bias)``; program ``(i, j, s)``.

    ``KV = K / 2`` (values per row) and ``MB = ceil(K / 8)`` (metadata bytes per row) are
    arguments, not computed here, so Triton's integer specialization sees their
    divisibility (by 16 when they are) and the masked loads keep their vector width.
    With ``SPLIT_K > 1`` program ``s`` sums only its contiguous share of the K tiles and
    writes an fp32 partial to ``ws[s]`` (``[SPLIT_K, M, N]``); ``splitk_reduce_kernel``
    then adds the partials in a fixed order, adds the bias and casts.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    rv = tl.arange(0, BLOCK_K // 2)  # compressed values in a K tile
    rb = tl.arange(0, BLOCK_K // 8)  # metadata bytes in a K tile
    m_ok = rm < M
    n_ok = rn < N
    tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(tiles, SPLIT_K)
    t_start = pid_k * per_split
    t_stop = tl.minimum(t_start + per_split, tiles)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t in range(t_start, t_stop):
        k0 = t * BLOCK_K
        # k0 is a multiple of BLOCK_K, so each offset vector is one aligned contiguous run.
        kk = tl.max_contiguous(tl.multiple_of(k0 + rk, BLOCK_K), BLOCK_K)
        vv = tl.max_contiguous(tl.multiple_of(k0 // 2 + rv, BLOCK_K // 2), BLOCK_K // 2)
        bb = tl.max_contiguous(tl.multiple_of(k0 // 8 + rb, BLOCK_K // 8), BLOCK_K // 8)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :],
                    mask=m_ok[:, None] & (kk[None, :] < K), other=0.0)
        # Compressed weight tile: values [BLOCK_N, BLOCK_K/2], meta [BLOCK_N, BLOCK_K/8].
        vals = tl.load(v_ptr + rn[:, None] * stride_vn + vv[None, :],
                       mask=n_ok[:, None] & (vv[None, :] < KV), other=0.0)
        meta = tl.load(m_ptr + rn[:, None] * stride_mn + bb[None, :],
                       mask=n_ok[:, None] & (bb[None, :] < MB), other=0).to(tl.int32)
        # Decompress in registers: split values into (v0, v1) per group, bytes into nibbles.
        v0, v1 = tl.split(tl.reshape(vals, [BLOCK_N, BLOCK_K // 4, 2]))
        nib = tl.reshape(tl.join(meta & 0xF, meta >> 4), [BLOCK_N, BLOCK_K // 4])
        i0 = nib & 3
        i1 = nib >> 2
        zero = tl.zeros_like(v0)
        w0 = tl.where(i0 == 0, v0, zero)
        w1 = tl.where(i0 == 1, v0, tl.where(i1 == 1, v1, zero))
        w2 = tl.where(i0 == 2, v0, tl.where(i1 == 2, v1, zero))
        w3 = tl.where(i1 == 3, v1, zero)
        # [n, g, a, b] = w_{2a+b}  ->  column 4g + 2a + b.
        w = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), [BLOCK_N, BLOCK_K])
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        if IEEE:
            acc += tl.dot(x, tl.trans(w), input_precision="ieee")
        else:
            acc += tl.dot(x, tl.trans(w))
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])
    else:
        part = ws_ptr + pid_k.to(tl.int64) * M * N
        tl.store(part + rm[:, None] * N + rn[None, :], acc, mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def splitk_reduce_kernel(ws_ptr, b_ptr, y_ptr, M, N, stride_ym,
                         HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    """``y = sum_s ws[s] (+ bias)``, cast to y's dtype; s in a fixed order (deterministic)."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    total = M * N
    ok = idx < total
    acc = tl.load(ws_ptr + idx, mask=ok, other=0.0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(ws_ptr + s * total + idx, mask=ok, other=0.0)
    col = idx % N
    if HAS_BIAS:
        acc += tl.load(b_ptr + col, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + (idx // N) * stride_ym + col, acc.to(y_ptr.dtype.element_ty), mask=ok)


REDUCE_BLOCK = 1024


def launch_splitk_reduce(ws: Any, bias: Any, y: Any, m: int, n: int, stride_ym: int, has_bias: bool,
                         split_k: int) -> None:
    """The second pass of split-K: fixed-order sum of the fp32 partials, bias, cast."""
    grid = (triton.cdiv(m * n, REDUCE_BLOCK),)
    splitk_reduce_kernel[grid](ws, bias, y, m, n, stride_ym, HAS_BIAS=has_bias, SPLIT_K=split_k,
                               BLOCK=REDUCE_BLOCK)


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages, SPLIT_K). Every entry is run under the
# interpreter by tests/test_kernels.py (test_sparse24_linear_every_config), so a config added
# here is tested automatically. SPLIT_K > 1 entries are only tried for small batches
# (prune_linear_configs): at batch <= 16 the grid has only ceil(N / BLOCK_N) tiles, too few
# programs to keep every SM streaming weights; splitting K multiplies the programs.
#
# Every entry must also *compile* for sm_90: with triton 3.9, fp16/bf16 tiles with
# BLOCK_N / num_warps >= 32 (e.g. (64, 128, 64) on 4 warps, (128, 256, 64) on 8) fail in
# TritonGPUOptimizeDotOperands ("Illegal shared layout") when the strides are divisible by
# 16, as they are for real layer shapes; those two tiles therefore run on 8 and 16 warps.
# benchmarks/ptx_vectorization.py --all-configs compiles every entry on the CPU (a test does).
CONFIG_TABLE = [
    (16, 32, 128, 4, 4, 1), (16, 64, 128, 4, 4, 1), (16, 32, 256, 4, 3, 1), (16, 64, 256, 8, 3, 1),
    (32, 64, 128, 4, 4, 1), (64, 64, 64, 4, 4, 1), (128, 128, 64, 8, 3, 1), (128, 256, 64, 16, 3, 1),
    (64, 128, 64, 8, 4, 1),
    (16, 64, 128, 4, 4, 2), (16, 64, 128, 4, 4, 4), (16, 32, 128, 4, 4, 4), (16, 64, 256, 8, 3, 4),
    (16, 32, 128, 4, 4, 8),
]
CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk}, num_warps=w, num_stages=s)
    for bm, bn, bk, w, s, sk in CONFIG_TABLE
]
MAX_SPLIT_K = max(c.kwargs["SPLIT_K"] for c in CONFIGS)
SPLIT_K_MAX_M = 32  # split-K configs are candidates only while M_BUCKET <= this


def prune_linear_configs(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
    """Autotune's ``early_config_prune``: which configs are worth timing for this M, K.

    * ``SPLIT_K > 1`` only for small batches (``M_BUCKET <= SPLIT_K_MAX_M``) and only when
      every split gets at least one K tile (``K >= SPLIT_K * BLOCK_K``);
    * ``BLOCK_M`` at most ``max(16, M_BUCKET)``: a 128-row tile for a batch of 1 wastes
      127 rows of every ``tl.dot`` (and the tuning time spent on it).
    Falls back to the ``SPLIT_K == 1`` configs if the rules leave nothing.
    """
    m_bucket, k = int(named_args["M_BUCKET"]), int(named_args["K"])
    keep = [c for c in configs
            if c.kwargs["BLOCK_M"] <= max(16, m_bucket)
            and (c.kwargs["SPLIT_K"] == 1
                 or (m_bucket <= SPLIT_K_MAX_M and k >= c.kwargs["SPLIT_K"] * c.kwargs["BLOCK_K"]))]
    return keep or [c for c in configs if c.kwargs["SPLIT_K"] == 1]


def quick_bench(fn: Any, quantiles: Any = None) -> Any:
    """A short timing pass per autotuning config (Triton's default spends ~125 ms each).

    A config the compiler rejects (an MLIR pass failure is a plain ``RuntimeError``, which
    the autotuner, unlike ``OutOfResources``, does not catch) is timed as infinitely slow
    with a warning instead of crashing the call: another triton version may reject tiles
    that this one compiles.
    """
    from triton.compiler.errors import CompilationError

    try:
        return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)
    except (CompilationError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "PassManager" not in str(exc):
            raise
        warnings.warn(f"sparse24_linear: an autotune config failed to compile and is skipped: "
                      f"{type(exc).__name__}: {str(exc)[:200]}", RuntimeWarning, stacklevel=2)
        return [math.inf] * len(quantiles) if quantiles else math.inf


def _reduce_after_bench(nargs: dict[str, Any], exception: Any = None) -> None:
    """Autotune ``post_hook``: while timing a SPLIT_K > 1 config, run the reduction pass too,
    so a split config is charged for its second pass. (The autotuner calls post_hook only
    while benchmarking; after it, ``sparse24_linear`` launches the reduction itself.)"""
    if exception is None and nargs["SPLIT_K"] > 1:
        launch_splitk_reduce(nargs["ws_ptr"], nargs["b_ptr"], nargs["y_ptr"], nargs["M"], nargs["N"],
                             nargs["stride_ym"], nargs["HAS_BIAS"], nargs["SPLIT_K"])


@triton.jit
def sparse24_linear_bucketed(x_ptr, v_ptr, m_ptr, b_ptr, y_ptr, ws_ptr, M, N, K, KV, MB,
                             stride_xm, stride_vn, stride_mn, stride_ym, M_BUCKET,
                             HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                             SPLIT_K: tl.constexpr):
    """``sparse24_linear_kernel`` with an extra ``M_BUCKET`` argument that keys the autotuner."""
    sparse24_linear_kernel(x_ptr, v_ptr, m_ptr, b_ptr, y_ptr, ws_ptr, M, N, K, KV, MB, stride_xm, stride_vn,
                           stride_mn, stride_ym, HAS_BIAS, UPCAST, IEEE, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K)


def make_linear_autotuner(configs: list[Any] | None = None, do_bench: Any = quick_bench) -> Any:
    """The autotuned ``sparse24_linear_bucketed``: keyed on M's bucket (powers of two >= 16,
    so small and large batches tune separately), N, K and IEEE; configs pruned by
    ``prune_linear_configs``. Tests build one with a fake ``do_bench`` to drive the choice."""
    return triton.autotune(configs=CONFIGS if configs is None else configs,
                           key=["M_BUCKET", "N", "K", "IEEE"], do_bench=do_bench,
                           prune_configs_by={"early_config_prune": prune_linear_configs},
                           post_hook=_reduce_after_bench)(sparse24_linear_bucketed)


sparse24_linear_tuned = make_linear_autotuner()
