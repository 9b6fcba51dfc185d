"""Movement pruning (Sanh, Wolf & Rush 2020): score, mask and train at once, then finalize.

The *score* is learned during the *train* step; the *mask* follows it after every step;
*finalize* (:func:`sparsekit.finalize.freeze_masks`) turns the learned scores into a fixed boolean mask. Prune by
how weights *move* while fine-tuning.

Magnitude pruning keeps the weights that are large; it is a *zeroth-order* criterion and
in transfer learning it mostly reflects what **pre-training** made large. Movement
pruning is *first-order*: it keeps the weights that fine-tuning pushes **away from zero**.
Each pruned matrix ``W`` gets a score matrix ``S`` of the same shape and the layer
computes with ``W' = W ⊙ M(S)``. With the straight-through estimator (Bengio et al.
2013) the gradient of the loss reaches the scores as

    dL/dS_ij = dL/dW'_ij · W_ij                                   (Sanh et al. 2020, Sec. 3)

so plain gradient descent with step ``α`` accumulates the *movement score*

    S_ij  <-  S_ij - α · dL/dW'_ij · W_ij                          (the movement score)

which is large when ``W_ij`` is positive and its gradient negative (it grows) or negative
with a positive gradient (it grows in magnitude): the weight moves away from zero.

Three masks ``M(S)`` and two baselines:

* **hard movement**: keep the top-``v`` % of ``S`` in each matrix (``update_hard``), ``v``
  following the cubic schedule of Zhu & Gupta 2017;
* **global movement (shared threshold)**: keep the top-``v`` % of ``S`` over all matrices
  together (``update_global``), the same schedule; each layer ends at its own sparsity;
* **soft movement** (Sanh et al. 2020, Sec. 4): keep where ``σ(S) > τ`` for a fixed ``τ``
  (``update_soft``) and add ``λ · Σ σ(S)`` to the loss (``soft_penalty``); there is no
  schedule: the final sparsity *emerges* from ``λ`` (with ``λ = 0`` nothing pulls the
  scores down);
* **magnitude** (and **random**) gradual pruning with the common ``sk.select_masks`` /
  ``sk.apply_masks`` pipeline, the baselines.

The scores live in :class:`ScoreMask`, a subclass of the common
:class:`~sparsekit.masking.WeightMask` parametrization, so ``sk.get_masks``,
``sk.sparsity`` and ``sk.remove_masks`` work during training; :func:`sparsekit.finalize.freeze_masks` swaps the
scores for a plain boolean mask at the end. :func:`apply_gradual_pruning` runs the whole
loop for any of the methods, changing the model in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from . import _validate
from . import scores as _scores
from .finalize import freeze_masks
from .masking import (
    WeightMask,
    apply_masks,
    find_parametrization,
    get_masks,
    prunable_modules,
    prunable_weights,
    remove_weight_parametrizations,
    weight_name,
)
from .select import cubic_sparsity, lowest_k, select_masks
from .train import History, train

METHODS = ("magnitude", "random", "movement", "global_movement", "soft_movement")
"""Methods understood by :func:`apply_gradual_pruning`."""

ParamGroups = list[dict]
OptimizerFactory = Callable[[ParamGroups], torch.optim.Optimizer]
"""``param groups -> optimizer`` (e.g. ``torch.optim.Adam`` or ``functools.partial(torch.optim.AdamW,
weight_decay=0.01)``): each group carries its own ``lr``."""


# --- 1. the movement score, by hand ------------------------------------------------


def accumulate_movement(scores: Mapping[str, Tensor] | None, model: nn.Module, alpha: float = 1.0,
                        names: Iterable[str] | None = None) -> dict[str, Tensor]:
    """One step of the movement score: ``S <- S - α · (dL/dW) ⊙ W`` from the gradients now in ``model``.

    Call it after ``loss.backward()`` (before ``optimizer.step()``) on a model whose
    weights are *not* masked, to watch movement scores build up during dense fine-tuning.
    ``scores=None`` starts from zeros. Returns a new dict; ``model`` is not changed.
    """
    alpha = _validate.real(alpha, "alpha", low=0.0, low_open=True)
    weights = prunable_weights(model)
    chosen = _check_names(weights, names)
    if scores is not None and not isinstance(scores, Mapping):
        raise TypeError(f"scores must be a mapping name -> tensor or None, got {type(scores).__name__}")
    if scores is not None:
        missing = [n for n in chosen if n not in scores]
        if missing:
            raise ValueError(f"scores has no entry for {missing}; it must hold every chosen weight "
                             f"({', '.join(chosen)}), or pass scores=None to start from zeros")
    out: dict[str, Tensor] = {}
    for name in chosen:
        w = weights[name]
        if w.grad is None:
            raise ValueError(f"weight {name!r} has no gradient: call loss.backward() first")
        old = torch.zeros_like(w, dtype=torch.float32) if scores is None else scores[name]
        if tuple(old.shape) != tuple(w.shape):
            raise ValueError(f"scores[{name!r}] has shape {tuple(old.shape)}, the weight has {tuple(w.shape)}")
        out[name] = old - alpha * (w.grad * w).detach().float()
    return out


def _check_names(weights: Mapping[str, Tensor], names: Iterable[str] | None) -> list[str]:
    if names is None:
        return list(weights)
    if isinstance(names, str):
        raise TypeError(f"names must be an iterable of weight names, got the string {names!r}")
    chosen = list(names)
    unknown = [n for n in chosen if n not in weights]
    if unknown:
        raise ValueError(f"names has unknown weight names {unknown}; allowed: {', '.join(weights)}")
    if not chosen:
        raise ValueError("names is empty: choose at least one weight to prune")
    return chosen


# --- 2. learned scores with a straight-through mask -------------------------------------


class ScoreMask(WeightMask):
    """Parametrization ``W -> W ⊙ M`` with learnable scores ``S`` and a straight-through gradient.

    ``mask`` (a bool buffer, as in :class:`~sparsekit.masking.WeightMask`) is recomputed from ``scores`` by
    :func:`update_hard` / :func:`update_soft` after every optimizer step. The forward value
    is exactly ``W ⊙ M``; the backward pass treats ``M`` as if it were ``S``'s identity, so
    ``dL/dS = dL/dW' ⊙ W`` reaches *every* score, kept or pruned, and a pruned
    weight can come back when its score rises again. ``dL/dW = dL/dW' ⊙ M`` as usual.
    """

    def __init__(self, shape: Sequence[int], init: float = 0.0) -> None:
        super().__init__(torch.ones(tuple(shape), dtype=torch.bool))
        self.scores = nn.Parameter(torch.full(tuple(shape), float(init)))

    def forward(self, weight: Tensor) -> Tensor:
        ste = self.scores - self.scores.detach()  # value exactly 0, gradient 1 w.r.t. scores
        return weight.masked_fill(~self.mask, 0.0) + weight * ste

    def current_mask(self) -> Tensor:
        """The bool mask this parametrization applies now (a copy): ``W' = W ⊙ M``, ``M`` this."""
        return self.mask.detach().clone()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, learned scores"


