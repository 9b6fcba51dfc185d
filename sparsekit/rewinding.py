"""Snapshots and rewinding: the *train* step's checkpoint, held beside the masks.

Between *mask* and *train* of score -> select -> mask -> train -> finalize, rewinding
resets a masked network to values it had earlier while the masks stay: iterative
magnitude pruning rewinds the surviving weights to their initial values (Frankle &
Carbin 2019, step 4) or to their values after ``k`` training iterations (Frankle et al.
2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis", rewinding to
iteration ``k``). :func:`~sparsekit.snapshot` records a model by *plain* names, so the same snapshot
loads into the model masked or unmasked; :func:`~sparsekit.rewind` writes it back.

The module is named ``rewinding`` (not ``rewind``) so that the module does not shadow the
function ``sk.rewind`` on the package.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .masking import get_masks, plain_state_keys, prunable_weights

__all__ = ["snapshot", "rewind"]


def _plain_state(model: nn.Module, *, keep_vars: bool) -> dict[str, Tensor]:
    """``{plain name: state-dict entry}``, the parametrizations' own state left out."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    plain_of = plain_state_keys(model)
    return {plain_of[key]: value for key, value in model.state_dict(keep_vars=keep_vars).items()
            if plain_of[key] is not None}


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer of ``model`` (detached clones), keyed by *plain* names.

    Masked weights are stored under their plain name (``"0.weight"``, the stored original,
    which is zero where pruned); the parametrizations' own state (masks, N:M STE counters,
    movement scores, whatever their position) is left out
    (:func:`sparsekit.masking.plain_state_keys`). The result can be loaded into the same
    architecture masked or unmasked with :func:`~sparsekit.rewind`.
    """
    return {name: value.detach().clone() for name, value in _plain_state(model, keep_vars=False).items()}


@torch.no_grad()
def rewind(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Reset every parameter and buffer to ``state`` (from :func:`~sparsekit.snapshot`), keeping the masks.

    The rewinding step of IMP (Frankle & Carbin 2019, step 4; to iteration ``k``: Frankle
    et al. 2020): surviving weights get exactly their saved values, pruned weights stay
    exactly zero. ``state`` must have exactly the model's plain names and shapes; it is
    checked in full before anything is written, so on error the model is unchanged.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping name -> Tensor, got {type(state).__name__}")
    targets = _plain_state(model, keep_vars=True)
    missing, extra = sorted(set(targets) - set(state)), sorted(set(state) - set(targets))
    if missing or extra:
        raise ValueError(f"state does not match the model: missing {missing}, unexpected {extra}")
    for name, target in targets.items():
        value = state[name]
        if not isinstance(value, Tensor):
            raise TypeError(f"state[{name!r}] must be a Tensor, got {type(value).__name__}")
        if value.shape != target.shape:
            raise ValueError(f"state[{name!r}] has shape {tuple(value.shape)}, the model has {tuple(target.shape)}")
    for name, target in targets.items():
        target.copy_(state[name])
    weights = prunable_weights(model)
    for name, mask in get_masks(model).items():
        weights[name].masked_fill_(~mask.to(weights[name].device), 0.0)
