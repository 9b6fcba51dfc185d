"""Cost accounting: what a sparse model stores and computes, layer by layer (the *finalize* step's bill).

For each prunable layer: shape, parameters, nonzeros, sparsity; multiply-accumulate
FLOPs as dense and as *effective* (only nonzero weights), for one example input; and
the bytes needed to store the weight as dense, CSR (values + int32 column indices +
int32 row pointers, as :func:`sparsekit.execute.to_layout` stores it), and bitmask
(one bit per entry + the nonzero values).

FLOPs are counted in one place, :func:`flop_counts`, with torch's own
``torch.utils.flop_counter.FlopCounterMode`` (every matmul and convolution the forward
pass runs, attention's ``Q K^T`` and ``A V`` included); :func:`cost_report` and
:func:`cost` both read it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor, nn

from . import _validate
from .masking import prunable_modules, weight_name
from .train import eval_mode

OTHER_OPS = "(other ops)"  # the cost_report row for FLOPs outside every Linear/Conv (attention matmuls)


@torch.no_grad()
def flop_counts(model: nn.Module, example_input: Tensor) -> dict[str, int]:
    """FLOPs of ``model(example_input)`` per module, counted by ``FlopCounterMode``.

    Keys are module names as in ``model.named_modules()``; ``""`` is the whole model. A
    module's count includes its submodules' (the attention module's count holds its q/k/v/out
    projections and the two attention matmuls). A multiply-add counts 2, for the whole
    batch; norms, activations and masking are not counted. Runs once in eval mode, without
    gradients; every module's train/eval mode is restored.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    from torch.utils.flop_counter import FlopCounterMode  # here: importing it imports Triton where installed

    counter = FlopCounterMode(display=False)
    with eval_mode(model), counter:
        model(example_input)
    root = type(model).__name__
    out = {"": counter.get_total_flops()}
    for key, per_op in counter.get_flop_counts().items():
        if key.startswith(root + "."):
            out[key[len(root) + 1:]] = sum(per_op.values())
    return out


@dataclass(frozen=True)
class Cost:
    """Parameters and FLOPs (a multiply-add counts 2) of one forward pass."""

    params: int
    flops: int

    def __str__(self) -> str:
        return f"{self.params:,} params, {self.flops / 1e6:.2f} MFLOPs"


def cost(model: nn.Module, example_input: Tensor) -> Cost:
    """Parameters and FLOPs of ``model(example_input)`` (for the whole batch), e.g. of a shrunk model.

    FLOPs are :func:`flop_counts`' total: every Linear/Conv and the attention matmuls
    ``Q K^T`` and ``A V``; norms and activations are not counted. Works on shrunk models,
    including attention layers with no heads left.
    """
    flops = flop_counts(model, example_input)[""]
    return Cost(params=sum(p.numel() for p in model.parameters()), flops=flops)


@dataclass(frozen=True)
class LayerCost:
    """Costs of one layer's weight; FLOPs count a multiply-add as 2."""

    name: str
    shape: tuple[int, ...]
    params: int
    nonzeros: int
    dense_flops: int
    effective_flops: int
    dense_bytes: int
    csr_bytes: int
    bitmask_bytes: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0


def storage_bytes(weight: Tensor, index_bytes: int = 4) -> dict[str, int]:
    """Bytes of ``weight`` (viewed as rows x columns) as dense, CSR and bitmask.

    CSR holds the nonzero values, one column index per nonzero and ``rows + 1`` row
    pointers, each index ``index_bytes`` wide: 4 (int32, as
    :func:`sparsekit.execute.to_layout` stores them; equal to
    :func:`sparsekit.execute.layout_bytes` of that tensor) or 8 (int64, what
    ``Tensor.to_sparse_csr`` builds).
    """
    index_bytes = _validate.integer(index_bytes, "index_bytes", low=1)
    w = weight.detach()
    w = w.reshape(w.shape[0], math.prod(w.shape[1:])) if w.dim() > 1 else w.reshape(1, w.numel())
    rows, _ = w.shape
    nnz = int((w != 0).sum())
    elem = w.element_size()
    return {
        "dense": w.numel() * elem,
        "csr": nnz * (elem + index_bytes) + (rows + 1) * index_bytes,
        "bitmask": (w.numel() + 7) // 8 + nnz * elem,
    }


