"""The *finalize* step: end the training-time machinery and keep what you ship.

``score -> select -> mask -> train -> finalize``. After training, a pruned model still
carries machinery it needed only to learn: scores beside every weight, straight-through
estimators, bool masks applied on every forward pass. Finalizing removes it, in one of
three ways, and this module is where each of them starts:

* **freeze** learned masks into fixed ones — :func:`freeze_masks` (movement pruning's
  scores, Sanh et al. 2020; N:M straight-through masks, Zhou et al. 2021). The model is
  then in the common pipeline state: ``sk.get_masks`` returns the final masks.
* **bake** the zeros into plain parameters — :func:`sparsekit.remove_masks`.
* **shrink** to a new, smaller dense model — :func:`sparsekit.structured.shrink.shrink_channels`,
  :func:`sparsekit.structured.heads.shrink_heads`.
* **compress** to a sparse format a kernel can use — :func:`sparsekit.execute.to_sparse`
  (CSR / BSR) or :func:`sparsekit.nm.compress_24` and :mod:`sparsekit.kernels` (2:4).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn
from torch.nn.utils import parametrize

from .masking import (
    WeightMask,
    apply_masks,
    prunable_modules,
    remove_weight_parametrizations,
    weight_name,
)


@runtime_checkable
class LearnedMask(Protocol):
    """A mask parametrization whose mask changes during training.

    ``current_mask()`` returns the bool mask it applies now (a new tensor). Implemented by
    ``movement.ScoreMask`` and ``nm_training.NMSTE``.
    """

    def current_mask(self) -> Tensor: ...


def learned_masks(model: nn.Module) -> dict[str, Tensor]:
    """``{weight name: the mask applied now}`` for every weight with a learned mask (pure).

    A weight that also holds fixed masks (``apply_masks``) reports the intersection: the
    mask its next forward pass really applies.
    """
    out: dict[str, Tensor] = {}
    for name, module in prunable_modules(model).items():
        if not parametrize.is_parametrized(module, "weight"):
            continue
        plist = module.parametrizations["weight"]
        learned = [p for p in plist if isinstance(p, LearnedMask)]
        if not learned:
            continue
        mask = learned[0].current_mask()
        for p in learned[1:]:
            mask &= p.current_mask()
        for p in plist:
            if isinstance(p, WeightMask) and not isinstance(p, LearnedMask):
                mask &= p.mask
        out[weight_name(name)] = mask
    return out


def freeze_masks(model: nn.Module) -> dict[str, Tensor]:
    """Replace every learned mask by a fixed bool ``WeightMask`` holding what it applies now.

    Scores, straight-through estimators and their buffers leave the model and its
    ``state_dict``; the dense weights stay, masked by :func:`learned_masks` (fixed masks
    the weight already held are kept, intersected). Afterwards ``sk.get_masks``,
    ``sk.remove_masks`` and fine-tuning behave as for any masked model. Returns the masks
    of the weights that were frozen. ``ValueError`` if the model has no learned mask.
    """
    masks = learned_masks(model)
    if not masks:
        raise ValueError(
            f"{type(model).__name__} has no learned mask to freeze (attach movement scores with "
            f"movement.attach_scores or N:M straight-through masks with nm_training.apply_ste first)"
        )
    modules = {weight_name(n): m for n, m in prunable_modules(model).items()}
    for name in masks:
        remove_weight_parametrizations(modules[name], leave_parametrized=False)
    apply_masks(model, masks)
    return masks
