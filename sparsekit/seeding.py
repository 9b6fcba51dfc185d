"""Reproducibility: one call seeds every random number generator the book uses, and one
function hands out the experiment seeds, so a whole chapter can be re-run on other seeds.

``SPARSEKIT_SEED_BASE`` (default 0) moves every chapter's seeds at once: ``make robust``
runs the book at bases 100 and 200 to check that no claim rests on one lucky seed.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from . import _validate


def seed_everything(seed: int = 0) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and CUDA) with ``seed``.

    Also sets ``PYTHONHASHSEED`` for subprocesses. Together with seeded data loaders
    (:func:`sparsekit.data.loader`) this makes CPU training runs bit-for-bit repeatable.
    """
    seed = _validate.seed(seed, low=0)
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


SEED_BASE_ENV = "SPARSEKIT_SEED_BASE"


def seed_base() -> int:
    """The first experiment seed: ``$SPARSEKIT_SEED_BASE`` as a non-negative int (default 0)."""
    raw = os.environ.get(SEED_BASE_ENV, "0")
    try:
        base = int(raw)
    except ValueError:
        raise ValueError(f"{SEED_BASE_ENV} must be a non-negative integer, got {raw!r}") from None
    if base < 0:
        raise ValueError(f"{SEED_BASE_ENV} must be a non-negative integer, got {raw!r}")
    return base


def seeds(n: int) -> list[int]:
    """``n`` consecutive experiment seeds starting at ``$SPARSEKIT_SEED_BASE`` (default 0).

    Every seed a chapter trains with comes from here, so that ``SPARSEKIT_SEED_BASE=100``
    re-runs the whole chapter on seeds it has never seen.
    """
    n = _validate.integer(n, "n", low=1, what="a positive int (how many seeds)")
    base = seed_base()
    return list(range(base, base + n))
