"""One-shot pruning of every Linear of a trained model: magnitude, Wanda or SparseGPT.

The pipeline without the *train* step: calibrate (:mod:`.calibration`) -> score and select
per layer (:mod:`.wanda`, :mod:`.sparsegpt`) -> mask (``sk.apply_masks``). Both papers prune
*sequentially*: a layer is calibrated on the activations of the model whose earlier layers
are already pruned, so each layer also corrects part of the error of those before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import _validate
from ..masking import apply_masks, stored_weight, weight_name
from ..train import eval_mode
from .calibration import CalibrationStats, batch_input, calibrate, linear_layers
from .sparsegpt import sparsegpt
from .wanda import check_nm_pattern, row_magnitude_mask, wanda_mask

METHODS = ("magnitude", "wanda", "sparsegpt")


@torch.no_grad()
def execution_order(model: nn.Module, batch: object, names: Sequence[str]) -> list[str]:
    """``names`` in the order the model first calls them on ``batch`` (never-called ones last,
    in module order)."""
    order: list[str] = []
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda *_args, n=n: order.append(n) if n not in order else None)
               for n in names]
    try:
        with eval_mode(model):
            model(batch_input(batch))
    finally:
        for h in handles:
            h.remove()
    return order + [n for n in names if n not in order]


def _prune_layer(module: nn.Linear, stats: CalibrationStats | None, method: str, sparsity: float,
                 nm: tuple[int, int] | None) -> tuple[Tensor, Tensor | None]:
    """(mask, new weight or None) for one layer."""
    weight = module.weight.detach()  # the effective weight (masked, if it already was)
    if method == "magnitude":
        return row_magnitude_mask(weight, sparsity, nm=nm), None
    assert stats is not None
    if stats.count == 0:
        raise ValueError("the calibration batches never reached this layer (0 tokens): it cannot be scored")
    if method == "wanda":
        return wanda_mask(weight, stats.input_norm, sparsity, nm=nm), None
    new_weight, mask = sparsegpt(weight, stats.gram, sparsity, nm=nm)
    return mask, new_weight


def prune(model: nn.Module, batches: Iterable[object], method: str = "sparsegpt", sparsity: float = 0.5, *,
          nm: tuple[int, int] | None = None, sequential: bool = True, layers: Sequence[str] | None = None,
          progress: bool = False) -> dict[str, Tensor]:
    """Prune every ``nn.Linear`` (or the named ``layers``) of ``model`` in place, in one shot.

    ``method``: ``"magnitude"`` (per output row), ``"wanda"`` (Sun et al. 2024) or
    ``"sparsegpt"`` (Frantar & Alistarh 2023, with its weight update). ``sparsity`` per
    layer, or ``nm=(n, m)``. ``sequential=True`` calibrates each layer on the model whose
    earlier layers (in execution order) are already pruned, as both papers do;
    ``False`` calibrates every layer once on the dense model. Masks are applied with
    ``sk.apply_masks`` (SparseGPT's updated weights are written first); returns them, keyed
    as ``sk.prunable_weights`` (``"blocks.0.fc1.weight"``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    targets = linear_layers(model, layers)
    sparsity = _validate.fraction(sparsity, "sparsity")
    if not isinstance(sequential, bool):
        raise TypeError(f"sequential must be a bool, got {type(sequential).__name__}")
    if nm is not None:  # every layer's shape is checked before any layer is touched
        for name, module in targets.items():
            try:
                check_nm_pattern(nm, module.in_features)
            except ValueError as e:
                raise ValueError(f"layer {name!r}: {e}") from None
    batches = list(batches)
    if not batches:
        raise ValueError("batches is empty: one-shot pruning needs at least one calibration batch")
    names = list(targets)
    calibrated: dict[str, CalibrationStats] = {}
    if method != "magnitude":
        if sequential:
            names = execution_order(model, batches[0], names)
        else:
            calibrated = calibrate(model, batches, layers=names)

    masks: dict[str, Tensor] = {}
    for name in tqdm(names, desc=f"{method} one-shot", disable=not progress, leave=False):
        stats = calibrated.get(name)
        if method != "magnitude" and sequential:
            stats = calibrate(model, batches, layers=[name])[name]
        try:
            mask, new_weight = _prune_layer(targets[name], stats, method, sparsity, nm)
        except ValueError as e:
            raise ValueError(f"layer {name!r}: {e}") from None
        if new_weight is not None:
            with torch.no_grad():
                stored_weight(targets[name]).copy_(new_weight)
        key = weight_name(name)
        apply_masks(model, {key: mask})
        masks[key] = mask
    return masks
