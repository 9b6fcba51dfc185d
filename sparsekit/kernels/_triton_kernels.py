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
def prune_compress_kernel(w_ptr, val_ptr, meta_ptr, K, MB, total_bytes, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # one metadata byte = groups 2j and 2j+1
    valid = offs < total_bytes
    row = offs // MB
    j = offs % MB
    groups = K // 4
    byte = tl.zeros([BLOCK], dtype=tl.int32)
    for h in tl.static_range(2):
        g = 2 * j + h
        ok = valid & (g < groups)
        src = w_ptr + row * K + 4 * g
        x0 = tl.load(src + 0, mask=ok, other=0.0)
        x1 = tl.load(src + 1, mask=ok, other=0.0)
        x2 = tl.load(src + 2, mask=ok, other=0.0)
        x3 = tl.load(src + 3, mask=ok, other=0.0)
        a0, a1, a2, a3 = tl.abs(x0), tl.abs(x1), tl.abs(x2), tl.abs(x3)
        # rank_t = #{larger} + #{equal with a lower index}; keep rank < 2.
        r0 = (a1 > a0).to(tl.int32) + (a2 > a0).to(tl.int32) + (a3 > a0).to(tl.int32)
        r1 = (a0 >= a1).to(tl.int32) + (a2 > a1).to(tl.int32) + (a3 > a1).to(tl.int32)
        r2 = (a0 >= a2).to(tl.int32) + (a1 >= a2).to(tl.int32) + (a3 > a2).to(tl.int32)
        r3 = (a0 >= a3).to(tl.int32) + (a1 >= a3).to(tl.int32) + (a2 >= a3).to(tl.int32)
        k0, k1, k2, k3 = r0 < 2, r1 < 2, r2 < 2, r3 < 2
        i0 = tl.where(k0, 0, tl.where(k1, 1, 2))
        i1 = tl.where(k3, 3, tl.where(k2, 2, 1))
        v0 = tl.where(k0, x0, tl.where(k1, x1, x2))
        v1 = tl.where(k3, x3, tl.where(k2, x2, x1))
        dst = val_ptr + row * (K // 2) + 2 * g
        tl.store(dst + 0, v0, mask=ok)
        tl.store(dst + 1, v1, mask=ok)
        nib = tl.where(ok, i0 | (i1 << 2), 0)
        byte = byte | (nib << (4 * h))
    tl.store(meta_ptr + offs, byte.to(tl.uint8), mask=valid)

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
