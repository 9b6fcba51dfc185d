"""The Triton kernels behind ``sparsekit.kernels.triton24`` (imported on first use only).

Kept in their own module because ``@triton.jit`` functions resolve the functions they call
as module globals (not closures): ``sparse24_linear_bucketed`` calls
``sparse24_linear_kernel`` by its global name.
"""

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl
import triton.testing


@triton.jit
def prune_compress_kernel(w_ptr, val_ptr, meta_ptr, R, K, KV, MB, stride_w, stride_v, stride_m,
                          BLOCK_R: tl.constexpr, BLOCK_J: tl.constexpr):
    """Prune to 2:4 and compress ``[BLOCK_R rows, BLOCK_J metadata bytes]`` per program.

    Lane ``b`` of the ``BLOCK = BLOCK_R * BLOCK_J`` lanes owns metadata byte ``j`` of row
    ``row``, i.e. the 8 contiguous weights ``w[row, 8j : 8j + 8]`` (groups ``2j``, ``2j + 1``).
    They are read as one ``[BLOCK, 8]`` tile (consecutive lanes are consecutive in memory, 8
    contiguous elements per lane: vector loads) and split in registers; the 4 kept values
    per lane are written as one ``[BLOCK, 4]`` tile, the byte as one ``[BLOCK]`` vector.
    """
    BLOCK: tl.constexpr = BLOCK_R * BLOCK_J
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
def sparse24_linear_kernel(x_ptr, v_ptr, m_ptr, b_ptr, y_ptr, M, N, K,
                           stride_xm, stride_vn, stride_mn, stride_ym,
                           HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    rv = tl.arange(0, BLOCK_K // 2)  # compressed values in a K tile
    rb = tl.arange(0, BLOCK_K // 8)  # metadata bytes in a K tile
    groups = K // 4
    mb = (groups + 1) // 2
    m_ok = rm < M
    n_ok = rn < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :],
                    mask=m_ok[:, None] & (kk[None, :] < K), other=0.0)
        # Compressed weight tile: values [BLOCK_N, BLOCK_K/2], meta [BLOCK_N, BLOCK_K/8].
        vv = k0 // 2 + rv
        vals = tl.load(v_ptr + rn[:, None] * stride_vn + vv[None, :],
                       mask=n_ok[:, None] & (vv[None, :] < 2 * groups), other=0.0)
        bb = k0 // 8 + rb
        meta = tl.load(m_ptr + rn[:, None] * stride_mn + bb[None, :],
                       mask=n_ok[:, None] & (bb[None, :] < mb), other=0).to(tl.int32)
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
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
    for bm, bn, bk, w, s in [
        (16, 32, 128, 4, 4), (16, 64, 128, 4, 4), (16, 32, 256, 4, 3), (16, 64, 256, 8, 3),
        (32, 64, 128, 4, 4), (64, 64, 64, 4, 4), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3),
        (64, 128, 64, 4, 4),
    ]
]


def quick_bench(fn: Any, quantiles: Any = None) -> Any:
    """A short timing pass per autotuning config (Triton's default spends ~125 ms each)."""
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


@triton.jit
def sparse24_linear_bucketed(x_ptr, v_ptr, m_ptr, b_ptr, y_ptr, M, N, K,
                             stride_xm, stride_vn, stride_mn, stride_ym, M_BUCKET,
                             HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``sparse24_linear_kernel`` with an extra ``M_BUCKET`` argument that keys the autotuner."""
    sparse24_linear_kernel(x_ptr, v_ptr, m_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_vn, stride_mn,
                           stride_ym, HAS_BIAS, UPCAST, IEEE, BLOCK_M, BLOCK_N, BLOCK_K)


# M is bucketed (powers of two >= 16) so small and large batches tune separately.
sparse24_linear_tuned = triton.autotune(configs=CONFIGS, key=["M_BUCKET", "N", "K", "IEEE"],
                                        do_bench=quick_bench)(sparse24_linear_bucketed)
