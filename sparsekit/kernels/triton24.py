"""Triton kernels for the 2:4 format of ``sparsekit.compress_24``.

``prune_compress_24(w)`` — each program handles ``block`` bytes of metadata laid out as
``block_r`` rows x ``block_j`` consecutive bytes of a row; a byte is a pair of groups of
four weights, i.e. 8 contiguous weights, so the program reads one contiguous
``[block, 8]`` tile (vector loads) and splits it in registers. Per group it ranks the four
magnitudes by pairwise comparison
(Triton has ``tl.sort`` but no argsort; ties go to the lower index, as in
``sparsekit.nm_mask``), keeps the two best, and writes their values and the nibble
``i0 | (i1 << 2)``. One read of ``w``, one write of half of it plus 1/16 of it in metadata.

``sparse24_linear(x, values, meta, bias)`` — a tiled matmul ``x @ W.T`` where the weight
tile is never read densely: per ``[BLOCK_N, BLOCK_K]`` tile it loads ``BLOCK_K / 2``
values and ``BLOCK_K / 8`` metadata bytes per row, splits them into per-group
``(v0, v1)`` and ``(i0, i1)``, and rebuilds the four columns of each group in registers
(``w_t = v0 if t == i0 else v1 if t == i1 else 0``) before ``tl.dot``. At small batch
the matmul is memory-bound, so reading 9/16 of the fp16 weight bytes is the speedup.
Metadata width ``ceil(K / 8)`` and value width ``K / 2`` are kernel arguments (Triton sees
their divisibility), so the masked metadata loads are not reduced to single bytes. At
batch <= 32 the autotuner may also pick split-K (``SPLIT_K`` in its configs): the grid of
``ceil(M / BLOCK_M) * ceil(N / BLOCK_N)`` tiles is too small to keep every SM streaming
weights, so each tile's K range is split over ``SPLIT_K`` programs whose fp32 partials a
second, fixed-order pass sums (deterministic; see ``_triton_kernels``).

Triton is imported on first use only. Under ``TRITON_INTERPRET=1`` (CPU) the kernels run
in Triton's interpreter; there ``tl.dot`` on bf16 tiles multiplies raw bit patterns
(Triton 3.x interpreter bug; fp16 is fine), so bf16 tiles are upcast to fp32 while
interpreting. On a GPU the tiles go to the tensor cores in their own dtype.
"""

from __future__ import annotations

import functools
import math
import os
import weakref
from typing import Any

import torch
from torch import Tensor

from .. import _validate
from ..nm import check_meta_24

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_BLOCK_J = 64  # prune_compress_24: at most 64 metadata bytes (512 weights) of one row per program


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    """True if ``triton`` can be imported (it is not imported by this check)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None


MIN_TRITON = (3, 3)
"""autotune's ``do_bench`` and ``post_hook`` arguments (triton 3.3 = torch 2.7's pin)."""
INTERPRETER_NUMPY_FIX = (3, 7)
"""Triton < 3.7's CPU interpreter calls ``int()`` on 1-element arrays, an error from numpy 2.4 on."""


def version_at_least(version: str, minimum: tuple[int, int]) -> bool:
    """True if a version string (``"3.3.1"``, ``"3.4.0+git..."``, ``"2.4.0rc1"``) is >= ``minimum`` (major, minor)."""
    import re

    nums = [int(p) for p in re.findall(r"\d+", version.split("+")[0])[:2]]
    return tuple(nums + [0] * (2 - len(nums))) >= minimum


def triton_version_ok(version: str) -> bool:
    """True if a triton version string is >= ``MIN_TRITON``."""
    return version_at_least(version, MIN_TRITON)


