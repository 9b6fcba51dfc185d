"""Pruning at initialization: the *score* and *select* steps, once or a few times, before *train*.

SNIP (Lee et al. 2019), GraSP (Wang et al. 2020) and SynFlow (Tanaka et al. 2020) all
follow the book's pipeline with the training step moved to the end::

    fresh model -> score (sparsekit.scores) -> select (global top-k) -> mask -> train

:func:`at_init_masks` runs that for any of the five criteria, one-shot or iteratively
(pure: it returns masks and leaves the model unchanged; ``sk.apply_masks`` applies them).
Iterating matters for SynFlow: Tanaka et al. prune in 100 rounds on an exponential
schedule, re-scoring the masked network each round, so that a layer whose weights are
nearly gone gets *larger* scores (the flow through it concentrates on fewer weights)
and is never emptied. A layer that is emptied disconnects the network (*layer
collapse*): :func:`layer_collapse` detects it and :func:`critical_compression` says at
which compression one-shot global pruning with given scores first causes it.
:func:`sparsekit.select.random_masks_like` is the layer-wise shuffle check of Frankle et al. 2021;
:func:`inverted_masks` (score inversion) and :func:`reinitialized` (same mask, new
initial weights) are its other two sanity checks. :func:`reinitialized` also draws
Kaiming-normal weights (:data:`INITS`), since where one-shot pruning collapses depends on
the initialization.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _validate
from . import scores as _scores
from .masking import get_masks, prunable_weights
from .select import geometric_schedule, select_masks

LossFn = Callable[[Tensor, Tensor], Tensor]

METHODS: tuple[str, ...] = ("random", "magnitude", "snip", "grasp", "synflow")
"""The criteria :func:`at_init_masks` knows."""

DEFAULT_ROUNDS: dict[str, int] = {"synflow": 100}
"""Rounds used when ``rounds`` is not given (Tanaka et al. 2020 use 100); others: 1."""


INITS: tuple[str, ...] = ("default", "kaiming_normal")
"""Initializations :func:`reinitialized` draws: PyTorch's own, or Kaiming-normal."""


def compression_to_sparsity(compression: float) -> float:
    """Sparsity ``1 - 1/c`` for compression ratio ``c = total / kept`` (``c >= 1``).

    Tanaka et al. 2020 plot against ``c`` on a log scale: ``10**3`` keeps 0.1 %.
    """
    compression = _validate.real(compression, "compression", low=1.0, high=math.inf, high_open=True,
                                 what="a finite number >= 1")
    return 1.0 - 1.0 / compression


