"""The *finalize* step, for speed (score -> select -> mask -> train -> finalize): running
sparse weights in CSR / BSR layouts, sparse linear layers, and choosing a layout.

A mask makes a weight *sparse* but not *fast*: a masked ``nn.Linear`` still multiplies by
every zero. To skip the zeros the weight must be stored in a sparse layout and multiplied
by a sparse kernel (``torch.sparse``):

* **CSR** (compressed sparse row): the nonzero values, their column indices, and one
  pointer per row. Any pattern; one index per nonzero; irregular memory access.
* **BSR** (block sparse row): CSR over ``b x b`` blocks; a kept block is stored dense.
  Needs block-structured zeros, but the kernel does small dense GEMMs and runs close
  to dense speed per stored value.

A sparse kernel does less arithmetic but far more bookkeeping per multiply-add, so it
only wins above a *crossover sparsity*. On this book's 2-core AVX-512 CPU (torch 2.13,
MKL, a ``[4096 x 4096]`` weight times a ``[4096 x 256]`` input, quiet machine) CSR broke
even with dense at about 90 % zeros (1.2-1.4x at 92 %, 1.7-2.0x at 95 %). BSR on a mask
of empty ``32 x 32`` tiles broke even at about 62-65 % empty tiles (1.1-1.3x at 70 %,
2.6-3.3x at 90 %, transposing the input and adding the bias included), **when stored in
8 x 8 blocks**: MKL's BSR kernel is much faster with small blocks, and the bare
product at 90 % ran 2.3x faster than dense with ``32 x 32`` storage blocks, 2.6x with
``16 x 16``, 3.9x with ``8 x 8`` and 3.6x with ``4 x 4``. A mask's blocks and the storage's
blocks are separate choices. Chapter 1 re-measures the crossovers;
``benchmarks/bench_execute.py`` records the speedups. The ``"auto"`` layout encodes the
rule with a margin above the crossovers (see :func:`choose_layout`), so that it is never
much slower than dense. Gale et al. 2020 and Hoefler et al. 2021 (section 7) discuss the
same gap on GPUs.

Layers built here are for *inference*: their weights are buffers, not parameters.
Random masks of a given sparsity for timing experiments are in :mod:`sparsekit.synthetic`;
interleaved timing and the crossover of a measured sweep are in :mod:`sparsekit.bench`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _validate
from .masking import copy_model, get_masks

LAYOUTS = ("auto", "dense", "csr", "bsr")
"""Accepted ``layout`` arguments."""

CSR_MIN_SPARSITY = 0.93
"""``"auto"`` considers CSR at or above this fraction of zeros (above the measured ~90 % crossover)."""

BSR_MIN_BLOCK_SPARSITY = 0.70
"""``"auto"`` considers BSR at or above this fraction of all-zero blocks (above the measured ~62-65 % crossover)."""

BSR_BLOCKSIZE = (8, 8)
"""Default BSR block shape (rows, columns) *of the storage*, not of the mask: MKL's BSR
kernel was fastest with ``8 x 8`` blocks on this CPU, so a mask of empty ``32 x 32`` tiles
is stored as (sixteen times as many) ``8 x 8`` blocks (measured in chapter 1)."""

AUTO_MIN_NUMEL = 1 << 18
"""``"auto"`` keeps weights with fewer entries than this dense: for a ``256 x 256`` layer
the whole product takes microseconds and the sparse kernel's fixed overhead dominates."""


def _check_layout(layout: str, allowed: Sequence[str] = LAYOUTS) -> str:
    if not isinstance(layout, str) or layout not in allowed:
        raise ValueError(f"layout must be one of {', '.join(map(repr, allowed))}; got {layout!r}")
    return layout


def _check_bias(bias: Tensor | None, out_features: int) -> Tensor | None:
    if bias is None:
        return None
    if not isinstance(bias, Tensor):
        raise TypeError(f"bias must be None or a Tensor of shape ({out_features},), got {type(bias).__name__}")
    if tuple(bias.shape) != (out_features,):
        raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
    return bias


def check_blocksize(blocksize: Sequence[int]) -> tuple[int, int]:
    """``blocksize`` as ``(rows, cols)`` of two positive ints (``ValueError`` otherwise)."""
    if (not isinstance(blocksize, (tuple, list)) or len(blocksize) != 2
            or not all(_validate.is_int(b) and b >= 1 for b in blocksize)):
        raise ValueError(f"blocksize must be two positive ints (rows, cols), got {blocksize!r}")
    return int(blocksize[0]), int(blocksize[1])


