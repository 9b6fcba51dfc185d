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

**The batch decides.** Those crossovers hold for a batch of 256 input rows, where a product is
bound by arithmetic (2 * rows FLOPs per weight entry). At batch 1 (online serving, token-by-token
decoding) it is bound by the *bytes of the weight* (a matrix-vector product does 2 FLOPs per 4
bytes of float32 weight, Williams et al. 2009's roofline), and CSR moves ``8 (1 - s)`` bytes per
entry instead of 4: it beats dense from far lower sparsity. ``"auto"`` therefore decides per
number of input rows (:data:`CROSSOVERS`, :func:`explain_layout`); a :class:`SparseLinear`
built with ``layout="auto"`` and no ``batch`` keeps every layout some batch size needs and picks
one on each call from the rows of its input.

Layers built here are for *inference*: their weights are buffers, not parameters.
Random masks of a given sparsity for timing experiments are in :mod:`sparsekit.synthetic`;
interleaved timing and the crossover of a measured sweep are in :mod:`sparsekit.bench`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _validate
from .masking import copy_model, get_masks

LAYOUTS = ("auto", "dense", "csr", "bsr")
"""Accepted ``layout`` arguments."""

CSR_MIN_SPARSITY = 0.88
"""``"auto"`` considers CSR at or above this fraction of zeros *at batch 256* (the measured
crossover was 85-90 % on the AMD EPYC, about 90 % on the Xeon); other batches: :data:`CROSSOVERS`."""

BSR_MIN_BLOCK_SPARSITY = 0.70
"""``"auto"`` considers BSR at or above this fraction of all-zero blocks *at batch 256* (above the
measured ~62-65 % crossover); other batches: :data:`CROSSOVERS`."""

CROSSOVERS: dict[int, tuple[float, float]] = {
    1: (0.85, 0.75),
    8: (0.45, 0.60),
    64: (0.83, 0.65),
    256: (CSR_MIN_SPARSITY, BSR_MIN_BLOCK_SPARSITY),
}
"""``{input rows: (CSR minimum sparsity, BSR minimum block sparsity)}`` of ``"auto"``.

Measured on this book's shared 2-core AMD EPYC (torch 2.13, MKL, float32, 2 threads for dense,
small sparse products on one thread as :func:`sparse_threads` says; a ``[4096 x 4096]``
weight; ``benchmarks/bench_execute.py``), near the break-even points, so that either choice is
within ~10 % of the faster one there. Batch 1: the one-thread CSR kernel reads memory less
efficiently than dense MKL streams it, so it needs about 85 % zeros although the byte-ratio
bound allows gains from 50 %. Batches 2-16: MKL's dense product of a few rows runs far below the
byte roofline on this CPU (8 rows take 3-6x the time of 1), so CSR wins from 50 % or less.
Batch 256: arithmetic-bound, CSR from about 88 %. BSR of ``8 x 8`` blocks pays at batch 1
only from about 75 % empty blocks, and at batches 2-16 it loses to CSR on the same tiles (MKL's
CSR product of a few rows is the faster kernel there), so its threshold sits above CSR's.
Between the measured batches the thresholds are interpolated linearly in ``log2(rows)``;
outside they are held constant."""

SINGLE_THREAD_WORK = 1 << 23
"""Sparse products with at most this many multiply-adds (stored values x input rows) run on one
thread (:func:`sparse_threads`)."""

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


PLAN_ROWS = 256
"""Rows from which the layout choice no longer changes (the largest batch in :data:`CROSSOVERS`)."""


def crossovers(batch: int) -> tuple[float, float]:
    """``(CSR minimum sparsity, BSR minimum block sparsity)`` of ``"auto"`` for ``batch`` input rows.

    Linear interpolation in ``log2(batch)`` between the measured batches of :data:`CROSSOVERS`,
    constant outside them. ``batch`` is a positive int (``ValueError`` otherwise).
    """
    batch = _validate.positive_int(batch, "batch")
    points = sorted(CROSSOVERS)
    if batch <= points[0]:
        return CROSSOVERS[points[0]]
    if batch >= points[-1]:
        return CROSSOVERS[points[-1]]
    hi = next(p for p in points if p >= batch)
    lo = max(p for p in points if p <= batch)
    if hi == lo:
        return CROSSOVERS[lo]
    t = (math.log2(batch) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
    (c0, b0), (c1, b1) = CROSSOVERS[lo], CROSSOVERS[hi]
    return c0 + t * (c1 - c0), b0 + t * (b1 - b0)


@dataclass(frozen=True)
class WeightStats:
    """What the layout rule needs to know about a weight: its shape, zeros and empty blocks."""

    shape: tuple[int, int]
    zeros: int
    blocksize: tuple[int, int]
    empty_blocks: int | None
    """All-zero ``blocksize`` tiles; ``None`` when the shape is not divisible by ``blocksize``."""

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def blocks(self) -> int:
        return self.numel // (self.blocksize[0] * self.blocksize[1])

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0

    @property
    def block_sparsity(self) -> float | None:
        if self.empty_blocks is None or not self.blocks:
            return None
        return self.empty_blocks / self.blocks


def weight_stats(weight: Tensor, blocksize: Sequence[int] = BSR_BLOCKSIZE) -> WeightStats:
    """Counts of zeros and all-zero ``blocksize`` tiles of a dense 2-D ``weight`` (one pass)."""
    w = _check_weight(weight)
    r, c = check_blocksize(blocksize)
    rows, cols = w.shape
    empty = None
    if rows % r == 0 and cols % c == 0:
        nonzero_blocks = (w != 0).reshape(rows // r, r, cols // c, c).any(dim=3).any(dim=1)
        empty = nonzero_blocks.numel() - int(nonzero_blocks.sum())
    return WeightStats((int(rows), int(cols)), int((w == 0).sum()), (r, c), empty)


@dataclass(frozen=True)
class LayoutChoice:
    """The decision of ``"auto"`` for one weight and one batch size, and why (:func:`explain_layout`)."""

    layout: str
    batch: int
    sparsity: float
    block_sparsity: float | None
    csr_min_sparsity: float
    bsr_min_block_sparsity: float
    costs: dict[str, float]
    """For each eligible sparse layout, its predicted time relative to its break-even; below 1 it beats dense."""
    reason: str


def _decide(st: WeightStats, batch: int, csr_min_sparsity: float | None,
            bsr_min_block_sparsity: float | None, min_numel: int) -> LayoutChoice:
    csr_t, bsr_t = crossovers(batch)
    csr_t = csr_t if csr_min_sparsity is None else csr_min_sparsity
    bsr_t = bsr_t if bsr_min_block_sparsity is None else bsr_min_block_sparsity
    bs = st.block_sparsity
    r, c = st.blocksize

    def choice(layout: str, costs: dict[str, float], reason: str) -> LayoutChoice:
        return LayoutChoice(layout, batch, st.sparsity, bs, csr_t, bsr_t, costs, reason)

    if st.numel < min_numel:
        return choice("dense", {}, f"{st.numel} entries < min_numel {min_numel}: fixed overheads dominate")
    costs: dict[str, float] = {}
    # thresholds are checked on exact counts: round(t * n) zeros counts as sparsity t
    # BSR first: on a tie it wins (one index per block, not per value)
    if bs is None:
        why_bsr = f"shape {st.shape} not divisible by {r}x{c}: no BSR"
    elif st.empty_blocks + 0.5 >= bsr_t * st.blocks:
        costs["bsr"] = (1.0 - bs) / (1.0 - bsr_t) if bsr_t < 1 else 0.0
        why_bsr = f"{bs:.1%} empty {r}x{c} blocks >= BSR threshold {bsr_t:.1%}"
    else:
        why_bsr = f"{bs:.1%} empty {r}x{c} blocks < BSR threshold {bsr_t:.1%}"
    # thresholds are checked on exact counts: round(t * n) zeros counts as sparsity t
    if st.zeros + 0.5 >= csr_t * st.numel:
        costs["csr"] = (1.0 - st.sparsity) / (1.0 - csr_t) if csr_t < 1 else 0.0
        why = [f"{st.sparsity:.1%} zeros >= CSR threshold {csr_t:.1%}", why_bsr]
    else:
        why = [f"{st.sparsity:.1%} zeros < CSR threshold {csr_t:.1%}", why_bsr]
    if not costs:
        return choice("dense", costs, f"batch {batch}: " + "; ".join(why) + " -> dense")
    best = min(costs, key=costs.__getitem__)
    tail = (f" -> {best} (stores {costs[best]:.2f} of what it stores at its break-even"
            + ("" if len(costs) == 1 else ", the least of the eligible layouts") + ")")
    return choice(best, costs, f"batch {batch}: " + "; ".join(why) + tail)


def _check_thresholds(csr_min_sparsity: float | None, bsr_min_block_sparsity: float | None,
                      min_numel: int) -> tuple[float | None, float | None, int]:
    if csr_min_sparsity is not None:
        csr_min_sparsity = _validate.fraction(csr_min_sparsity, "csr_min_sparsity", allow_one=True)
    if bsr_min_block_sparsity is not None:
        bsr_min_block_sparsity = _validate.fraction(bsr_min_block_sparsity, "bsr_min_block_sparsity",
                                                    allow_one=True)
    return csr_min_sparsity, bsr_min_block_sparsity, _validate.integer(min_numel, "min_numel", low=0)


def explain_layout(weight: Tensor, batch: int = PLAN_ROWS, blocksize: Sequence[int] = BSR_BLOCKSIZE, *,
                   csr_min_sparsity: float | None = None, bsr_min_block_sparsity: float | None = None,
                   min_numel: int = AUTO_MIN_NUMEL) -> LayoutChoice:
    """What ``"auto"`` picks for ``weight`` multiplied by ``batch`` input rows, with the numbers and
    the reason (:class:`LayoutChoice`). :func:`choose_layout` returns its ``layout``.

    The rule (a roofline argument calibrated by measurement, module docstring):

    1. fewer than ``min_numel`` entries -> ``"dense"`` (fixed overheads dominate);
    2. the thresholds for this batch come from :func:`crossovers` (measured break-even
       sparsities with a margin), unless ``csr_min_sparsity`` / ``bsr_min_block_sparsity``
       fix them for every batch;
    3. ``"csr"`` is a candidate when at least the CSR threshold of the entries are zero;
       ``"bsr"`` when the shape is divisible by ``blocksize`` and at least the BSR threshold
       of the blocks are all zero;
    4. of the candidates, the one that stores the smallest fraction of what it stores at its
       own threshold wins (a sparse kernel's time grows with what it stores). A 99.5 %
       unstructured weight leaves about 73 % of its ``8 x 8`` blocks empty, but CSR,
       storing 0.5 % of the entries, is far cheaper than BSR storing 27 % of the blocks;
    5. no candidate -> ``"dense"``: below the crossover a sparse kernel is *slower*.
    """
    st = weight_stats(weight, blocksize)
    batch = _validate.positive_int(batch, "batch")
    return _decide(st, batch, *_check_thresholds(csr_min_sparsity, bsr_min_block_sparsity, min_numel))


def choose_layout(weight: Tensor, blocksize: Sequence[int] = BSR_BLOCKSIZE, *, batch: int = PLAN_ROWS,
                  csr_min_sparsity: float | None = None, bsr_min_block_sparsity: float | None = None,
                  min_numel: int = AUTO_MIN_NUMEL) -> str:
    """The layout ``"auto"`` picks for ``weight`` times ``batch`` input rows: ``"bsr"``, ``"csr"`` or ``"dense"``.

    ``batch`` defaults to 256, the regime where CSR needs about 88 % zeros
    (:data:`CSR_MIN_SPARSITY`); at batch 1 it needs far fewer (:data:`CROSSOVERS`). The rule
    and the reason for a decision: :func:`explain_layout`.
    """
    return explain_layout(weight, batch, blocksize, csr_min_sparsity=csr_min_sparsity,
                          bsr_min_block_sparsity=bsr_min_block_sparsity, min_numel=min_numel).layout


def layout_plan(weight: Tensor, blocksize: Sequence[int] = BSR_BLOCKSIZE, *,
                csr_min_sparsity: float | None = None, bsr_min_block_sparsity: float | None = None,
                min_numel: int = AUTO_MIN_NUMEL) -> tuple[str, ...]:
    """The layout ``"auto"`` picks for every number of input rows (:func:`choose_layout`'s rule).

    Entry ``r`` is the choice for ``r`` rows, ``r = 1 .. PLAN_ROWS``; entry 0 (an empty input)
    repeats entry 1, and more rows than ``PLAN_ROWS`` use the last entry (the thresholds are
    constant beyond the largest measured batch). :func:`describe_plan` puts it in words.
    """
    st = weight_stats(weight, blocksize)
    return _plan(st, *_check_thresholds(csr_min_sparsity, bsr_min_block_sparsity, min_numel))


def _plan(st: WeightStats, csr_t: float | None, bsr_t: float | None, min_numel: int) -> tuple[str, ...]:
    by_rows = [_decide(st, rows, csr_t, bsr_t, min_numel).layout for rows in range(1, PLAN_ROWS + 1)]
    return (by_rows[0], *by_rows)


def describe_plan(plan: Sequence[str]) -> str:
    """A plan (:func:`layout_plan`) in words: ``"dense for 1 row, csr for 2-40 rows, dense for 41+ rows"``."""
    parts, start = [], 1
    for rows in range(2, len(plan) + 1):
        if rows == len(plan) or plan[rows] != plan[start]:
            end = rows - 1
            last = rows == len(plan)
            span = f"{start}+" if last else (f"{start}" if start == end else f"{start}-{end}")
            parts.append(f"{plan[start]} for {span} {'row' if span == '1' else 'rows'}")
            start = rows
    return ", ".join(parts)


def to_layout(weight: Tensor, layout: str, blocksize: Sequence[int] = BSR_BLOCKSIZE, *,
              batch: int = PLAN_ROWS) -> Tensor:
    """``weight`` (2-D, dense) stored as ``"dense"``, ``"csr"`` or ``"bsr"`` (``"auto"``:
    :func:`choose_layout` for ``batch`` input rows)."""
    _check_layout(layout)
    w = _check_weight(weight).detach()
    r, c = check_blocksize(blocksize)
    if layout == "auto":
        layout = choose_layout(w, (r, c), batch=batch)
    if layout == "dense":
        return w.clone().contiguous()
    if layout == "bsr" and (w.shape[0] % r or w.shape[1] % c):
        raise ValueError(f"layout 'bsr' needs the weight shape {tuple(w.shape)} divisible by blocksize {(r, c)}")
    with warnings.catch_warnings():  # torch labels its sparse compressed layouts "beta"; we use them knowingly
        warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
        return _int32_indices(w.to_sparse_csr() if layout == "csr" else w.to_sparse_bsr((r, c)))


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
    threads = torch.get_num_threads()
    one = sparse_threads(weight, flat.shape[0]) == 1 and threads > 1
    if one:
        torch.set_num_threads(1)
    try:
        if bias is None:
            yt = torch.sparse.mm(weight, xt)
        else:
            yt = torch.addmm(bias.unsqueeze(1).expand(out_features, xt.shape[1]), weight, xt)
    finally:
        if one:
            torch.set_num_threads(threads)
    return yt.T.contiguous().reshape(*lead, out_features)


def sparse_threads(weight: Tensor, rows: int) -> int | None:
    """``1`` when :func:`sparse_matmul` runs a sparse ``weight`` times ``rows`` rows on one thread,
    else ``None`` (torch's thread count).

    A sparse product of at most :data:`SINGLE_THREAD_WORK` multiply-adds (stored values x rows)
    takes well under a few milliseconds. Split over threads, each call must wake the others;
    on a busy machine that wait can be the whole cost (on this book's shared 2-core EPYC, a
    95 % CSR weight times one row ran at 0.5-0.7x dense on two threads, 2.7-3.0x on one). So
    small products run on one thread, and the layout thresholds (:data:`CROSSOVERS`) are
    measured with this policy. Set ``SINGLE_THREAD_WORK = 0`` to always use every thread.
    """
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a Tensor, got {type(weight).__name__}")
    rows = _validate.integer(rows, "rows", low=0)
    if weight.layout not in (torch.sparse_csr, torch.sparse_bsr):
        return None
    return 1 if weight.values().numel() * rows <= SINGLE_THREAD_WORK else None


_ORDER = ("dense", "csr", "bsr")


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored dense, CSR or BSR (inference only: ``W`` is buffers).

    A sparse ``W`` is kept as its component arrays (``values``, ``col_indices``,
    ``crow_indices``, plain buffers), so ``state_dict``, ``.to(device)`` and
    ``copy.deepcopy`` work as for any module; :attr:`weight` reassembles the sparse
    tensor (no copy). Accepts inputs of any leading shape ``[..., in_features]``; the
    number of input *rows* is the product of the leading dimensions (``batch * seq`` for a
    ``[batch, seq, in]`` input; 1 when decoding one token).

    ``layout="auto"`` with ``batch=None`` (the default) makes the layer **batch-aware**: it
    computes the plan of :func:`layout_plan` (the best layout for every number of rows) and
    stores each layout the plan uses. When the plan is one layout, that is all it stores
    and ``layout`` names it. When it mixes layouts (say CSR for decoding, dense for
    batches of 64 and more), ``layout`` is ``"auto"``, the layer keeps the dense weight
    *and* the sparse one (more memory: that is the price of speed at every batch size; pass
    ``batch`` or a fixed layout to keep one), and each call uses the layout its rows call
    for (:meth:`layout_for`). ``layout="auto"`` with an int ``batch`` stores the one layout
    chosen for that many rows.
    """

    bias: Tensor | None

    def __init__(self, weight: Tensor, bias: Tensor | None = None, layout: str = "auto",
                 blocksize: Sequence[int] = BSR_BLOCKSIZE, *, batch: int | None = None) -> None:
        super().__init__()
        w = _check_weight(weight).detach()
        _check_layout(layout)
        blocksize = check_blocksize(blocksize)
        self.out_features, self.in_features = w.shape
        if layout != "auto" and batch is not None:
            raise ValueError(f"batch only applies to layout='auto', got layout={layout!r} and batch={batch!r}")
        if layout == "auto":
            st = weight_stats(w, blocksize)
            if batch is None:
                plan = _plan(st, None, None, AUTO_MIN_NUMEL)
            else:
                plan = (_decide(st, _validate.positive_int(batch, "batch"), None, None, AUTO_MIN_NUMEL).layout,)
        else:
            plan = (layout,)
        self.plan: tuple[str, ...] = plan
        """The layout for each number of input rows (entry ``r``; rows beyond the end use the last)."""
        self.stored = tuple(k for k in _ORDER if k in plan)
        self.layout = self.stored[0] if len(self.stored) == 1 else "auto"
        self.nonzeros = int((w != 0).sum())
        for name in self.stored:
            stored = to_layout(w, name, blocksize)
            if name == "dense":
                self.register_buffer("dense", stored)
                continue
            prefix = self._prefix(name)
            self.register_buffer(prefix + "values", stored.values())
            self.register_buffer(prefix + "col_indices", stored.col_indices())
            self.register_buffer(prefix + "crow_indices", stored.crow_indices())
        if _check_bias(bias, self.out_features) is not None:
            bias = bias.detach().clone()
        self.register_buffer("bias", bias)

    def _prefix(self, layout: str) -> str:
        """Buffer-name prefix of a sparse layout: none when it is the only sparse one stored."""
        return "bsr_" if layout == "bsr" and "csr" in self.stored else ""

    def layout_for(self, rows: int) -> str:
        """The layout a call with ``rows`` input rows uses (``"dense"``, ``"csr"`` or ``"bsr"``)."""
        rows = _validate.integer(rows, "rows", low=0)
        return self.plan[min(rows, len(self.plan) - 1)]

    def weight_for(self, rows: int) -> Tensor:
        """The weight tensor a call with ``rows`` input rows multiplies by."""
        return self._weight(self.layout_for(rows))

    def _weight(self, layout: str) -> Tensor:
        if layout == "dense":
            return self.dense
        prefix = self._prefix(layout)
        build = torch.sparse_csr_tensor if layout == "csr" else torch.sparse_bsr_tensor
        return build(getattr(self, prefix + "crow_indices"), getattr(self, prefix + "col_indices"),
                     getattr(self, prefix + "values"), size=(self.out_features, self.in_features),
                     check_invariants=False)

    @property
    def weight(self) -> Tensor:
        """The weight in its layout (a strided, ``sparse_csr`` or ``sparse_bsr`` tensor); for a
        batch-aware layer (``layout == "auto"``), the sparse one (:meth:`weight_for` picks by rows)."""
        return self._weight(self.stored[-1])

    def forward(self, x: Tensor) -> Tensor:
        if len(self.stored) == 1:
            return sparse_matmul(self._weight(self.stored[0]), x, self.bias)
        rows = math.prod(x.shape[:-1]) if x.dim() else 0
        return sparse_matmul(self.weight_for(rows), x, self.bias)

    def dense_weight(self) -> Tensor:
        """The weight as a dense tensor (for checks)."""
        return self.dense if "dense" in self.stored else self.weight.to_dense()

    def extra_repr(self) -> str:
        total = self.in_features * self.out_features
        plan = f", plan: {describe_plan(self.plan)}" if self.layout == "auto" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"layout={self.layout!r}, nonzeros={self.nonzeros}/{total}{plan}")


def sparse_linear(linear: nn.Linear, layout: str = "auto", blocksize: Sequence[int] = BSR_BLOCKSIZE, *,
                  batch: int | None = None) -> SparseLinear:
    """A :class:`SparseLinear` computing the same function as ``linear`` (masks applied).

    Args:
        linear: an ``nn.Linear``, masked or not; its *effective* weight is used, so a
            masked layer's zeros become the sparse pattern.
        layout: ``"dense"``, ``"csr"``, ``"bsr"``, or ``"auto"`` (:func:`choose_layout`:
            the fastest measured choice for this weight's sparsity, block structure and
            the number of input rows).
        blocksize: BSR block shape; the weight shape must be divisible by it for ``"bsr"``.
        batch: with ``"auto"``: the number of input rows to choose for, or ``None`` to choose
            on every call from the input (:class:`SparseLinear`).
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    _check_layout(layout)
    check_blocksize(blocksize)
    return SparseLinear(linear.weight.detach(), linear.bias, layout, blocksize, batch=batch)


def to_sparse(model: nn.Module, layout: str = "auto", blocksize: Sequence[int] = BSR_BLOCKSIZE, *,
              masked_only: bool = True, batch: int | None = None) -> nn.Module:
    """A copy of ``model`` with every masked ``nn.Linear`` replaced by :func:`sparse_linear`.

    The original model is left untouched. With ``masked_only=False`` every Linear is
    converted (``"auto"`` still keeps dense weights dense). Conv layers are not converted.
    ``batch``: as in :func:`sparse_linear` (``None``: each layer picks per call).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_layout(layout)
    check_blocksize(blocksize)
    if batch is not None:
        if layout != "auto":
            raise ValueError(f"batch only applies to layout='auto', got layout={layout!r} and batch={batch!r}")
        _validate.positive_int(batch, "batch")
    masked = {"" if name == "weight" else name.removesuffix(".weight") for name in get_masks(model)}
    new = copy_model(model)
    if isinstance(new, nn.Linear):
        return sparse_linear(new, layout, blocksize, batch=batch) if ("" in masked or not masked_only) else new
    targets = [name for name, m in new.named_modules()
               if isinstance(m, nn.Linear) and name and (name in masked or not masked_only)]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = new.get_submodule(parent_name)
        setattr(parent, child, sparse_linear(getattr(parent, child), layout, blocksize, batch=batch))
    return new


def layouts(model: nn.Module, rows: int | None = None) -> dict[str, str]:
    """``{module name: layout}`` of every :class:`SparseLinear` in ``model``.

    ``rows=None``: each layer's ``SparseLinear.layout`` (``"auto"`` for a batch-aware
    layer that mixes layouts); an int: the layout each layer uses for that many input rows.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if rows is not None:
        rows = _validate.integer(rows, "rows", low=0)
    return {name: (m.layout if rows is None else m.layout_for(rows))
            for name, m in model.named_modules() if isinstance(m, SparseLinear)}


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
