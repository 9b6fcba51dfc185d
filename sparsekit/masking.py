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

import copy
import re
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


def prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{module name: module}`` for every Linear / Conv1d / Conv2d, in module order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        # parametrize swaps the class for a subclass, so isinstance still holds.
        if isinstance(module, PRUNABLE_TYPES) and getattr(module, "weight", None) is not None:
            found[name] = module
    return found


def weight_name(module_name: str) -> str:
    """The plain name of a module's weight, as in ``named_parameters()``: ``"0.weight"``."""
    return f"{module_name}.weight" if module_name else "weight"


def find_parametrization(module: nn.Module, kind: type[nn.Module], tensor_name: str = "weight") -> nn.Module | None:
    """The first parametrization of type ``kind`` (subclasses included) on ``module.<tensor_name>``.

    Parametrizations are found by *type*, never by their position in the list: a weight
    may carry several (an ``nm_training.NMSTE`` and a ``WeightMask``, in either order).
    ``None`` when there is none.
    """
    if not parametrize.is_parametrized(module, tensor_name):
        return None
    return next((p for p in module.parametrizations[tensor_name] if isinstance(p, kind)), None)


def _mask_of(module: nn.Module) -> WeightMask | None:
    return find_parametrization(module, WeightMask)  # type: ignore[return-value]


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The ``weight`` of every Linear / Conv1d / Conv2d, keyed by its plain name.

    Keys are the names ``named_parameters()`` used before any masking (``"0.weight"``),
    in module order. For an already-masked weight the value is the stored original
    parameter (what the optimizer updates), reported under the same plain name.
    A weight sparsekit cannot mask (several stored tensors, as under ``weight_norm``, or
    one computed by a hook) raises ``TypeError`` naming it.
    """
    weights: dict[str, nn.Parameter] = {}
    for name, module in prunable_modules(model).items():
        weights[weight_name(name)] = stored_weight(module, weight_name(name))
    return weights


def _check_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> dict[str, tuple[nn.Module, Tensor]]:
    """Validate every mask before anything changes; ``{name: (module, mask on the weight's device)}``."""
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a mapping name -> bool tensor, got {type(masks).__name__}")
    modules = {weight_name(n): m for n, m in prunable_modules(model).items()}
    checked: dict[str, tuple[nn.Module, Tensor]] = {}
    for key, mask in masks.items():
        if key not in modules:
            allowed = ", ".join(modules) or "(none)"
            raise ValueError(f"masks has unknown weight name {key!r}; allowed names: {allowed}")
        if not isinstance(mask, Tensor):
            raise TypeError(f"masks[{key!r}] must be a Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool:
            raise TypeError(f"masks[{key!r}] must have dtype torch.bool, got {mask.dtype}")
        if mask.layout != torch.strided:
            raise ValueError(f"masks[{key!r}] must be a dense (strided) tensor, got layout {mask.layout}")
        weight = stored_weight(modules[key], key)
        shape = tuple(weight.shape)
        if tuple(mask.shape) != shape:
            raise ValueError(f"masks[{key!r}] has shape {tuple(mask.shape)}, the weight has shape {shape}")
        if mask.device.type == "meta" and weight.device.type != "meta":
            raise ValueError(
                f"masks[{key!r}] is on the meta device (it holds no values); the weight is on {weight.device}"
            )
        try:
            moved = mask.detach().to(weight.device)
        except (RuntimeError, NotImplementedError) as e:  # e.g. a device this build cannot reach
            raise ValueError(f"masks[{key!r}] on {mask.device} cannot be moved to the weight's device "
                             f"{weight.device}: {e}") from None
        checked[key] = (modules[key], moved)
    return checked


def stored_weight(module: nn.Module, name: str = "weight") -> nn.Parameter:
    """The parameter the optimizer updates: ``original`` when parametrized, else ``weight``.

    A weight sparsekit cannot mask is refused with ``TypeError``: one stored as several
    tensors (``torch.nn.utils.parametrizations.weight_norm`` keeps ``original0`` and
    ``original1``), or one computed by a hook rather than stored (the deprecated
    ``torch.nn.utils.weight_norm``, whose ``weight`` is recomputed from ``weight_g`` and
    ``weight_v`` before every forward pass). Masking either would be silently undone.
    """
    if parametrize.is_parametrized(module, "weight"):
        plist = module.parametrizations["weight"]
        if not hasattr(plist, "original"):
            kinds = ", ".join(type(p).__name__ for p in plist)
            stored = ", ".join(n for n, _ in plist.named_parameters(recurse=False)) or "none"
            raise TypeError(
                f"{name} is parametrized by {kinds}, which stores it as several tensors ({stored}); "
                "sparsekit can only mask a weight stored as one tensor: remove that parametrization first "
                "(torch.nn.utils.parametrize.remove_parametrizations)"
            )
        return plist.original
    if not isinstance(module._parameters.get("weight"), nn.Parameter):
        extra = ", ".join(n for n in module._parameters if n.startswith("weight_")) or "none"
        if "weight_orig" in module._parameters and "weight_mask" in module._buffers:
            raise TypeError(
                f"{name} of {type(module).__name__} was pruned with torch.nn.utils.prune (a forward pre-hook "
                "computes weight = weight_orig * weight_mask); sparsekit can only mask a stored weight: make "
                "that pruning permanent first (torch.nn.utils.prune.remove(module, 'weight')), or start from "
                "the unpruned model and hold the mask with sk.apply_masks"
            )
        raise TypeError(
            f"{name} of {type(module).__name__} is not a stored parameter but computed (parameters: {extra}; "
            "e.g. by the deprecated torch.nn.utils.weight_norm); sparsekit can only mask a stored weight: "
            "remove the hook first (torch.nn.utils.remove_weight_norm)"
        )
    return module.weight


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` for functions that return a new model (``shrink_*``, ``to_sparse``).

    Refuses first, with the ``TypeError`` of :func:`sparsekit.prunable_weights`, a model whose weights
    are computed by hooks (``torch.nn.utils.prune``, the deprecated ``weight_norm``): such
    models cannot even be deep-copied (torch raises about non-leaf tensors).
    """
    prunable_weights(model)
    return copy.deepcopy(model)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Mask weights in place: afterwards ``weight == 0`` exactly where the mask is False.

    Masking an already-masked weight intersects the masks (``old & new``). The stored
    original is zeroed at pruned entries too, so ``remove_masks`` bakes in exact zeros.
    Unknown names or wrong shapes raise ``ValueError``; non-bool masks ``TypeError``.
    All-or-nothing: every mask is checked (name, type, shape, device) before any weight is
    touched, so on error the model is unchanged.
    """
    checked = _check_masks(model, masks)
    for module, mask in checked.values():
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
    for name, module in prunable_modules(model).items():
        wm = _mask_of(module)
        if wm is not None:
            masks[weight_name(name)] = wm.mask.detach().clone()
    return masks


def remove_weight_parametrizations(module: nn.Module, *, leave_parametrized: bool) -> None:
    """Remove every parametrization of ``module.weight``, safely for deep copies.

    ``leave_parametrized=True`` keeps the weight as the forward pass saw it (masks baked
    in); ``False`` restores the stored original. ``copy.deepcopy`` of a parametrized module
    shares the injected ``ParametrizedLinear`` class with the original, and
    ``torch.nn.utils.parametrize.remove_parametrizations`` deletes the ``weight`` property
    from that class, which would break the original: the module first gets a private copy
    of the class, so removal affects this module only.
    """
    cls = module.__class__
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=leave_parametrized)


def remove_masks(model: nn.Module) -> None:
    """Bake the masks in: every masked weight becomes a plain parameter with exact zeros."""
    for module in prunable_modules(model).values():
        if _mask_of(module) is None:
            continue
        remove_weight_parametrizations(module, leave_parametrized=True)


def effective_weights(model: nn.Module) -> dict[str, Tensor]:
    """``{plain name: weight as the forward pass sees it}`` (mask applied), detached."""
    return {
        weight_name(name): module.weight.detach()
        for name, module in prunable_modules(model).items()
    }


def sparsity(x: Tensor | nn.Module) -> float:
    """Fraction of exact zeros.

    For a tensor, over its entries; for a module, over the *effective* values of its
    prunable weights (Linear / Conv weights with masks applied; biases and norms are
    not counted). An empty tensor, a module without prunable weights, or one whose
    prunable weights are all empty raises ``ValueError``.
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
        if total == 0:
            shapes = {name: tuple(w.shape) for name, w in weights.items()}
            raise ValueError(f"sparsity of {type(x).__name__} is undefined: its prunable weights have no "
                             f"entries ({shapes})")
        return zeros / total
    raise TypeError(f"sparsity expects a Tensor or nn.Module, got {type(x).__name__}")


def _parametrization_prefix(module_name: str, tensor_name: str = "weight") -> str:
    """State-dict prefix of a parametrized tensor: ``"0.parametrizations.weight."``."""
    return f"{module_name}.parametrizations.{tensor_name}." if module_name else f"parametrizations.{tensor_name}."


def plain_state_keys(model: nn.Module) -> dict[str, str | None]:
    """``{state-dict key: plain name}`` for every entry of ``model.state_dict()``.

    A parametrized tensor's stored original maps to the plain name it had before
    (``"0.parametrizations.weight.original"`` -> ``"0.weight"``); the parametrizations'
    own state (masks, STE counters, movement scores, at any position in the list) maps to
    ``None``. Found from the model's structure, not from key suffixes. Other keys map to
    themselves.
    """
    prefixes: dict[str, str] = {}
    for module_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor_name in module.parametrizations:
                plain = f"{module_name}.{tensor_name}" if module_name else tensor_name
                prefixes[_parametrization_prefix(module_name, tensor_name)] = plain
    out: dict[str, str | None] = {}
    for key in model.state_dict(keep_vars=True):
        pre = next((p for p in prefixes if key.startswith(p)), None)
        if pre is None:
            out[key] = key
        else:
            rest = key[len(pre):]
            out[key] = prefixes[pre] if rest == "original" else key if re.fullmatch(r"original\d+", rest) else None
    return out


def _saved_parametrizations(state_dict: Mapping[str, object], prefix: str) -> dict[int, dict[str, object]]:
    """``{position: {attribute: value}}`` of the parametrizations saved under ``prefix``."""
    found: dict[int, dict[str, object]] = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            match = re.fullmatch(r"(\d+)\.(.+)", key[len(prefix):])
            if match:
                found.setdefault(int(match[1]), {})[match[2]] = value
    return found


def load_masked_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a state dict saved from a *masked* model into an unmasked (fresh) one.

    A masked model's ``state_dict`` holds ``<m>.parametrizations.weight.original`` and
    ``<m>.parametrizations.weight.<i>.mask``; a fresh model has only ``<m>.weight``, so a
    plain ``load_state_dict`` fails (or, with ``strict=False``, silently drops the masks).
    This re-creates each mask from the saved buffer first, then loads strictly.

    Saved parametrizations are matched by position against the model's own: those the
    model already has (e.g. an ``nm_training.NMSTE`` registered with ``sk.nm_training.apply_ste``) are
    loaded into, and each further one must be a mask (a single ``mask`` buffer), which is
    re-created. Anything else cannot be re-created from a state dict and raises
    ``ValueError`` naming the key. All-or-nothing: keys and shapes are checked against
    the model before anything changes, so on error the model is untouched.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping key -> Tensor, got {type(state_dict).__name__}")
    expected = {k: v.shape for k, v in model.state_dict().items() if isinstance(v, Tensor)}
    expected_keys = set(model.state_dict())
    to_create: list[tuple[nn.Module, Tensor]] = []
    for module_name, module in prunable_modules(model).items():
        plain = weight_name(module_name)
        prefix = _parametrization_prefix(module_name)
        saved = _saved_parametrizations(state_dict, prefix)
        have = len(module.parametrizations["weight"]) if parametrize.is_parametrized(module, "weight") else 0
        new = sorted(i for i in saved if i >= have)
        if new != list(range(have, have + len(new))):
            raise ValueError(f"state_dict has parametrizations {sorted(saved)} for {plain} but the model has "
                             f"{have}: positions must follow on without gaps")
        for i in new:
            attrs = saved[i]
            if set(attrs) != {"mask"}:
                raise ValueError(
                    f"state_dict entry {prefix}{i} holds {sorted(attrs)}: a parametrization that {plain} of the "
                    "model does not have and that is not a mask (only masks, a single 'mask' buffer, are "
                    "re-created); register it on the model first (e.g. sk.nm_training.apply_ste for nm_training.NMSTE)"
                )
            mask, key = attrs["mask"], f"{prefix}{i}.mask"
            if not isinstance(mask, Tensor):
                raise TypeError(f"state_dict[{key!r}] must be a Tensor, got {type(mask).__name__}")
            weight = stored_weight(module, plain)
            if mask.shape != weight.shape:
                raise ValueError(f"state_dict[{key!r}] has shape {tuple(mask.shape)}, "
                                 f"{plain} of the model has shape {tuple(weight.shape)}")
            to_create.append((module, mask))
            expected[f"{prefix}{i}.mask"] = weight.shape
            expected_keys.add(f"{prefix}{i}.mask")
        if new and have == 0:  # the plain weight becomes the stored original
            expected[f"{prefix}original"] = expected.pop(plain)
            expected_keys.discard(plain)
            expected_keys.add(f"{prefix}original")
    missing = sorted(expected_keys - set(state_dict))
    unexpected = sorted(set(state_dict) - expected_keys)
    shapes = [f"{k}: {tuple(v.shape)} vs {tuple(expected[k])}" for k, v in state_dict.items()
              if k in expected and isinstance(v, Tensor) and v.shape != expected[k]]
    if missing or unexpected or shapes:
        raise ValueError(
            f"state_dict does not fit the model (nothing was changed): missing keys {missing}, "
            f"unexpected keys {unexpected}, shape mismatches (saved vs model) {shapes}"
        )
    with torch.no_grad():
        for module, mask in to_create:
            weight = stored_weight(module)
            parametrize.register_parametrization(
                module, "weight", WeightMask(mask.to(device=weight.device, dtype=torch.bool)), unsafe=True
            )
    model.load_state_dict(state_dict, strict=True)