def _check_weight(weight: Tensor) -> Tensor:
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a Tensor, got {type(weight).__name__}")
    if weight.dim() != 2 or weight.layout != torch.strided:
        raise ValueError(f"weight must be a dense 2-D tensor, got {weight.dim()}-D {weight.layout}")
    return weight


def block_sparsity(weight: Tensor, blocksize: Sequence[int] = BSR_BLOCKSIZE) -> float:
    """Fraction of ``blocksize`` tiles of a 2-D ``weight`` that are entirely zero.

    The shape must be divisible by ``blocksize`` (``ValueError`` otherwise). Random
    unstructured sparsity ``s`` leaves almost no empty ``32 x 32`` block (``s ** 1024``).
    """
    r, c = check_blocksize(blocksize)
    w = _check_weight(weight)
    rows, cols = w.shape
    if rows % r or cols % c:
        raise ValueError(f"weight shape {tuple(w.shape)} is not divisible by blocksize {(r, c)}")
    nonzero_blocks = (w != 0).reshape(rows // r, r, cols // c, c).any(dim=3).any(dim=1)
    return 1.0 - int(nonzero_blocks.sum()) / nonzero_blocks.numel()


def _eligible_costs(weight: Tensor, blocksize: tuple[int, int], csr_min_sparsity: float,
                    bsr_min_block_sparsity: float) -> dict[str, float]:
    """Predicted time relative to dense of each sparse layout that passes its threshold.

    A sparse kernel's time grows with what it stores (nonzeros for CSR, kept blocks for
    BSR), so the cost is ``stored fraction / stored fraction at the crossover``: 1.0 at
    the threshold, less above it. Thresholds are checked on exact counts, so a mask with
    exactly ``round(t * n)`` zeros counts as sparsity ``t`` although its float mean may
    be a hair below.
    """
    r, c = blocksize
    numel = weight.numel()
    costs = {}
    if weight.shape[0] % r == 0 and weight.shape[1] % c == 0:
        blocks = numel // (r * c)
        empty = block_sparsity(weight, (r, c)) * blocks
        if empty + 0.5 >= bsr_min_block_sparsity * blocks:
            costs["bsr"] = (1.0 - empty / blocks) / (1.0 - bsr_min_block_sparsity)
    zeros = int((weight == 0).sum())
    if zeros + 0.5 >= csr_min_sparsity * numel:
        costs["csr"] = (1.0 - zeros / numel) / (1.0 - csr_min_sparsity)
    return costs


def choose_layout(weight: Tensor, blocksize: Sequence[int] = BSR_BLOCKSIZE, *,
                  csr_min_sparsity: float = CSR_MIN_SPARSITY,
                  bsr_min_block_sparsity: float = BSR_MIN_BLOCK_SPARSITY,
                  min_numel: int = AUTO_MIN_NUMEL) -> str:
    """The layout ``"auto"`` picks for ``weight``: ``"bsr"``, ``"csr"`` or ``"dense"``.

    The rule, from measured crossovers (module docstring):

    1. fewer than ``min_numel`` entries -> ``"dense"`` (fixed overheads dominate);
    2. ``"csr"`` is a candidate when at least ``csr_min_sparsity`` of the entries are
       zero; ``"bsr"`` when the shape is divisible by ``blocksize`` and at least
       ``bsr_min_block_sparsity`` of the blocks are all zero;
    3. of the candidates, the one that stores the smallest fraction of what it stores at
       its own threshold wins (a kernel's time grows with what it stores). A 99.5 %
       unstructured weight leaves about 73 % of its ``8 x 8`` blocks empty, but CSR,
       storing 0.5 % of the entries, is far cheaper than BSR storing 27 % of the blocks;
    4. no candidate -> ``"dense"``: below the crossover a sparse kernel is *slower* than dense.
    """
    w = _check_weight(weight)
    r, c = check_blocksize(blocksize)
    csr_min_sparsity = _validate.fraction(csr_min_sparsity, "csr_min_sparsity", allow_one=True)
    bsr_min_block_sparsity = _validate.fraction(bsr_min_block_sparsity, "bsr_min_block_sparsity", allow_one=True)
    min_numel = _validate.integer(min_numel, "min_numel", low=0)
    if w.numel() < min_numel:
        return "dense"
    costs = _eligible_costs(w, (r, c), csr_min_sparsity, bsr_min_block_sparsity)
    return min(costs, key=costs.__getitem__) if costs else "dense"


def to_layout(weight: Tensor, layout: str, blocksize: Sequence[int] = BSR_BLOCKSIZE) -> Tensor:
    """``weight`` (2-D, dense) stored as ``"dense"``, ``"csr"`` or ``"bsr"`` (``"auto"``: :func:`choose_layout`)."""
    _check_layout(layout)
    w = _check_weight(weight).detach()
    r, c = check_blocksize(blocksize)
    if layout == "auto":
        layout = choose_layout(w, (r, c))
    if layout == "dense":
        return w.clone().contiguous()
    if layout == "csr":
        return _int32_indices(w.to_sparse_csr())
    if w.shape[0] % r or w.shape[1] % c:
        raise ValueError(f"layout 'bsr' needs the weight shape {tuple(w.shape)} divisible by blocksize {(r, c)}")
    return _int32_indices(w.to_sparse_bsr((r, c)))


def _int32_indices(t: Tensor) -> Tensor:
    """A CSR / BSR tensor with 32-bit indices where they fit (torch builds 64-bit ones).

    MKL's sparse kernels take 32-bit indices; torch converts 64-bit ones on *every* product
    (about 1 ms for a 4096 x 4096 BSR weight at 90 % block sparsity), and they halve the
    index bytes.
    """
    if t.col_indices().numel() >= 2**31:
        return t
    build = torch.sparse_csr_tensor if t.layout == torch.sparse_csr else torch.sparse_bsr_tensor
    return build(t.crow_indices().to(torch.int32), t.col_indices().to(torch.int32), t.values(),
                 size=t.shape, check_invariants=False)


def sparse_matmul(weight: Tensor, x: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` for a 2-D ``weight`` in any layout and ``x`` of shape ``[..., in]``.

    MKL's sparse kernels multiply a sparse matrix by a *row-major* dense one, so a sparse
    ``weight`` ``[out, in]`` multiplies the ``[in, N]`` transpose of the flattened input,
    with the bias added by the same call (``addmm``). The ``[out, N]`` result is
    transposed back and made contiguous: like ``F.linear``'s, the output is row-major,
    so ``y.view(-1)`` works as it does for an ``nn.Linear``.
    ``x.shape[-1]`` must equal ``weight.shape[1]`` (``ValueError`` otherwise).
    """
    if not isinstance(weight, Tensor) or not isinstance(x, Tensor):
        bad = "weight" if not isinstance(weight, Tensor) else "x"
        raise TypeError(f"{bad} must be a Tensor, got {type(weight if bad == 'weight' else x).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    out_features, in_features = weight.shape
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(f"x must have shape [..., {in_features}] (weight.shape[1], the inner dimension), "
                         f"got {tuple(x.shape)}")
    _check_bias(bias, out_features)
    if weight.layout == torch.strided:
        return F.linear(x, weight, bias)  # F.linear checks dtypes itself (and follows autocast)
    dtypes = {"weight": weight.dtype, "x": x.dtype, **({} if bias is None else {"bias": bias.dtype})}
    if len(set(dtypes.values())) > 1:
        got = ", ".join(f"{k} {str(v).removeprefix('torch.')}" for k, v in dtypes.items())
        raise TypeError(f"weight, x and bias must share one dtype, got {got}")
    lead = x.shape[:-1]
    flat = x.reshape(-1, in_features)
    if flat.shape[0] == 0:
        return x.new_zeros(*lead, out_features)
    xt = flat.T.contiguous()
    if bias is None:
        yt = torch.sparse.mm(weight, xt)
    else:
        yt = torch.addmm(bias.unsqueeze(1).expand(out_features, xt.shape[1]), weight, xt)
    return yt.T.contiguous().reshape(*lead, out_features)


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored dense, CSR or BSR (inference only: ``W`` is buffers).

    A sparse ``W`` is kept as its component arrays (``values``, ``col_indices``,
    ``crow_indices``, plain buffers), so ``state_dict``, ``.to(device)`` and
    ``copy.deepcopy`` work as for any module; :attr:`weight` reassembles the sparse
    tensor (no copy). Accepts inputs of any leading shape ``[..., in_features]``.
    """

    bias: Tensor | None

    def __init__(self, weight: Tensor, bias: Tensor | None = None, layout: str = "auto",
                 blocksize: Sequence[int] = BSR_BLOCKSIZE) -> None:
        super().__init__()
        w = _check_weight(weight).detach()
        self.out_features, self.in_features = w.shape
        if layout == "auto":
            layout = choose_layout(w, blocksize)
        self.layout = _check_layout(layout, LAYOUTS[1:])
        self.nonzeros = int((w != 0).sum())
        stored = to_layout(w, layout, blocksize)
        if layout == "dense":
            self.register_buffer("dense", stored)
        else:
            self.register_buffer("values", stored.values())
            self.register_buffer("col_indices", stored.col_indices())
            self.register_buffer("crow_indices", stored.crow_indices())
        if _check_bias(bias, self.out_features) is not None:
            bias = bias.detach().clone()
        self.register_buffer("bias", bias)

    @property
    def weight(self) -> Tensor:
        """The weight in its layout (a strided, ``sparse_csr`` or ``sparse_bsr`` tensor)."""
        if self.layout == "dense":
            return self.dense
        build = torch.sparse_csr_tensor if self.layout == "csr" else torch.sparse_bsr_tensor
        return build(self.crow_indices, self.col_indices, self.values,
                     size=(self.out_features, self.in_features), check_invariants=False)

    def forward(self, x: Tensor) -> Tensor:
        return sparse_matmul(self.weight, x, self.bias)

    def dense_weight(self) -> Tensor:
        """The weight as a dense tensor (for checks)."""
        return self.weight if self.layout == "dense" else self.weight.to_dense()

    def extra_repr(self) -> str:
        total = self.in_features * self.out_features
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"layout={self.layout!r}, nonzeros={self.nonzeros}/{total}")


def sparse_linear(linear: nn.Linear, layout: str = "auto",
                  blocksize: Sequence[int] = BSR_BLOCKSIZE) -> SparseLinear:
    """A :class:`SparseLinear` computing the same function as ``linear`` (masks applied).

    Args:
        linear: an ``nn.Linear``, masked or not; its *effective* weight is used, so a
            masked layer's zeros become the sparse pattern.
        layout: ``"dense"``, ``"csr"``, ``"bsr"``, or ``"auto"`` (:func:`choose_layout`:
            the fastest measured choice for this weight's sparsity and block structure).
        blocksize: BSR block shape; the weight shape must be divisible by it for ``"bsr"``.
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    _check_layout(layout)
    check_blocksize(blocksize)
    return SparseLinear(linear.weight.detach(), linear.bias, layout, blocksize)


def to_sparse(model: nn.Module, layout: str = "auto", blocksize: Sequence[int] = BSR_BLOCKSIZE, *,
              masked_only: bool = True) -> nn.Module:
    """A copy of ``model`` with every masked ``nn.Linear`` replaced by :func:`sparse_linear`.

    The original model is left untouched. With ``masked_only=False`` every Linear is
    converted (``"auto"`` still keeps dense weights dense). Conv layers are not converted.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_layout(layout)
    check_blocksize(blocksize)
    masked = {"" if name == "weight" else name.removesuffix(".weight") for name in get_masks(model)}
    new = copy_model(model)
    if isinstance(new, nn.Linear):
        return sparse_linear(new, layout, blocksize) if ("" in masked or not masked_only) else new
    targets = [name for name, m in new.named_modules()
               if isinstance(m, nn.Linear) and name and (name in masked or not masked_only)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = new.get_submodule(parent_name)
        setattr(parent, child, sparse_linear(getattr(parent, child), layout, blocksize))
    return new


def layouts(model: nn.Module) -> dict[str, str]:
    """``{module name: layout}`` of every :class:`SparseLinear` in ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return {name: m.layout for name, m in model.named_modules() if isinstance(m, SparseLinear)}


def layout_bytes(t: Tensor) -> int:
    """Bytes a tensor actually occupies: values plus index arrays for CSR / BSR."""
    if not isinstance(t, Tensor):
        raise TypeError(f"t must be a Tensor, got {type(t).__name__}")
    if t.layout == torch.strided:
        return t.numel() * t.element_size()
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        parts = (t.values(), t.col_indices(), t.crow_indices())
        return sum(p.numel() * p.element_size() for p in parts)
    raise ValueError(f"layout_bytes supports strided, sparse_csr and sparse_bsr tensors, got {t.layout}")