def unavailable_reason(triton_version: str | None, numpy_version: str, interpreter: bool) -> str | None:
    """Why the kernels cannot run with these versions (``None``: they can). Pure, for testing."""
    need = ".".join(map(str, MIN_TRITON))
    if triton_version is None:
        return "sparsekit.kernels needs triton: pip install 'sparsekit[kernels]'"
    if not version_at_least(triton_version, MIN_TRITON):
        return (f"sparsekit.kernels needs triton >= {need} (autotune's do_bench and post_hook arguments; "
                f"torch >= 2.7 pins it), found {triton_version}: pip install -U 'sparsekit[kernels]'")
    if interpreter and version_at_least(numpy_version, (2, 4)) and not version_at_least(triton_version,
                                                                                       INTERPRETER_NUMPY_FIX):
        fix = ".".join(map(str, INTERPRETER_NUMPY_FIX))
        return (f"Triton {triton_version}'s CPU interpreter fails with numpy {numpy_version} (it calls int() on "
                f"1-element arrays): install numpy < 2.4 or triton >= {fix}")
    return None


def kernels_unavailable_reason() -> str | None:
    """Why the kernels cannot run here (``None``: they can), without importing triton."""
    import importlib.metadata

    import numpy

    try:
        triton_version = importlib.metadata.version("triton") if triton_available() else None
    except importlib.metadata.PackageNotFoundError:
        triton_version = None
    interpreter = interpreting() or not torch.cuda.is_available()
    return unavailable_reason(triton_version, numpy.__version__, interpreter)


def _check_device(*tensors: Tensor) -> None:
    device = tensors[0].device
    for t in tensors[1:]:
        if t.device != device:
            raise ValueError(f"all tensors must be on one device, got {device} and {t.device}")
    if device.type == "cuda":
        return
    if device.type == "cpu" and interpreting():
        return
    raise RuntimeError(
        f"Triton kernels need CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before "
        f"triton is first imported; got device {device} with TRITON_INTERPRET="
        f"{os.environ.get('TRITON_INTERPRET', '(unset)')}")


