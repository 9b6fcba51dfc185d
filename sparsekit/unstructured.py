"""Unstructured magnitude pruning: score -> select -> mask -> train, one-shot, iterative or gradual.

Han et al. 2015 ("Learning both weights and connections") prune the weights of
smallest magnitude, ``|w| < t``, then retrain the survivors with the pruned ones held
at zero, and repeat. Zhu & Gupta 2017 ("To prune, or not to prune") grow the sparsity
gradually during training along the cubic schedule of their Eq. (1)
(:func:`sparsekit.cubic_sparsity`), pruning every few steps.

Everything here runs through the core pipeline: ``scores.magnitude`` (score) ->
``select_masks`` (select) -> ``apply_masks`` (mask) -> ``train.train`` (train with the
mask held). Masks intersect, so pruning an already-pruned model only ever adds zeros.
The ``apply_*`` functions and :class:`GradualPruning` change the model in place; the
schedules are the library's own (:func:`sparsekit.select.geometric_schedule` for
iterative pruning, :func:`sparsekit.cubic_sparsity` for gradual pruning).

Han et al. set the threshold per layer as "a quality parameter multiplied by the standard
deviation of a layer's weights" (Section 4): :func:`std_scaled_scores` (score
``|w| / sigma_layer``) and :func:`han_masks` (select ``|w| > q * sigma_layer``). Ranking the
std-scaled scores globally is the same criterion with ``q`` chosen to reach a target sparsity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn
from torch.utils.data import DataLoader

from . import _validate
from . import scores as _scores
from .masking import apply_masks, copy_model, effective_weights, get_masks, prunable_weights
from .select import cubic_sparsity, geometric_schedule, select_masks
from .train import History, accuracy, train

DEFAULT_MIN_KEEP = 0.01
"""Global pruning keeps at least this fraction (1 %) of every layer's weights by default."""


def apply_magnitude_pruning(model: nn.Module, sparsity: float, scope: str = "global", *,
                            scores: Mapping[str, Tensor] | None = None,
                            min_keep: float = DEFAULT_MIN_KEEP) -> dict[str, Tensor]:
    """Prune ``model`` in place to ``sparsity`` by ``scores`` (default ``|w|``); return its masks.

    Han et al. 2015: remove the weights of smallest magnitude. ``scope="layer"`` prunes
    the same fraction of every layer; ``scope="global"`` ranks all weights together
    (one threshold ``t`` for the whole model), which prunes layers with many small
    weights harder. Alone, global pruning can empty a layer and disconnect the network
    (layer collapse); ``min_keep`` guards against it: every layer keeps at least
    ``ceil(min_keep * numel)`` of its largest-scoring weights (default 1 %; ``0``
    disables the guard; ignored for ``scope="layer"``). So a global sparsity above
    ``1 - min_keep`` cannot be reached and raises ``ValueError``.

    Existing masks are respected and count toward ``sparsity`` (it can only grow).
    Pass ``scores=sk.scores.random(model, seed)`` for the random-pruning baseline.
    """
    _validate.fraction(sparsity, "sparsity")
    if scores is None:
        scores = _scores.magnitude(model)
    current = get_masks(model)
    masks = select_masks(scores, sparsity, scope, current or None,
                         min_keep=min_keep if scope == "global" else 0.0)
    apply_masks(model, masks)
    return masks


def std_scaled_scores(model: nn.Module) -> dict[str, Tensor]:
    """``|w| / sigma_layer``: magnitude in units of the layer's weight standard deviation.

    Han et al. 2015 (Section 4) prune, in every layer, the weights with
    ``|w| < q * sigma_layer`` for one quality parameter ``q``: on these scores that is one
    *global* threshold ``q``. So ``apply_magnitude_pruning(model, s, "global",
    scores=std_scaled_scores(model))`` is Han et al.'s criterion with ``q`` set to reach
    sparsity ``s`` (:func:`han_masks` takes ``q`` itself). ``sigma_layer`` is the population
    standard deviation of the layer's *kept* weights (all of them in a dense model); pruned
    entries score 0. A layer whose kept weights are all equal (``sigma = 0``) raises
    ``ValueError``: the criterion is undefined there.
    """
    masks = get_masks(model)
    weights = effective_weights(model)
    out: dict[str, Tensor] = {}
    for name, w in _scores.magnitude(model).items():
        kept = weights[name][masks[name]] if name in masks else weights[name].reshape(-1)
        sigma = float(kept.std(correction=0)) if kept.numel() else 0.0
        if not sigma > 0:
            raise ValueError(f"layer {name!r} has weight standard deviation {sigma!r} over its "
                             f"{kept.numel()} kept weights: Han et al.'s threshold q * sigma is undefined")
        out[name] = w / sigma
    return out


def han_masks(model: nn.Module, quality: float) -> dict[str, Tensor]:
    """Han et al. 2015's per-layer threshold: keep ``|w| > quality * sigma_layer``.

    Pure (the model is not changed): returns ``{weight name: bool mask}`` for every prunable
    weight, intersected with the model's current masks, ready for ``sk.apply_masks``.
    ``quality`` is the paper's quality parameter, a real number >= 0 (``0`` keeps every
    nonzero weight); ``sigma_layer`` as in :func:`std_scaled_scores`. Unlike a target
    sparsity, ``quality`` sets the sparsity of each layer by its own weight distribution.
    """
    q = _validate.real(quality, "quality", low=0.0)
    masks = get_masks(model)
    out = {}
    for name, score in std_scaled_scores(model).items():
        keep = score > q
        out[name] = keep & masks[name] if name in masks else keep
    return out


