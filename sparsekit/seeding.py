"""Reproducibility: one call seeds every random number generator the book uses."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int = 0) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and CUDA) with ``seed``.

    Also sets ``PYTHONHASHSEED`` for subprocesses. Together with seeded data loaders
    (:func:`sparsekit.data.loader`) this makes CPU training runs bit-for-bit repeatable.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