def _check_dtype(t: Tensor, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")


# Metadata tensors already known to be valid: id -> (weak reference, version, K). A tensor is
# checked again when it changed in place (its version counter moved) or is read as another K.
_VALID_META: dict[int, tuple[weakref.ref[Tensor], int, int]] = {}


def _version(t: Tensor) -> int | None:
    """``t``'s in-place version counter; None for an inference tensor (it has none)."""
    return None if t.is_inference() else t._version


def _remember_valid_meta(meta: Tensor, k: int) -> None:
    version, key = _version(meta), id(meta)
    if version is not None:  # an inference tensor cannot be tracked: it is checked on every call
        _VALID_META[key] = (weakref.ref(meta, lambda _ref, key=key: _VALID_META.pop(key, None)), version, k)


def _check_meta(meta: Tensor, k: int) -> None:
    """``sk.nm.check_meta_24`` (every nibble ``i0 < i1``), once per metadata tensor and version.

    The kernel cannot refuse a nibble with ``i0 == i1`` (it would drop a value), so the
    metadata is checked on the host, but not on every call: a tensor that passed (or that
    ``prune_compress_24`` wrote) is checked again only after an in-place change. Skipped
    while a CUDA graph is being captured (values cannot be read then; warm-up checked them).
    """
    seen = _VALID_META.get(id(meta))
    if seen is not None and seen[0]() is meta and seen[1] == _version(meta) and seen[2] == k:
        return
    if meta.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    check_meta_24(meta, k)
    _remember_valid_meta(meta, k)


@functools.cache
def _kernels() -> dict[str, Any]:
    """Compile-on-demand: import triton and the kernels of ``._triton_kernels`` (once)."""
    reason = kernels_unavailable_reason()
    if reason is not None:
        raise ImportError(reason)
    from . import _triton_kernels as tk

    return {"prune_compress": tk.prune_compress_kernel, "linear": tk.sparse24_linear_kernel,
            "linear_tuned": tk.sparse24_linear_tuned, "launch_reduce": tk.launch_splitk_reduce,
            "configs": tk.CONFIGS, "prune_configs": tk.prune_linear_configs}


def _m_bucket(m: int) -> int:
    return 1 << max(4, math.ceil(math.log2(max(m, 1))))


def prune_compress_24(w: Tensor, *, block: int = 256) -> tuple[Tensor, Tensor]:
    """Prune a 2-D weight to 2:4 by magnitude and compress it, in one Triton pass.

    Returns ``(values [R, K // 2], meta uint8 [R, ceil(K / 8)])``, equal bit for bit to
    ``sk.compress_24(w * sk.nm_mask(w))`` (ties -> lower index; NaN is not supported).
    ``w``: float32 / float16 / bfloat16 (else ``TypeError``), 2-D with ``K % 4 == 0``
    (else ``ValueError``).
    """
    _check_dtype(w, "w")
    if w.dim() != 2:
        raise ValueError(f"w must be 2-D [rows, K], got shape {tuple(w.shape)}")
    rows, k = w.shape
    if k % 4 or k == 0:
        raise ValueError(f"w.shape[1] must be a positive multiple of 4, got {k}")
    if block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    _check_device(w)
    w = w.contiguous()
    mb = math.ceil(k / 8)
    values = torch.empty(rows, k // 2, dtype=w.dtype, device=w.device)
    meta = torch.empty(rows, mb, dtype=torch.uint8, device=w.device)
    if rows * mb == 0:
        return values, meta
    # A program covers block_r rows x block_j metadata bytes (8 contiguous weights each).
    block_j = min(block, 1 << math.ceil(math.log2(mb)), MAX_BLOCK_J)
    block_r = block // block_j
    kern = _kernels()["prune_compress"]
    grid = (math.ceil(rows / block_r), math.ceil(mb / block_j))
    kern[grid](w, values, meta, rows, k, k // 2, mb, w.stride(0), values.stride(0), meta.stride(0),
               BLOCK_R=block_r, BLOCK_J=block_j, BLOCK=block)
    _remember_valid_meta(meta, k)  # valid by construction: sparse24_linear need not check it
    return values, meta


def sparse24_linear(x: Tensor, values: Tensor, meta: Tensor, bias: Tensor | None = None, *,
                    blocks: tuple[int, int, int] | None = None, split_k: int = 1) -> Tensor:
    """``x @ decompress_24(values, meta).T + bias`` reading only the compressed weight.

    ``x [..., K]`` (any leading shape), ``values [N, K // 2]`` and ``meta [N, ceil(K / 8)]``
    from ``prune_compress_24`` / ``sk.compress_24``; ``bias [N]`` or None. ``x``,
    ``values`` and ``bias`` share one dtype (fp32 / fp16 / bf16); accumulation is fp32 and
    fp32 inputs use IEEE fp32 products (no TF32). ``blocks = (BLOCK_M, BLOCK_N, BLOCK_K)``
    fixes the tiling and ``split_k`` (with ``blocks`` only) splits K over that many programs
    per output tile, whose fp32 partials a second pass sums in a fixed order; by default the
    GPU autotunes all of these (split-K is a candidate for batches <= 32) and the
    interpreter uses (16, 16, 16) without split. ``meta`` holding a nibble with
    ``i0 >= i1`` raises ``ValueError``, as in ``decompress_24`` (checked once per tensor).
    """
    _check_dtype(x, "x")
    _check_dtype(values, "values")
    if not isinstance(meta, Tensor):
        raise TypeError(f"meta must be a Tensor, got {type(meta).__name__}")
    if meta.dtype != torch.uint8:
        raise TypeError(f"meta must have dtype torch.uint8, got {meta.dtype}")
    if values.dtype != x.dtype:
        raise TypeError(f"x and values must share a dtype, got {x.dtype} and {values.dtype}")
    if values.dim() != 2 or values.shape[1] % 2:
        raise ValueError(f"values must be 2-D [N, K // 2] with an even last dim, got {tuple(values.shape)}")
    n, k = values.shape[0], 2 * values.shape[1]
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x.shape[-1] must be K = {k} (from values {tuple(values.shape)}), got {tuple(x.shape)}")
    if tuple(meta.shape) != (n, math.ceil(k / 8)):
        raise ValueError(f"meta must have shape {(n, math.ceil(k / 8))} for values {tuple(values.shape)}, "
                         f"got {tuple(meta.shape)}")
    if bias is not None:
        if not isinstance(bias, Tensor) or bias.dtype != x.dtype:
            raise TypeError(f"bias must be a Tensor of dtype {x.dtype}, got "
                            f"{getattr(bias, 'dtype', type(bias).__name__)}")
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    _check_device(x, values, meta, *(() if bias is None else (bias,)))
    _check_meta(meta, k)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y.reshape(*lead, n)
    if k == 0:
        y.zero_()
        if bias is not None:
            y += bias
        return y.reshape(*lead, n)
    values, meta = values.contiguous(), meta.contiguous()
    interp = interpreting()
    if split_k != 1 and blocks is None:
        raise ValueError("split_k is a tiling choice: pass it together with blocks=(BLOCK_M, BLOCK_N, BLOCK_K)")
    if blocks is None and interp:
        blocks = (16, 16, 16)
    call = _LinearCall(x2, values, meta, bias, y, interp)
    if blocks is not None:
        for name, v in zip(("BLOCK_M", "BLOCK_N", "BLOCK_K"), blocks):
            if _validate.integer(v, name, low=16, what="a power of two >= 16") & (v - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {v}")
        call.explicit(*blocks, _validate.positive_int(split_k, "split_k"))
    else:
        call.tuned(_kernels()["linear_tuned"])
    return y.reshape(*lead, n)


class _LinearCall:
    """One ``sparse24_linear`` launch: the arguments, the split-K workspace and the reduction."""

    def __init__(self, x2: Tensor, values: Tensor, meta: Tensor, bias: Tensor | None, y: Tensor,
                 interp: bool) -> None:
        self.x2, self.values, self.meta, self.bias, self.y = x2, values, meta, bias, y
        self.m, self.n, self.k = x2.shape[0], values.shape[0], x2.shape[1]
        self.common = dict(HAS_BIAS=bias is not None, UPCAST=interp and x2.dtype == torch.bfloat16,
                           IEEE=x2.dtype == torch.float32)
        self.b = bias if bias is not None else values  # a valid pointer the kernel never reads

    def args(self, ws: Tensor) -> tuple[Any, ...]:
        x2, values, meta, y = self.x2, self.values, self.meta, self.y
        # KV = K / 2 and MB = ceil(K / 8) are passed (not derived in the kernel) so that Triton
        # specializes them, with their divisibility, like any integer argument.
        return (x2, values, meta, self.b, y, ws, self.m, self.n, self.k, values.shape[1], meta.shape[1],
                x2.stride(0), values.stride(0), meta.stride(0), y.stride(0))

    def workspace(self, split_k: int) -> Tensor:
        if split_k == 1:
            return self.y  # a valid pointer the kernel never writes when SPLIT_K == 1
        return torch.empty(split_k, self.m, self.n, dtype=torch.float32, device=self.y.device)

    def reduce(self, ws: Tensor, split_k: int) -> None:
        if split_k > 1:
            _kernels()["launch_reduce"](ws, self.b, self.y, self.m, self.n, self.y.stride(0),
                                        self.common["HAS_BIAS"], split_k)

    def explicit(self, bm: int, bn: int, bk: int, split_k: int, **launch: int) -> None:
        """The jitted kernel itself with fixed meta-parameters (``launch``: num_warps, num_stages)."""
        ws = self.workspace(split_k)
        grid = (math.ceil(self.m / bm), math.ceil(self.n / bn), split_k)
        _kernels()["linear"][grid](*self.args(ws), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split_k,
                                   **self.common, **launch)
        self.reduce(ws, split_k)

    def tuned(self, tuned: Any) -> None:
        """The autotuned kernel, with a workspace for the largest split it may choose (none for
        large M, where the pruning rule leaves only SPLIT_K == 1)."""
        bucket = _m_bucket(self.m)
        candidates = _kernels()["prune_configs"](tuned.configs, {"M_BUCKET": bucket, "K": self.k})
        ws = self.workspace(max(c.kwargs["SPLIT_K"] for c in candidates))
        m, n = self.m, self.n

        def grid(meta_: dict[str, int]) -> tuple[int, int, int]:
            return (math.ceil(m / meta_["BLOCK_M"]), math.ceil(n / meta_["BLOCK_N"]), meta_["SPLIT_K"])

        tuned[grid](*self.args(ws), bucket, **self.common)
        self.reduce(ws, tuned.best_config.kwargs["SPLIT_K"])