def fine_tune(model: nn.Module, train_loader: DataLoader, *, epochs: int | None = None,
              steps: int | None = None, lr: float = 1e-3, **train_kwargs: object) -> History:
    """Retrain a pruned model with its masks held (Han et al. 2015, the "retrain" step).

    The masks are parametrizations, so any optimizer keeps pruned weights exactly 0.
    A model without masks raises ``ValueError``: fine-tuning weights that were zeroed
    by hand (no mask) lets them grow back.
    """
    before = get_masks(model)
    if not before:
        raise ValueError("model has no masks: prune it (apply_magnitude_pruning or apply_masks) before fine_tune, "
                         "otherwise zeroed weights regrow")
    history = train(model, train_loader, epochs=epochs, steps=steps, lr=lr, **train_kwargs)  # type: ignore[arg-type]
    after = get_masks(model)
    if any(not after[name].equal(mask) for name, mask in before.items()):
        raise RuntimeError("masks changed during fine_tune")  # cannot happen with parametrizations
    return history


def apply_iterative_pruning(model: nn.Module, train_loader: DataLoader, final_sparsity: float, *, rounds: int,
                    epochs_per_round: int, lr: float = 1e-3, scope: str = "global",
                    min_keep: float = DEFAULT_MIN_KEEP, progress: bool = True,
                    **train_kwargs: object) -> list[float]:
    """Han et al. 2015's iterative pruning: ``rounds`` times prune, then fine-tune.

    Round ``r`` prunes to ``1 - (1 - final_sparsity) ** (r / rounds)`` (the same fraction
    of the remaining weights each round: :func:`sparsekit.select.geometric_schedule`), by
    magnitude, then fine-tunes for ``epochs_per_round`` epochs. The model is changed in
    place. Returns the sparsity after each round.
    """
    schedule = geometric_schedule(final_sparsity, rounds)
    epochs_per_round = _validate.positive_int(epochs_per_round, "epochs_per_round")
    for r, s in enumerate(schedule, start=1):
        apply_magnitude_pruning(model, s, scope, min_keep=min_keep)
        fine_tune(model, train_loader, epochs=epochs_per_round, lr=lr, progress=progress,
                  desc=f"round {r}/{rounds}", **train_kwargs)
    return schedule


class GradualPruning:
    """A ``step_hook`` for :func:`sparsekit.train.train`: Zhu & Gupta 2017's gradual pruning.

    Every ``every`` steps from ``begin_step`` to ``end_step`` (and at ``end_step``) the
    model is pruned in place, by magnitude, to ``s_t`` of Eq. (1)
    (:func:`sparsekit.cubic_sparsity`). Weights pruned earlier stay pruned (masks intersect). ``self.schedule`` records
    ``(step, sparsity)`` of every pruning event.
    """

    def __init__(self, final_sparsity: float, *, begin_step: int, end_step: int, every: int = 10,
                 initial_sparsity: float = 0.0, scope: str = "global",
                 min_keep: float = DEFAULT_MIN_KEEP) -> None:
        cubic_sparsity(begin_step, final_sparsity, begin_step=begin_step, end_step=end_step,
                       initial_sparsity=initial_sparsity)  # validates the schedule arguments
        every = _validate.positive_int(every, "every")
        if scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
        self.final_sparsity, self.initial_sparsity = final_sparsity, initial_sparsity
        self.begin_step, self.end_step, self.every = begin_step, end_step, every
        self.scope, self.min_keep = scope, min_keep
        self.schedule: list[tuple[int, float]] = []

    def sparsity_at(self, step: int) -> float:
        """``s_t`` of Eq. (1) at ``step`` (:func:`sparsekit.cubic_sparsity`)."""
        return cubic_sparsity(step, self.final_sparsity, begin_step=self.begin_step,
                              end_step=self.end_step, initial_sparsity=self.initial_sparsity)

    def __call__(self, step: int, model: nn.Module) -> None:
        if step < self.begin_step or step > self.end_step:
            return
        if (step - self.begin_step) % self.every and step != self.end_step:
            return
        s = self.sparsity_at(step)
        apply_magnitude_pruning(model, s, self.scope, min_keep=self.min_keep)
        self.schedule.append((step, s))


def sensitivity_scan(model: nn.Module, x: Tensor, y: Tensor, sparsities: Sequence[float],
                     names: Sequence[str] | None = None) -> dict[str, list[float]]:
    """Accuracy on ``(x, y)`` when *only* one layer is magnitude-pruned to each sparsity.

    Returns ``{layer name: [accuracy at each sparsity]}`` for every prunable weight (or
    ``names``). The model is not changed: each point prunes a copy. Layers whose
    accuracy stays flat tolerate pruning; a steep drop marks a sensitive layer (Han et
    al. 2015, Fig. 6).
    """
    weights = prunable_weights(model)
    names = list(weights) if names is None else list(names)
    unknown = [n for n in names if n not in weights]
    if unknown:
        raise ValueError(f"names has unknown weight names {unknown}; allowed: {list(weights)}")
    grid = [_validate.fraction(s, "sparsity") for s in sparsities]
    out: dict[str, list[float]] = {}
    for name in names:
        accs = []
        for s in grid:
            pruned = copy_model(model)
            masks = get_masks(pruned)
            current = {name: masks[name]} if name in masks else None
            score = {name: _scores.magnitude(pruned)[name]}
            apply_masks(pruned, select_masks(score, s, "layer", current))
            accs.append(accuracy(pruned, x, y))
        out[name] = accs
    return out