def score(model: nn.Module, method: str, *, inputs: Tensor | None = None, targets: Tensor | None = None,
          seed: int = 0, loss_fn: LossFn = F.cross_entropy,
          masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The scores of ``method`` for ``model`` (see :mod:`sparsekit.scores`).

    ``"random"`` uses ``seed``; ``"magnitude"`` needs nothing; ``"snip"`` and ``"grasp"``
    need a labelled batch; ``"synflow"`` only uses ``inputs`` for its shape. ``masks``:
    score as if these masks were applied too (the model is not touched; the ``masks=``
    argument every score function takes): entries they prune score 0.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "random":
        return _scores.random(model, seed, masks=masks)
    if method == "magnitude":
        return _scores.magnitude(model, masks=masks)
    if inputs is None:
        raise ValueError(f"method={method!r} needs inputs (a batch, or an example for 'synflow')")
    if method == "synflow":
        return _scores.synflow(model, inputs, masks=masks)
    if targets is None:
        raise ValueError(f"method={method!r} needs targets for its batch of inputs")
    fn = _scores.snip if method == "snip" else _scores.grasp
    return fn(model, inputs, targets, loss_fn, masks=masks)


def at_init_masks(
    model: nn.Module,
    method: str,
    sparsity: float,
    *,
    inputs: Tensor | None = None,
    targets: Tensor | None = None,
    rounds: int | None = None,
    scope: str = "global",
    seed: int = 0,
    loss_fn: LossFn = F.cross_entropy,
) -> dict[str, Tensor]:
    """Masks reaching ``sparsity`` chosen by ``method`` before any training.

    Args:
        model: left unchanged (each round scores it under the masks chosen so far,
            through the ``masks=`` argument of the scores). Masks it already carries
            are kept and count toward ``sparsity``.
        method: one of :data:`METHODS`.
        sparsity: total fraction pruned afterwards, in ``[0, 1)``
            (use :func:`compression_to_sparsity` for a compression ratio).
        inputs, targets: a batch for SNIP / GraSP; SynFlow uses ``inputs`` only for
            its shape.
        rounds: prune in this many rounds on :func:`sparsekit.select.geometric_schedule`, re-scoring
            the masked network each round. Default: 100 for SynFlow (Tanaka et al.
            2020's iterative SynFlow), 1 (one-shot) otherwise.
        scope: ``"global"`` (one ranking over all layers, as in all three papers) or
            ``"layer"``.
        seed: for ``"random"``.

    Returns:
        ``{plain weight name: bool mask}`` for every prunable weight.
    """
    if rounds is None and method in METHODS:
        rounds = DEFAULT_ROUNDS.get(method, 1)
    return pruning_path(model, method, sparsity, rounds=rounds, inputs=inputs, targets=targets,
                        scope=scope, seed=seed, loss_fn=loss_fn)[-1]


def pruning_path(
    model: nn.Module,
    method: str,
    sparsity: float,
    *,
    rounds: int,
    inputs: Tensor | None = None,
    targets: Tensor | None = None,
    scope: str = "global",
    seed: int = 0,
    loss_fn: LossFn = F.cross_entropy,
) -> list[dict[str, Tensor]]:
    """The masks after *every* round of iterative pruning to ``sparsity``.

    Entry ``k`` (0-based) reaches ``geometric_schedule(sparsity, rounds)[k]`` and is
    what ``at_init_masks(model, method, that sparsity, rounds=k + 1)`` returns: the
    schedule shrinks the density by the same factor every round, so stopping after
    ``k + 1`` rounds is the same as aiming lower with fewer rounds. One run therefore
    gives a whole compression sweep, and the round at which a layer first collapses.
    Arguments as in :func:`at_init_masks`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    sparsity = _validate.fraction(sparsity, "sparsity")
    rounds = _validate.positive_int(rounds, "rounds")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")

    current: dict[str, Tensor] | None = get_masks(model) or None
    start = 0.0
    if current is not None:
        total = sum(w.numel() for w in prunable_weights(model).values())
        start = sum(int((~m).sum()) for m in current.values()) / total
    path = []
    for target in geometric_schedule(sparsity, rounds, min(start, sparsity)):
        s = score(model, method, inputs=inputs, targets=targets, seed=seed, loss_fn=loss_fn, masks=current)
        current = select_masks(s, target, scope, current=current)
        path.append(current)
    return path


def remaining_fraction(masks: Mapping[str, Tensor]) -> dict[str, float]:
    """``{name: fraction of entries kept}`` for each mask."""
    _check_mask_dict(masks)
    return {name: float(m.float().mean()) for name, m in masks.items()}


def collapsed_layers(masks: Mapping[str, Tensor]) -> list[str]:
    """Names of the masks that keep nothing: layers that are fully pruned."""
    _check_mask_dict(masks)
    return [name for name, m in masks.items() if not bool(m.any())]


def layer_collapse(masks: Mapping[str, Tensor]) -> bool:
    """Whether some layer is fully pruned, which disconnects input from output.

    In a feed-forward network every path from input to output crosses every layer, so
    an empty layer leaves the output independent of the input: accuracy falls to
    chance (Tanaka et al. 2020, Section 3). Residual networks can route around an
    empty block, but an empty first or last layer still disconnects them.
    """
    return bool(collapsed_layers(masks))


def critical_compression(scores: Mapping[str, Tensor]) -> float:
    """The largest compression ``total / kept`` at which global top-k on ``scores``
    still keeps at least one entry in every layer.

    Keeping the ``k`` largest scores empties layer ``l`` exactly when ``k`` is smaller
    than the global rank ``r_l`` of that layer's best score, so the answer is
    ``total / max_l r_l``. Ties with a layer's best score count against it (it may lose
    them), so this is a safe lower bound when scores tie.
    """
    _check_float_dict(scores)
    flat = torch.cat([s.detach().flatten().double() for s in scores.values()])
    ranks = [int((flat >= s.detach().double().max()).sum()) for s in scores.values()]
    return flat.numel() / max(ranks)


def inverted_masks(scores: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Score inversion (Frankle et al. 2021, Section 5): in every layer keep as many
    entries as ``masks`` keeps, but those with the *lowest* scores.

    The per-layer budget stays the method's; only the choice of weights inside each
    layer is turned upside down. If a method's per-weight ranking carries information,
    inverting it should hurt. Ties go to the lower flat index (a stable sort).
    ``scores`` and ``masks`` need the same keys and shapes. Pure: returns new masks.
    """
    _check_float_dict(scores)
    _check_mask_dict(masks)
    if list(scores) != list(masks):
        raise ValueError(f"scores and masks must have the same keys in the same order, got {list(scores)} "
                         f"and {list(masks)}")
    out = {}
    for name, m in masks.items():
        s = scores[name]
        if s.shape != m.shape:
            raise ValueError(f"scores[{name!r}] has shape {tuple(s.shape)} but masks[{name!r}] {tuple(m.shape)}")
        keep = int(m.sum())
        order = torch.argsort(s.detach().flatten(), stable=True)  # lowest score first
        flat = torch.zeros(m.numel(), dtype=torch.bool, device=m.device)
        flat[order[:keep].to(m.device)] = True
        out[name] = flat.view(m.shape)
    return out


