"""Synthetic masks for timing the *finalize* step (score -> select -> mask -> train -> finalize).

How fast a sparse layout runs depends on how many zeros a weight has and where they sit,
not on which method chose them. To time CSR / BSR against dense (chapter 1,
``benchmarks/bench_execute.py``) a weight needs a given sparsity of a given *kind*:

* :func:`unstructured_mask`: zeros scattered uniformly at random, no structure for a
  kernel to exploit (CSR's case; for BSR the worst case);
* :func:`block_mask`: zeros in whole ``r x c`` tiles, the pattern BSR stores without
  waste: every stored block is a dense tile, one index per tile.

Both have *exact* counts, as :func:`sparsekit.select_masks` does, so a sweep compares
like with like. The random positions come from :func:`sparsekit.select.random_mask`
(one random mask in the library).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from . import _validate
from .execute import BSR_BLOCKSIZE, check_blocksize
from .select import random_mask

__all__ = ["unstructured_mask", "block_mask"]


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    if (isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, torch.Size))
            or not all(_validate.is_int(d) for d in shape)):
        raise _validate.ArgumentTypeError(f"shape must be a sequence of non-negative ints, got {shape!r}")
    if any(d < 0 for d in shape):
        raise ValueError(f"shape must be a sequence of non-negative ints, got {shape!r}")
    return tuple(int(d) for d in shape)


def unstructured_mask(shape: Sequence[int], sparsity: float, seed: int = 0) -> Tensor:
    """A uniformly random bool mask of ``shape`` with exactly ``round(sparsity * numel)`` False entries.

    ``sparsity`` in ``[0, 1)``; ``seed`` picks the positions (the same seed gives the same
    mask on every machine: a CPU ``torch.Generator``).
    """
    shape = _check_shape(shape)
    sparsity = _validate.fraction(sparsity, "sparsity")
    return random_mask(shape, round(sparsity * math.prod(shape)), seed=_validate.seed(seed))


def block_mask(shape: Sequence[int], sparsity: float, blocksize: Sequence[int] = BSR_BLOCKSIZE,
               seed: int = 0) -> Tensor:
    """A random bool mask made of whole ``blocksize`` tiles, exactly ``round(sparsity * tiles)`` of them False.

    ``shape`` is ``(rows, cols)``, divisible by ``blocksize`` (``ValueError`` otherwise). The
    tile pattern is :func:`unstructured_mask` of the ``(rows / r, cols / c)`` grid.
    """
    r, c = check_blocksize(blocksize)
    shape = _check_shape(shape)
    if len(shape) != 2:
        raise ValueError(f"shape must be two non-negative ints (rows, cols), got {shape!r}")
    rows, cols = shape
    if rows % r or cols % c:
        raise ValueError(f"shape {tuple(shape)} is not divisible by blocksize {(r, c)}")
    tiles = unstructured_mask((rows // r, cols // c), sparsity, seed)
    return tiles.repeat_interleave(r, 0).repeat_interleave(c, 1)