def break_even_sparsity(fmt: str, shape: Sequence[int] | None = None, *, value_bytes: int = 4,
                        index_bytes: int = 4) -> Fraction:
    """The exact sparsity at which ``fmt`` (``"csr"`` or ``"bitmask"``) takes as many bytes as dense.

    Bytes are counted as :func:`storage_bytes` counts them, for a weight of ``shape`` (viewed as
    ``shape[0]`` rows x the product of the rest; a 1-D shape is one row) with ``n`` entries of
    ``value_bytes`` each, the number of nonzeros ``nnz = (1 - s) n`` read as a real number:

    * CSR: ``nnz (v + i) + (rows + 1) i = n v``  gives  ``s* = i / (v + i) + (rows + 1) i / (n (v + i))``;
    * bitmask: ``ceil(n / 8) + nnz v = n v``  gives  ``s* = ceil(n / 8) / (n v)``.

    A tensor with sparsity above ``s*`` is smaller in that format than dense, below it larger
    (equal bytes exactly at ``s*``). A result above 1 means the format never wins (a matrix with
    many short rows). ``shape=None`` gives the limit for a large matrix (rows and columns to
    infinity): CSR ``i / (v + i)`` (1/2 for float32 values with int32 indices, 2/3 with torch's
    default int64 indices), bitmask ``1 / (8 v)`` (1/32 for float32).
    """
    if not isinstance(fmt, str) or fmt not in ("csr", "bitmask"):
        raise ValueError(f"fmt must be 'csr' or 'bitmask', got {fmt!r}")
    v = _validate.positive_int(value_bytes, "value_bytes")
    i = _validate.positive_int(index_bytes, "index_bytes")
    if shape is None:
        return Fraction(i, v + i) if fmt == "csr" else Fraction(1, 8 * v)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) == 0:
        raise ValueError(f"shape must be a non-empty sequence of positive ints or None, got {shape!r}")
    dims = [_validate.positive_int(d, f"shape[{k}]") for k, d in enumerate(shape)]
    rows, n = (dims[0] if len(dims) > 1 else 1), math.prod(dims)
    if fmt == "csr":
        return Fraction(i, v + i) + Fraction((rows + 1) * i, n * (v + i))
    return Fraction((n + 7) // 8, n * v)


@torch.no_grad()
def cost_report(model: nn.Module, example_input: Tensor) -> list[LayerCost]:
    """One :class:`LayerCost` per Linear/Conv layer for a forward pass on ``example_input``.

    FLOPs are per *batch* of ``example_input``, from :func:`flop_counts`: a Linear or Conv
    layer does one multiply-add per weight per output position (``2 * weight.numel() *
    positions``); *effective* FLOPs count only the nonzero weights. FLOPs outside every
    Linear/Conv (the attention matmuls ``Q K^T`` and ``A V`` of a Transformer) get one
    more row, named ``"(other ops)"`` with no parameters, so :func:`totals` equals
    :func:`cost`'s FLOPs.
    """
    modules = prunable_modules(model)
    counts = flop_counts(model, example_input)
    rows = []
    for name, module in modules.items():
        w = module.weight.detach()
        nnz = int((w != 0).sum())
        flops = counts.get(name, 0)
        b = storage_bytes(w)
        rows.append(LayerCost(
            name=weight_name(name), shape=tuple(w.shape), params=w.numel(), nonzeros=nnz,
            dense_flops=flops, effective_flops=flops * nnz // w.numel() if w.numel() else 0,
            dense_bytes=b["dense"], csr_bytes=b["csr"], bitmask_bytes=b["bitmask"],
        ))
    other = counts[""] - sum(r.dense_flops for r in rows)
    if other:
        rows.append(LayerCost(name=OTHER_OPS, shape=(), params=0, nonzeros=0, dense_flops=other,
                              effective_flops=other, dense_bytes=0, csr_bytes=0, bitmask_bytes=0))
    return rows


def totals(rows: list[LayerCost]) -> dict[str, float]:
    """Model totals of a :func:`cost_report`."""
    params = sum(r.params for r in rows)
    nnz = sum(r.nonzeros for r in rows)
    return {
        "params": params, "nonzeros": nnz, "sparsity": 1.0 - nnz / params if params else 0.0,
        "dense_flops": sum(r.dense_flops for r in rows),
        "effective_flops": sum(r.effective_flops for r in rows),
        "dense_bytes": sum(r.dense_bytes for r in rows),
        "csr_bytes": sum(r.csr_bytes for r in rows),
        "bitmask_bytes": sum(r.bitmask_bytes for r in rows),
    }


def format_report(rows: list[LayerCost]) -> str:
    """A plain-text table of a :func:`cost_report` with a totals line."""
    head = f"{'layer':<22}{'shape':>16}{'params':>9}{'nonzero':>9}{'sparsity':>9}" \
           f"{'MFLOPs':>9}{'eff.MFLOPs':>11}{'dense kB':>9}{'CSR kB':>8}{'bitmask kB':>11}"
    lines = [head, "-" * len(head)]

    def line(name: str, shape: str, p: float, nz: float, fd: float, fe: float, bd: float, bc: float, bb: float) -> str:
        sp = 1 - nz / p if p else 0.0
        return (f"{name:<22}{shape:>16}{p:>9,.0f}{nz:>9,.0f}{sp:>9.1%}{fd / 1e6:>9.2f}{fe / 1e6:>11.2f}"
                f"{bd / 1e3:>9.1f}{bc / 1e3:>8.1f}{bb / 1e3:>11.1f}")

    for r in rows:
        lines.append(line(r.name, "x".join(map(str, r.shape)), r.params, r.nonzeros, r.dense_flops,
                          r.effective_flops, r.dense_bytes, r.csr_bytes, r.bitmask_bytes))
    t = totals(rows)
    lines.append("-" * len(head))
    lines.append(line("total", "", t["params"], t["nonzeros"], t["dense_flops"], t["effective_flops"],
                      t["dense_bytes"], t["csr_bytes"], t["bitmask_bytes"]))
    return "\n".join(lines)
