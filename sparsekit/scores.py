"""The *score* step: importance criteria, one number per weight, larger = more important.

Every function returns ``{plain weight name: float tensor}`` with the keys and shapes of
:func:`sparsekit.prunable_weights`, and never changes the model (parameters, buffers,
train/eval mode). Movement scores, which need a training loop, live in
:mod:`sparsekit.movement`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .masking import effective_weights


def magnitude(model: nn.Module) -> dict[str, Tensor]:
    """``|w|`` of the effective weights (Han et al. 2015): small weights matter least.

    Already-pruned entries score 0, so they are pruned first again.
    """
    return {name: w.abs().clone() for name, w in effective_weights(model).items()}


def random(model: nn.Module, seed: int) -> dict[str, Tensor]:
    """I.i.d. uniform scores from a private generator seeded with ``seed``.

    The baseline every pruning method must beat (Blalock et al. 2020). The global RNG
    state is left untouched.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    gen = torch.Generator().manual_seed(seed)
    return {
        name: torch.rand(w.shape, generator=gen, dtype=torch.float32).to(w.device)
        for name, w in effective_weights(model).items()
    }
