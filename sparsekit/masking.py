"""Masks as parametrizations: the *mask* step of score -> select -> mask -> train -> finalize.

A pruned weight is stored as the pair (original tensor, boolean mask) and the module
sees ``original * mask`` through :mod:`torch.nn.utils.parametrize`. Because the mask is
applied in the forward pass, a pruned entry is exactly zero after *any* optimizer step
(momentum, weight decay, Adam's moments): the classic bug of zeroing weights once and
watching them grow back cannot happen. The mask is a ``bool`` buffer, so it is saved in
``state_dict`` and moves with ``.to(device)``.

This follows the idea of ``torch.nn.utils.prune`` but uses the newer ``parametrize`` API,
which keeps the plain attribute (``layer.weight``) working for every caller.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
"""Module types whose ``weight`` sparsekit prunes."""


class WeightMask(nn.Module):
    """Parametrization ``w -> w * mask`` with the mask kept as a bool buffer."""

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone().bool())

    def forward(self, weight: Tensor) -> Tensor:
        # ``masked_fill`` (not ``weight * mask``) keeps pruned entries exactly 0 even if
        # the stored original became inf/NaN; its gradient is 0 at pruned entries.
        return weight.masked_fill(~self.mask, 0.0)

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        return f"kept={kept}/{self.mask.numel()}"


def _prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{module name: module}`` for every Linear / Conv1d / Conv2d, in module order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        # parametrize swaps the class for a subclass, so isinstance still holds.
        if isinstance(module, PRUNABLE_TYPES) and getattr(module, "weight", None) is not None:
            found[name] = module
    return found


def _weight_name(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"


def _mask_of(module: nn.Module) -> WeightMask | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations["weight"]:
        if isinstance(p, WeightMask):
            return p
    return None


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The ``weight`` of every Linear / Conv1d / Conv2d, keyed by its plain name.

    Keys are the names ``named_parameters()`` used before any masking (``"0.weight"``),
    in module order. For an already-masked weight the value is the stored original
    parameter (what the optimizer updates), reported under the same plain name.
    """
    weights: dict[str, nn.Parameter] = {}
    for name, module in _prunable_modules(model).items():
        weights[_weight_name(name)] = _stored_weight(module)
    return weights


def _check_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, nn.Module]:
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a mapping name -> bool tensor, got {type(masks).__name__}")
    modules = {_weight_name(n): m for n, m in _prunable_modules(model).items()}
    for key, mask in masks.items():
        if key not in modules:
            allowed = ", ".join(modules) or "(none)"
            raise ValueError(f"masks has unknown weight name {key!r}; allowed names: {allowed}")
        if not isinstance(mask, Tensor):
            raise TypeError(f"masks[{key!r}] must be a Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"masks[{key!r}] must have dtype torch.bool, got {mask.dtype}")
        shape = tuple(_stored_weight(modules[key]).shape)
        if tuple(mask.shape) != shape:
            raise ValueError(f"masks[{key!r}] has shape {tuple(mask.shape)}, the weight has shape {shape}")
    return modules


def _stored_weight(module: nn.Module) -> nn.Parameter:
    """The parameter the optimizer updates: ``original`` when masked, else ``weight``."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations["weight"].original
    return module.weight


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Mask weights in place: afterwards ``weight == 0`` exactly where the mask is False.

    Masking an already-masked weight intersects the masks (``old & new``). The stored
    original is zeroed at pruned entries too, so ``remove_masks`` bakes in exact zeros.
    Unknown names or wrong shapes raise ``ValueError``; non-bool masks ``TypeError``.
    """
    modules = _check_masks(model, masks)
    for key, mask in masks.items():
        module = modules[key]
        mask = mask.to(_stored_weight(module).device)
        existing = _mask_of(module)
        if existing is None:
            parametrize.register_parametrization(module, "weight", WeightMask(mask), unsafe=True)
            existing = _mask_of(module)
            assert existing is not None  # registered just above
        else:
            existing.mask &= mask
        module.parametrizations["weight"].original.masked_fill_(~existing.mask, 0.0)


def get_masks(model: nn.Module) -> dict[str, Tensor]:
    """``{plain weight name: bool mask}`` (copies) for every masked weight."""
    masks: dict[str, Tensor] = {}
    for name, module in _prunable_modules(model).items():
        wm = _mask_of(module)
        if wm is not None:
            masks[_weight_name(name)] = wm.mask.detach().clone()
    return masks


def _detach_injected_class(module: nn.Module) -> None:
    """Give ``module`` a private copy of parametrize's injected class.

    ``copy.deepcopy`` of a parametrized module shares the injected ``ParametrizedLinear``
    class with the original; ``remove_parametrizations`` deletes the ``weight`` property
    from that class, which would break the original. A private copy of the class makes
    removal affect this module only.
    """
    cls = module.__class__
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def remove_masks(model: nn.Module) -> None:
    """Bake the masks in: every masked weight becomes a plain parameter with exact zeros."""
    for module in _prunable_modules(model).values():
        if _mask_of(module) is None:
            continue
        _detach_injected_class(module)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def effective_weights(model: nn.Module) -> dict[str, Tensor]:
    """``{plain name: weight as the forward pass sees it}`` (mask applied), detached."""
    return {
        _weight_name(name): module.weight.detach()
        for name, module in _prunable_modules(model).items()
    }


def sparsity(x: Tensor | nn.Module) -> float:
    """Fraction of exact zeros.

    For a tensor, over its entries; for a module, over the *effective* values of its
    prunable weights (Linear / Conv weights with masks applied; biases and norms are
    not counted). An empty tensor or a module without prunable weights raises ``ValueError``.
    """
    if isinstance(x, Tensor):
        if x.numel() == 0:
            raise ValueError("sparsity of an empty tensor is undefined")
        return float((x == 0).sum()) / x.numel()
    if isinstance(x, nn.Module):
        weights = effective_weights(x)
        if not weights:
            raise ValueError(f"{type(x).__name__} has no Linear/Conv1d/Conv2d weights")
        zeros = sum(int((w == 0).sum()) for w in weights.values())
        total = sum(w.numel() for w in weights.values())
        return zeros / total
    raise TypeError(f"sparsity expects a Tensor or nn.Module, got {type(x).__name__}")


def load_masked_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a state dict saved from a *masked* model into an unmasked (fresh) one.

    A masked model's ``state_dict`` holds ``<m>.parametrizations.weight.original`` and
    ``<m>.parametrizations.weight.0.mask``; a fresh model has only ``<m>.weight``, so a
    plain ``load_state_dict`` fails (or, with ``strict=False``, silently drops the masks).
    This re-creates each mask from the saved buffer first, then loads strictly.
    """
    suffix = ".parametrizations.weight.0.mask"
    masks = {}
    for key, value in state_dict.items():
        if key.endswith(suffix):
            masks[_weight_name(key[: -len(suffix)])] = value.bool()
        elif key == suffix[1:]:
            masks["weight"] = value.bool()
    apply_masks(model, masks)
    model.load_state_dict(state_dict, strict=True)