def _score_masks(model: nn.Module) -> dict[str, ScoreMask]:
    found: dict[str, ScoreMask] = {}
    for name, module in prunable_modules(model).items():
        sm = find_parametrization(module, ScoreMask)
        if sm is not None:
            found[weight_name(name)] = sm  # type: ignore[assignment]
    return found


def attach_scores(model: nn.Module, names: Iterable[str] | None = None, init: float = 0.0) -> dict[str, nn.Parameter]:
    """Give each chosen weight a :class:`ScoreMask` (scores ``init``, nothing pruned yet).

    ``names`` defaults to every prunable weight (:func:`sparsekit.prunable_weights`);
    the chapter prunes the Linear layers inside the Transformer blocks. Weights that are
    already masked are refused. Returns ``{weight name: score parameter}``; create the
    optimizer *after* this call so that it sees the scores (see :func:`param_groups`).
    """
    init = _validate.real(init, "init")
    modules = {weight_name(n): m for n, m in prunable_modules(model).items()}
    chosen = _check_names(prunable_weights(model), names)
    for name in chosen:
        if parametrize.is_parametrized(modules[name], "weight"):
            raise ValueError(f"weight {name!r} is already masked; attach scores to an unmasked model")
    out: dict[str, nn.Parameter] = {}
    for name in chosen:
        module = modules[name]
        w = module.weight
        sm = ScoreMask(w.shape, init).to(w.device)
        parametrize.register_parametrization(module, "weight", sm, unsafe=True)
        out[name] = sm.scores
    return out


