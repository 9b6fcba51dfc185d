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
from ..data import batch_input
from ..masking import apply_masks, stored_weight, weight_name
from ..train import eval_mode
from .calibration import CalibrationStats, calibrate, linear_layers
from .sparsegpt import sparsegpt
from .wanda import check_nm_pattern, row_magnitude_mask, wanda_mask

METHODS = ("magnitude", "wanda", "sparsegpt")


@torch.no_grad()
def execution_order(model: nn.Module, batch: object, names: Sequence[str]) -> list[str]:
    """Those of ``names`` that the model calls on ``batch``, in the order it first calls them."""
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
    return order


def _stacked_inputs(batches: list[object]) -> Tensor | None:
    """All calibration inputs as one batch, or ``None`` when their shapes differ beyond dim 0."""
    inputs = [batch_input(b) for b in batches]
    if any(x.dim() == 0 or x.shape[1:] != inputs[0].shape[1:] for x in inputs):
        return None
    return torch.cat(inputs)


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
    as ``sk.prunable_weights`` (``"blocks.0.fc1.weight"``). When the batches have one shape,
    sequential calibration takes a single forward pass over all of them at once (memory: the
    activations of every calibration token together); otherwise one pass per layer.
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
    if method == "magnitude":
        masks = {}
        for name in names:
            masks[weight_name(name)] = _apply(model, name, targets[name], None, method, sparsity, nm)
        return masks
    reached = execution_order(model, batches[0], names)
    missing = [n for n in names if n not in reached]
    if missing:
        raise ValueError(f"the calibration batches never reach layers {missing}: they cannot be scored "
                         "(pass layers= to prune only the layers the model uses)")
    bar = tqdm(total=len(names), desc=f"{method} one-shot", disable=not progress, leave=False)
    try:
        if not sequential:
            stats = calibrate(model, batches, layers=names)
            return {weight_name(n): _apply(model, n, targets[n], stats[n], method, sparsity, nm, bar) for n in names}
        stacked = _stacked_inputs(batches)
        if stacked is not None:
            return _sequential_in_one_pass(model, stacked, reached, targets, method, sparsity, nm, bar)
        masks = {}
        for name in reached:  # inputs of different shapes: one calibration pass per layer
            stats = calibrate(model, batches, layers=[name])[name]
            masks[weight_name(name)] = _apply(model, name, targets[name], stats, method, sparsity, nm, bar)
        return {weight_name(n): masks[weight_name(n)] for n in names}
    finally:
        bar.close()


def _apply(model: nn.Module, name: str, module: nn.Linear, stats: CalibrationStats | None, method: str,
           sparsity: float, nm: tuple[int, int] | None, bar: tqdm | None = None) -> Tensor:
    """Prune one layer in place (SparseGPT's weights written, then ``sk.apply_masks``); its mask."""
    try:
        mask, new_weight = _prune_layer(module, stats, method, sparsity, nm)
    except ValueError as e:
        raise ValueError(f"layer {name!r}: {e}") from None
    with torch.no_grad():
        if new_weight is not None:
            stored_weight(module).copy_(new_weight)
        apply_masks(model, {weight_name(name): mask})
    if bar is not None:
        bar.update(1)
    return mask


@torch.no_grad()
def _sequential_in_one_pass(model: nn.Module, stacked: Tensor, order: list[str], targets: dict[str, nn.Linear],
                            method: str, sparsity: float, nm: tuple[int, int] | None, bar: tqdm) -> dict[str, Tensor]:
    """Sequential calibration in ONE forward pass over all calibration inputs together.

    A forward pre-hook on each layer takes the inputs it receives — computed by the layers
    before it, which are already pruned — builds ``H`` from them, prunes the layer, and lets
    it run with its pruned weight, so the layers after it see pruned activations in turn.
    A layer called twice in one forward pass is pruned on its first call.
    """
    masks: dict[str, Tensor] = {}

    def pre_hook(name: str):
        def prune_before_running(module: nn.Linear, inputs: tuple[Tensor, ...]) -> None:
            if weight_name(name) in masks:
                return
            x = inputs[0].detach().reshape(-1, module.in_features).to(torch.float64)
            # Wanda reads only diag(H): build the diagonal matrix in O(tokens * in), not O(tokens * in^2)
            gram = torch.diag(x.square().sum(0)) if method == "wanda" else x.T @ x
            stats = CalibrationStats(gram, x.shape[0])
            masks[weight_name(name)] = _apply(model, name, module, stats, method, sparsity, nm, bar)
        return prune_before_running

    handles = [targets[n].register_forward_pre_hook(pre_hook(n)) for n in order]
    try:
        with eval_mode(model):
            model(stacked)
    finally:
        for h in handles:
            h.remove()
    return {weight_name(n): masks[weight_name(n)] for n in targets if weight_name(n) in masks}