def reinitialized(model: nn.Module, seed: int, init: str = "default") -> nn.Module:
    """A new copy of ``model`` with every parameter drawn afresh (the model is unchanged).

    ``init="default"``: each module's own ``reset_parameters()`` in module order after
    ``torch.manual_seed(seed)`` (for the book's models, the weights a fresh build under
    that seed would have). ``"kaiming_normal"``: the weights of every Linear / Conv
    layer from ``N(0, 2 / fan_in)`` (He et al. 2015, Eq. 10; Tanaka et al.'s code uses
    Kaiming-normal), their biases 0; other modules reset as for ``"default"``.
    This is the reinitialization check of Frankle et al. 2021: keep a mask, train it
    from new initial weights of the same distribution. ``model`` must carry no masks
    (apply them to the copy).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    seed = _validate.seed(seed, low=0)
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if get_masks(model):
        raise ValueError("model carries masks: reinitialize the unmasked model, then apply the masks")
    new = copy.deepcopy(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in new.modules():
            if init == "kaiming_normal" and isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return new


def _check_mask_dict(masks: Mapping[str, Tensor]) -> None:
    if not isinstance(masks, Mapping) or not masks:
        raise ValueError("masks must be a non-empty mapping name -> bool tensor")
    for name, m in masks.items():
        if not isinstance(m, Tensor) or m.dtype != torch.bool:
            got = m.dtype if isinstance(m, Tensor) else type(m).__name__
            raise TypeError(f"masks[{name!r}] must be a bool tensor, got {got}")
        if m.numel() == 0:
            raise ValueError(f"masks[{name!r}] is empty")


def _check_float_dict(scores: Mapping[str, Tensor]) -> None:
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError("scores must be a non-empty mapping name -> float tensor")
    for name, s in scores.items():
        if not isinstance(s, Tensor) or not s.is_floating_point():
            got = s.dtype if isinstance(s, Tensor) else type(s).__name__
            raise TypeError(f"scores[{name!r}] must be a float tensor, got {got}")
        if s.numel() == 0 or torch.isnan(s).any():
            raise ValueError(f"scores[{name!r}] must be non-empty and free of NaN")