def score_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{weight name: score parameter}`` of every :class:`ScoreMask` in ``model``."""
    return {name: sm.scores for name, sm in _score_masks(model).items()}


def param_groups(model: nn.Module, lr: float, score_lr: float) -> list[dict]:
    """Optimizer groups: the model's own parameters at ``lr``, the scores at ``score_lr``.

    Sanh et al. fine-tune BERT at ``lr = 3e-5`` and learn scores at ``1e-2``: the scores
    must move much faster than the weights to settle within a short fine-tuning run.
    """
    scores = {id(p) for p in score_parameters(model).values()}
    own = [p for p in model.parameters() if id(p) not in scores]
    return [{"params": own, "lr": lr}, {"params": list(score_parameters(model).values()), "lr": score_lr}]


@torch.no_grad()
def update_hard(model: nn.Module, sparsity: float) -> None:
    """Hard movement: in each matrix keep exactly the ``round((1 - sparsity) · n)`` largest scores.

    Ties are broken as in :func:`sparsekit.select_masks` (the lower flat index is pruned first).
    """
    _hard(_require_scores(model), _validate.fraction(sparsity, "sparsity"))


@torch.no_grad()
def _hard(sms: Mapping[str, ScoreMask], sparsity: float) -> None:
    for sm in sms.values():
        flat = sm.scores.detach().flatten()
        k = round(sparsity * flat.numel())
        sm.mask.copy_(~lowest_k(flat, k).view_as(sm.mask))


@torch.no_grad()
def update_global(model: nn.Module, sparsity: float) -> float:
    """Global movement (shared threshold): keep the ``round((1 - sparsity) · N)`` largest scores of all matrices.

    One ranking over every :class:`ScoreMask` together (ties as in :func:`sparsekit.select_masks`
    with ``scope="global"``), so the layers end at different sparsities while the total is
    exact. This is hard movement with one threshold shared by all matrices, *not* soft
    movement: no penalty, and the schedule, not ``λ``, sets the sparsity. Returns that
    threshold as ``σ`` of the largest pruned score (0 when nothing is pruned), comparable
    with soft movement's ``τ``.
    """
    return _global(_require_scores(model), _validate.fraction(sparsity, "sparsity"))


@torch.no_grad()
def _global(sms: Mapping[str, ScoreMask], sparsity: float) -> float:
    masks = select_masks({n: sm.scores.detach() for n, sm in sms.items()}, float(sparsity), scope="global")
    pruned_max = 0.0
    for name, sm in sms.items():
        sm.mask.copy_(masks[name])
        dropped = sm.scores.detach()[~masks[name]]
        if dropped.numel():
            pruned_max = max(pruned_max, float(torch.sigmoid(dropped.max())))
    return pruned_max


@torch.no_grad()
def update_soft(model: nn.Module, *, tau: float) -> float:
    """Soft movement's mask (Sanh et al. 2020, Sec. 4): keep where ``σ(S) > τ``, one ``τ`` for all matrices.

    ``tau`` in (0, 1) is fixed; the L1 penalty ``λ · Σ σ(S)`` (:func:`soft_penalty`) in the
    loss decides how many scores end below it, so each layer ends at its own sparsity.
    Returns ``tau``.
    """
    tau = _validate.real(tau, "tau", low=0.0, high=1.0, low_open=True, high_open=True)
    _soft(_require_scores(model), tau)
    return tau


@torch.no_grad()
def _soft(sms: Mapping[str, ScoreMask], tau: float) -> None:
    for sm in sms.values():
        sm.mask.copy_(torch.sigmoid(sm.scores.detach()) > tau)


def soft_penalty(model: nn.Module) -> Tensor:
    """``R(S) = Σ σ(S)`` over every score of every :class:`ScoreMask` (Sanh et al. 2020, Sec. 4).

    Multiplied by ``λ`` and added to the loss it pulls all scores down (its gradient is
    ``λ σ(S)(1 - σ(S))`` per score), so only the weights whose movement keeps their scores
    up stay above the threshold ``τ``. The paper's equation is this sum; its released code
    averages per matrix instead, which only rescales ``λ``.
    """
    return _penalty(_require_scores(model))


def _penalty(sms: Mapping[str, ScoreMask]) -> Tensor:
    return sum(torch.sigmoid(sm.scores).sum() for sm in sms.values())  # type: ignore[return-value]


def _require_scores(model: nn.Module) -> dict[str, ScoreMask]:
    sms = _score_masks(model)
    if not sms:
        raise ValueError(f"{type(model).__name__} has no ScoreMask: call attach_scores(model) first")
    return sms


# --- 3. one driver for all methods -------------------------------------------------------


@dataclass
class Schedule:
    """Cubic sparsity schedule over ``steps`` iterations (Zhu & Gupta 2017, Eq. 1).

    Dense for the first ``warmup`` fraction, then cubic up to ``final_sparsity`` at the
    ``1 - cooldown`` fraction, then held (Sanh et al. use the same warm-up / cool-down).
    """

    final_sparsity: float
    steps: int
    warmup: float = 0.1
    cooldown: float = 0.3

    def __post_init__(self) -> None:
        _validate.fraction(self.final_sparsity, "final_sparsity")
        _validate.integer(self.steps, "steps", low=2)
        _validate.fraction(self.warmup, "warmup")
        _validate.fraction(self.cooldown, "cooldown")
        if not self.warmup + self.cooldown < 1.0:
            raise ValueError(
                f"need warmup, cooldown >= 0 with warmup + cooldown < 1, got {self.warmup}, {self.cooldown}"
            )
        begin, end = self.begin_step, self.end_step
        if end <= begin:
            raise ValueError(f"steps={self.steps} too few for warmup={self.warmup}, cooldown={self.cooldown}")

    @property
    def begin_step(self) -> int:
        return int(round(self.warmup * self.steps))

    @property
    def end_step(self) -> int:
        return int(round((1.0 - self.cooldown) * self.steps))

    def __call__(self, step: int) -> float:
        return cubic_sparsity(step, self.final_sparsity, begin_step=self.begin_step, end_step=self.end_step)


@dataclass
class PruneResult:
    """What :func:`apply_gradual_pruning` returns: the training history, the final masks and
    the sparsity actually reached over the pruned weights."""

    history: History
    masks: dict[str, Tensor]
    sparsity: float
    method: str


@contextlib.contextmanager
def _all_or_nothing(model: nn.Module) -> Iterator[None]:
    """On any error in the block, put ``model`` back as it was, then re-raise.

    Undone: parametrizations added to a prunable weight (a :class:`ScoreMask` or a new
    ``WeightMask``), every parameter and buffer value (masks included), gradients and
    each module's train/eval mode. Parameter objects, and their order, are the same as before.
    """
    modules = {weight_name(n): m for n, m in prunable_modules(model).items()}
    before = {name: list(m.parametrizations["weight"]) if parametrize.is_parametrized(m, "weight") else None
              for name, m in modules.items()}
    order = {name: list(m._parameters) for name, m in modules.items()}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = {p: None if p.grad is None else p.grad.detach().clone() for p in model.parameters()}
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    except BaseException:
        for name, module in modules.items():
            had = before[name]
            if not parametrize.is_parametrized(module, "weight"):
                continue
            if had is None:
                remove_weight_parametrizations(module, leave_parametrized=False)
                for key in order[name]:  # removal re-registers ``weight`` last: restore the order
                    module._parameters[key] = module._parameters.pop(key)
                continue
            plist = module.parametrizations["weight"]
            for i in reversed(range(len(plist))):
                if not any(plist[i] is p for p in had):
                    del plist[i]
        model.load_state_dict(state)
        for p, g in grads.items():
            p.grad = g
        for m, training in modes:
            m.training = training
        raise


def apply_gradual_pruning(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    method: str,
    final_sparsity: float | None = None,
    steps: int,
    names: Iterable[str] | None = None,
    lr: float = 1e-3,
    score_lr: float = 1e-2,
    optimizer: OptimizerFactory = torch.optim.Adam,
    lam: float = 0.0,
    tau: float | None = None,
    warmup: float = 0.1,
    cooldown: float = 0.3,
    prune_every: int = 1,
    seed: int = 0,
    val_loader: DataLoader | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> PruneResult:
    """Fine-tune ``model`` in place for ``steps`` steps while pruning ``names`` on a cubic schedule.

    Gradual pruning (Zhu & Gupta 2017, Eq. 1, through :class:`Schedule`) during
    fine-tuning, with the criterion ``method``:

      * ``"magnitude"`` / ``"random"``: every ``prune_every`` steps, ``sk.select_masks``
        on ``|W|`` (or fixed random scores from ``seed``) per matrix, intersected with the
        current masks and applied with ``sk.apply_masks``; pruned weights stay pruned;
      * ``"movement"``: :class:`ScoreMask` scores learned at ``score_lr``, per-matrix top-v
        (:func:`update_hard`) after every step (Sanh et al. 2020);
      * ``"global_movement"``: the same scores, top-v over all matrices together
        (:func:`update_global`, one shared threshold);
      * ``"soft_movement"``: the same scores plus ``lam · Σ σ(S)`` (:func:`soft_penalty`) in
        the training loss, mask ``σ(S) > tau`` (:func:`update_soft`) after every step. There
        is no schedule: ``tau`` is required, ``final_sparsity`` must be left out, and
        ``lam`` decides the final sparsity (``lam = 0``: no pressure, almost nothing is pruned).

    ``final_sparsity`` (in [0, 1)) is required by every other method; ``warmup`` and
    ``cooldown`` shape its schedule.

    ``optimizer`` builds the optimizer from parameter groups, each with its own ``lr``:
    one group ``{"params": all parameters, "lr": lr}`` for magnitude / random, and
    :func:`param_groups` (weights at ``lr``, scores at ``score_lr``) for the movement
    methods. The default, ``torch.optim.Adam``, is Adam with those rates.

    The model is changed in place and ends with plain boolean masks (:func:`sparsekit.finalize.freeze_masks`).
    All-or-nothing: arguments and ``train_loader`` (which must not be empty) are checked
    before anything is attached, and on any error during the run the model is put back
    as it was (parametrizations, values, gradients, modes).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    schedule: Schedule | None
    if method == "soft_movement":
        if final_sparsity is not None:
            raise ValueError(f"final_sparsity is not used by method='soft_movement' (lam sets the sparsity), "
                             f"got final_sparsity={final_sparsity!r}: leave it out")
        if tau is None:
            raise ValueError("method='soft_movement' needs tau, the fixed threshold on sigmoid(S), in (0, 1)")
        _validate.integer(steps, "steps", low=1)
        schedule = None
    else:
        if final_sparsity is None:
            raise ValueError(f"method={method!r} needs final_sparsity in [0, 1)")
        schedule = Schedule(final_sparsity, steps, warmup, cooldown)
    prune_every = _validate.positive_int(prune_every, "prune_every")
    lam = _validate.real(lam, "lam", low=0.0)
    if tau is not None and method != "soft_movement":
        raise ValueError(f"tau is only used by method='soft_movement', got method={method!r}")
    if lam and method != "soft_movement":
        raise ValueError(f"lam is only used by method='soft_movement', got method={method!r}")
    if tau is not None:
        tau = _validate.real(tau, "tau", low=0.0, high=1.0, low_open=True, high_open=True)
    if not callable(optimizer):
        raise TypeError(f"optimizer must be a callable param groups -> torch.optim.Optimizer "
                        f"(e.g. torch.optim.Adam), got {type(optimizer).__name__}")
    if len(train_loader) == 0:
        raise ValueError("train_loader is empty: fine-tuning needs at least one batch")
    chosen = _check_names(prunable_weights(model), names)
    desc = desc or method
    with _all_or_nothing(model):
        history, masks = _gradual(model, train_loader, method=method, schedule=schedule, steps=steps,
                                  chosen=chosen, lr=lr,
                                  score_lr=score_lr, optimizer=optimizer, lam=lam, tau=tau, prune_every=prune_every,
                                  seed=seed, val_loader=val_loader, progress=progress, desc=desc)
    pruned = sum(int((~m).sum()) for m in masks.values())
    total = sum(prunable_weights(model)[n].numel() for n in chosen)
    return PruneResult(history, masks, pruned / total, method)


def _build_optimizer(factory: OptimizerFactory, groups: ParamGroups) -> torch.optim.Optimizer:
    opt = factory(groups)
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"optimizer must return a torch.optim.Optimizer, got {type(opt).__name__}")
    return opt


def _gradual(model: nn.Module, train_loader: DataLoader, *, method: str, schedule: Schedule | None, steps: int,
             chosen: list[str],
             lr: float, score_lr: float, optimizer: OptimizerFactory, lam: float, tau: float | None,
             prune_every: int, seed: int, val_loader: DataLoader | None, progress: bool, desc: str
             ) -> tuple[History, dict[str, Tensor]]:
    """The body of :func:`apply_gradual_pruning`, on checked arguments: ``(history, final masks)``."""
    loss_fn: Callable[..., Tensor] = F.cross_entropy
    hook: Callable[[int, nn.Module], None]
    if method in ("magnitude", "random"):
        assert schedule is not None
        fixed = _scores.random(model, seed) if method == "random" else None
        opt = _build_optimizer(optimizer, [{"params": list(model.parameters()), "lr": lr}])

        def hook(step: int, m: nn.Module) -> None:
            if step % prune_every and step != steps:
                return
            s = schedule(step)
            if s <= 0.0:
                return
            current = {k: v for k, v in get_masks(m).items() if k in chosen}
            score = fixed if fixed is not None else _scores.magnitude(m)
            apply_masks(m, select_masks({n: score[n] for n in chosen}, s, scope="layer", current=current or None))
    else:
        attach_scores(model, chosen)
        opt = _build_optimizer(optimizer, param_groups(model, lr, score_lr))
        sms = _score_masks(model)  # looked up once: module traversal is slow per step
        if method == "movement":
            assert schedule is not None

            def hook(step: int, m: nn.Module) -> None:
                _hard(sms, schedule(step))
        elif method == "global_movement":
            assert schedule is not None

            def hook(step: int, m: nn.Module) -> None:
                _global(sms, schedule(step))
        else:
            assert tau is not None
            fixed_tau = tau

            def hook(step: int, m: nn.Module) -> None:
                _soft(sms, fixed_tau)

            if lam:
                def loss_fn(logits: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
                    ce = F.cross_entropy(logits, y, reduction=reduction)
                    # the penalty belongs to the training objective, not to evaluation sums
                    return ce + lam * _penalty(sms) if reduction == "mean" else ce

    history = train(model, train_loader, steps=steps, optimizer=opt, loss_fn=loss_fn,
                    val_loader=val_loader, eval_every=steps, step_hook=hook, progress=progress, desc=desc)
    masks = freeze_masks(model) if method not in ("magnitude", "random") else get_masks(model)
    return history, {n: masks[n] for n in chosen if n in masks}
