"""Iterative magnitude pruning (IMP) with rewinding, and its controls.

The whole pipeline, repeated: score (``|W_T|``) -> select (:func:`imp_masks`) -> mask ->
rewind -> train, round after round.

The lottery ticket hypothesis (Frankle & Carbin 2019): a randomly initialised dense
network contains a sparse subnetwork (a *winning ticket*) that, trained in isolation from
the *same* initial values, matches the dense network's accuracy in at most as many
iterations. IMP finds it:

1. initialise ``W_0`` (and remember the *rewind point*: ``W_0``, or ``W_k`` after ``k``
   training iterations, Frankle et al. 2020);
2. train to ``W_T``;
3. prune ``rate`` of the *remaining* weights with the smallest ``|W_T|``
   (per layer, or globally; Frankle & Carbin prune the output layer at half the rate);
4. rewind the surviving weights to the rewind point, keep the mask, go to 2.

After ``n`` rounds a fraction ``(1 - rate) ** n`` of the weights remains
(:func:`sparsekit.imp_sparsity`). The controls ask what the ticket owes to its
*initial values* (:func:`random_reinit`: same mask, fresh initialisation) and to its
*structure* (:func:`random_mask`: same per-layer sparsity, random positions, same
initial values). Snapshots and rewinding are core (:mod:`sparsekit.rewinding`); linear
mode connectivity, which explains when rewinding to ``k > 0`` is needed, has its own
module (:mod:`sparsekit.connectivity`).

Main entry point::

    result = sk.lottery.imp(lambda: sk.models.MLP(), splits, rounds=10, rate=0.2, steps=1120,
                            optimizer_fn=sk.lottery.recipe_optimizer(sk.recipes.RECIPES["mlp"]))
    result.remaining, result.best_test_acc, result.early_stop_step

Every run is seeded: the model comes from ``model_fn()`` right after
``sk.seed_everything(seed)``, and each training run draws its batches from a loader seeded
with ``data_seed``, so the same call gives bit-identical results on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from . import _validate
from . import data as _data
from . import scores as _scores
from .masking import apply_masks, get_masks, prunable_weights
from .masking import sparsity as _sparsity
from .recipes import Recipe
from .rewinding import rewind, snapshot
from .seeding import seed_everything
from .select import imp_sparsity, random_masks_like, select_masks
from .train import History, evaluate, make_optimizer, train

ModelFn = Callable[[], nn.Module]
OptimizerFn = Callable[[nn.Module], torch.optim.Optimizer]

_REINIT_SEED_OFFSET = 7919  # the random-reinit control draws its init from seed + this
_MASK_SEED_OFFSET = 104729  # the random-mask control draws its positions from seed + this


# --- the pruning step ----------------------------------------------------------------


def output_layer(model: nn.Module) -> str:
    """Plain name of the last prunable weight in module order (the classifier of our models)."""
    names = list(prunable_weights(model))
    if not names:
        raise ValueError(f"{type(model).__name__} has no Linear/Conv1d/Conv2d weights")
    return names[-1]


def imp_masks(
    model: nn.Module,
    rate: float,
    *,
    scope: str = "layer",
    layer_rates: Mapping[str, float] | None = None,
) -> dict[str, Tensor]:
    """Masks that prune ``rate`` of the *remaining* weights with the smallest ``|w|``.

    One IMP pruning step (Frankle & Carbin 2019, step 3). The model's current masks are
    kept (pruned entries stay pruned) and the model is not changed.

    * ``scope="layer"``: each tensor with ``r`` remaining weights loses exactly
      ``round(rate * r)`` more.
    * ``scope="global"``: one magnitude ranking over all tensors together; the group loses
      exactly ``round(rate * r_total)``.
    * ``layer_rates``: per-tensor rates that override ``rate``; those tensors are pruned on
      their own (e.g. ``{output_layer(model): rate / 2}``, as Frankle & Carbin do).

    Raises ``ValueError`` when a step would remove every remaining weight of a tensor
    (or of the global group): an empty layer disconnects the network.
    """
    rate = _validate.fraction(rate, "rate")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    weights = prunable_weights(model)
    layer_rates = dict(layer_rates or {})
    for name, r in layer_rates.items():
        if name not in weights:
            raise ValueError(f"layer_rates has unknown weight name {name!r}; allowed: {', '.join(weights)}")
        layer_rates[name] = _validate.fraction(r, f"layer_rates[{name!r}]")
    current = get_masks(model)
    scores = _scores.magnitude(model)
    full = {n: current.get(n, torch.ones_like(w, dtype=torch.bool)) for n, w in weights.items()}

    def prune_group(names: list[str], r: float) -> dict[str, Tensor]:
        total = sum(full[n].numel() for n in names)
        remaining = sum(int(full[n].sum()) for n in names)
        removed = round(r * remaining)
        if removed >= remaining:
            raise ValueError(
                f"pruning {r:g} of the {remaining} remaining weights of {', '.join(names)} would "
                "remove all of them (layer collapse); use a smaller rate or fewer rounds"
            )
        target = (total - remaining) + removed
        return select_masks({n: scores[n] for n in names}, target / total, "global",
                            current={n: full[n] for n in names})

    masks: dict[str, Tensor] = {}
    own = [n for n in weights if n in layer_rates or scope == "layer"]
    for name in own:
        masks.update(prune_group([name], layer_rates.get(name, rate)))
    shared = [n for n in weights if n not in own]
    if shared:
        masks.update(prune_group(shared, rate))
    return {n: masks[n] for n in weights}


# --- training runs -------------------------------------------------------------------


@dataclass
class Round:
    """One training run of IMP (or of a control) and what it reached."""

    round: int                         # 0 = dense
    masks: dict[str, Tensor]           # {} for the dense run
    sparsity: float                    # fraction of prunable weights that are zero
    layer_sparsity: dict[str, float]
    test_acc: float                    # at the end of training
    early_stop_step: int               # iteration (counted from init) of minimum validation loss
    early_stop_test_acc: float         # test accuracy at that iteration
    history: History                   # validation curve (steps counted from the run's start)
    test_curve: list[float]            # test accuracy at each of history.steps
    state: dict[str, Tensor] = field(repr=False)  # trained weights (snapshot)
    step_offset: int = 0               # iterations before this run started (k for a run rewound to W_k)

    @property
    def remaining(self) -> float:
        """Fraction of prunable weights that are nonzero."""
        return 1.0 - self.sparsity

    @property
    def best_step(self) -> int:
        """Iteration (counted from init) of the highest validation accuracy, the first if tied.

        The book's early-stopping rule (:mod:`sparsekit.recipes`, ``monitor="val_acc"``): on
        MNIST-1D the validation *loss* bottoms out long before the accuracy stops climbing.
        """
        acc = self.history.val_acc
        return self.step_offset + self.history.steps[max(range(len(acc)), key=acc.__getitem__)]

    @property
    def best_test_acc(self) -> float:
        """Test accuracy at :attr:`best_step` (checkpoint chosen on the validation split only)."""
        acc = self.history.val_acc
        return self.test_curve[max(range(len(acc)), key=acc.__getitem__)]


@dataclass
class IMPResult:
    """Everything :func:`imp` did, plus what the controls need to repeat it exactly."""

    rounds: list[Round]
    rewind_state: dict[str, Tensor] = field(repr=False)  # W_0 or W_k
    model_fn: ModelFn = field(repr=False)
    data: _data.Splits = field(repr=False)
    rate: float = 0.2
    scope: str = "layer"
    output_rate: float | None = None
    rewind_step: int = 0
    steps: int = 300
    seed: int = 0
    data_seed: int = 0
    batch_size: int = 128
    eval_every: int = 25
    optimizer_fn: OptimizerFn | None = field(default=None, repr=False)

    # Per-round views, named as the Round fields they gather: ``result.test_acc[r]`` is
    # ``result.rounds[r].test_acc``. Properties, like ``Round.remaining``: one form for both.

    @property
    def remaining(self) -> list[float]:
        """Fraction of weights remaining after each round (``Round.remaining``)."""
        return [r.remaining for r in self.rounds]

    @property
    def test_acc(self) -> list[float]:
        """Test accuracy at the end of training, per round (``Round.test_acc``)."""
        return [r.test_acc for r in self.rounds]

    @property
    def early_stop_test_acc(self) -> list[float]:
        """Test accuracy at the early-stopping iteration, per round (``Round.early_stop_test_acc``)."""
        return [r.early_stop_test_acc for r in self.rounds]

    @property
    def early_stop_step(self) -> list[int]:
        """Early-stopping iteration (minimum validation loss), per round (``Round.early_stop_step``)."""
        return [r.early_stop_step for r in self.rounds]

    @property
    def best_test_acc(self) -> list[float]:
        """Test accuracy at the highest validation accuracy, per round (``Round.best_test_acc``)."""
        return [r.best_test_acc for r in self.rounds]

    @property
    def best_step(self) -> list[int]:
        """Iteration of the highest validation accuracy, per round (``Round.best_step``)."""
        return [r.best_step for r in self.rounds]


def default_optimizer(model: nn.Module, lr: float = 3e-3) -> torch.optim.Optimizer:
    """Adam with ``lr = 3e-3``, fused where torch supports it (fewer kernel launches per step)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr)


def recipe_optimizer(recipe: Recipe) -> OptimizerFn:
    """``model -> optimizer`` with a :class:`sparsekit.recipes.Recipe`'s optimizer, lr and weight decay.

    The learning rate stays constant: IMP trains every round for a fixed number of iterations,
    so the recipe's plateau drop (``lr_drops``) and early stop do not apply.

    Plain Adam without weight decay is built fused where torch supports it (as
    :func:`default_optimizer`): the same update, fewer kernel launches per step.
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a sparsekit.recipes.Recipe, got {type(recipe).__name__}")

    def build(model: nn.Module) -> torch.optim.Optimizer:
        if recipe.optimizer == "adam" and recipe.weight_decay == 0.0:
            return default_optimizer(model, lr=recipe.lr)
        return make_optimizer(model, recipe.optimizer, recipe.lr, recipe.weight_decay)

    return build


def fresh_model(model_fn: ModelFn, seed: int) -> nn.Module:
    """``model_fn()`` called right after ``sk.seed_everything(seed)``: the start of every run.

    Used by :func:`imp`, its controls and :func:`sparsekit.connectivity.instability`, so
    that one ``(model_fn, seed)`` always gives the same initial weights.
    """
    _check_model_fn(model_fn)
    seed_everything(_validate.seed(seed, low=0))
    model = model_fn()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_fn must return an nn.Module, got {type(model).__name__}")
    return model


def _run(
    model: nn.Module,
    data: _data.Splits,
    *,
    steps: int,
    data_seed: int,
    batch_size: int,
    eval_every: int,
    optimizer_fn: OptimizerFn | None,
    round_index: int,
    step_offset: int = 0,
    save_at: int | None = None,
    progress: bool = True,
    desc: str = "train",
) -> tuple[Round, dict[str, Tensor] | None]:
    """Train ``model`` in place and summarise it as a :class:`Round` (+ snapshot at ``save_at``)."""
    train_loader = _data.loader(data.x_train, data.y_train, batch_size, shuffle=True, seed=data_seed)
    test_loader = _data.loader(data.x_test, data.y_test, 1024)
    val_loader = _data.loader(data.x_val, data.y_val, 1024)
    optimizer = (optimizer_fn or default_optimizer)(model)
    test_curve: list[float] = []
    saved: dict[str, dict[str, Tensor]] = {}
    if save_at == 0:
        saved["state"] = snapshot(model)

    def hook(step: int, m: nn.Module) -> None:
        if save_at is not None and step == save_at:
            saved["state"] = snapshot(m)
        if step % eval_every == 0 or step == steps:
            test_curve.append(evaluate(m, test_loader)[1])

    history = train(model, train_loader, steps=steps, optimizer=optimizer, val_loader=val_loader,
                    eval_every=eval_every, step_hook=hook, progress=progress, desc=desc)
    best = history.steps.index(history.early_stop_step)
    masks = get_masks(model)
    weights = prunable_weights(model)
    layer_sparsity = {n: 1.0 - int(masks[n].sum()) / masks[n].numel() if n in masks else 0.0 for n in weights}
    result = Round(
        round=round_index,
        masks=masks,
        sparsity=_sparsity(model),
        layer_sparsity=layer_sparsity,
        test_acc=test_curve[-1],
        early_stop_step=step_offset + history.early_stop_step,
        early_stop_test_acc=test_curve[best],
        history=history,
        test_curve=test_curve,
        state=snapshot(model),
        step_offset=step_offset,
    )
    return result, saved.get("state")


def _check_model_fn(model_fn: object) -> None:
    if isinstance(model_fn, nn.Module) or not callable(model_fn):
        raise TypeError(
            f"model_fn must be a factory (a callable returning a fresh nn.Module), got {type(model_fn).__name__}"
        )


def check_splits(data: object, *, validation: bool = True) -> _data.Splits:
    """``data`` if it is a :class:`sparsekit.data.Splits` (with a non-empty validation split
    when ``validation``, which early stopping needs); else ``TypeError`` / ``ValueError``."""
    if not isinstance(data, _data.Splits):
        raise TypeError(f"data must be a sparsekit.data.Splits, got {type(data).__name__}")
    if validation and len(data.y_val) == 0:
        raise ValueError("data has no validation split (early stopping needs one): use val_size > 0")
    return data


def imp(
    model_fn: ModelFn,
    data: _data.Splits,
    *,
    rounds: int,
    rate: float = 0.2,
    steps: int = 300,
    scope: str = "layer",
    output_rate: float | None = None,
    rewind_step: int = 0,
    seed: int = 0,
    data_seed: int | None = None,
    optimizer_fn: OptimizerFn | None = None,
    batch_size: int = 128,
    eval_every: int = 25,
    progress: bool = True,
) -> IMPResult:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

    Round 0 trains the dense network for ``steps`` iterations from ``W_0``, saving
    ``W_k`` (``k = rewind_step``). Each of the ``rounds`` further rounds prunes ``rate`` of
    the remaining weights by magnitude (:func:`imp_masks`), rewinds the survivors to
    ``W_k`` and trains ``steps - k`` iterations, so every run has the same total budget.

    Args:
        model_fn: builds a fresh model; called right after ``seed_everything(seed)``.
        data: a :class:`sparsekit.data.Splits` with a validation split (for early stopping).
        rounds: pruning rounds; ``(1 - rate) ** rounds`` of the weights remain at the end.
        rate: fraction of the remaining weights pruned per round (0.2 in the paper).
        scope: ``"layer"`` (each tensor loses ``rate`` of its remaining weights) or
            ``"global"`` (one ranking over all tensors).
        output_rate: rate for the output layer (last prunable weight), pruned on its own;
            ``None`` treats it like the others. Frankle & Carbin use ``rate / 2``.
        rewind_step: ``k``; 0 rewinds to initialisation.
        data_seed: seed of the batch order of every run (default: ``seed``).
        optimizer_fn: ``model -> optimizer`` (default Adam, lr 3e-3; a recipe's:
            :func:`recipe_optimizer`), built fresh every run. Rewinding therefore resets the
            optimizer's state (Adam's moment estimates) along with the weights. At ``k = 0``
            that *is* the state at ``W_0`` (Adam starts empty); at ``k > 0`` it is what the
            authors' code does (open_lth builds a new optimizer at the rewind step and only
            fast-forwards the learning-rate schedule).
        eval_every: iterations between evaluations of validation loss and test accuracy.
    """
    _check_model_fn(model_fn)
    data = check_splits(data)
    rounds = _validate.integer(rounds, "rounds", low=0)
    rate = _validate.fraction(rate, "rate")
    if rate == 0.0:
        raise ValueError("rate must be in (0, 1), got 0.0")
    steps = _validate.integer(steps, "steps", low=1)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if output_rate is not None:
        output_rate = _validate.fraction(output_rate, "output_rate")
    rewind_step = _validate.integer(rewind_step, "rewind_step", low=0)
    if rewind_step >= steps:
        raise ValueError(f"rewind_step must be < steps={steps}, got {rewind_step}")
    seed = _validate.integer(seed, "seed", low=0)
    data_seed = seed if data_seed is None else _validate.integer(data_seed, "data_seed", low=0)
    eval_every = _validate.integer(eval_every, "eval_every", low=1)
    batch_size = _validate.integer(batch_size, "batch_size", low=1)
    common = dict(data_seed=data_seed, batch_size=batch_size, eval_every=eval_every,
                  optimizer_fn=optimizer_fn, progress=progress)

    model = fresh_model(model_fn, seed)
    dense, rewind_state = _run(model, data, steps=steps, round_index=0, save_at=rewind_step,
                               desc="IMP round 0 (dense)", **common)
    assert rewind_state is not None  # saved at rewind_step < steps
    result = IMPResult(
        rounds=[dense], rewind_state=rewind_state, model_fn=model_fn, data=data, rate=rate,
        scope=scope, output_rate=output_rate, rewind_step=rewind_step, steps=steps, seed=seed,
        data_seed=data_seed, batch_size=batch_size, eval_every=eval_every, optimizer_fn=optimizer_fn,
    )
    layer_rates = {output_layer(model): output_rate} if output_rate is not None else None
    for r in range(1, rounds + 1):
        masks = imp_masks(model, rate, scope=scope, layer_rates=layer_rates)  # trained weights
        apply_masks(model, masks)
        rewind(model, rewind_state)
        run, _ = _run(model, data, steps=steps - rewind_step, round_index=r, step_offset=rewind_step,
                      desc=f"IMP round {r}", **common)
        result.rounds.append(run)
    return result


def retrain(result: IMPResult, masks: Mapping[str, Tensor], *, init: str = "rewind",
            round_index: int = 0, progress: bool = True, desc: str = "retrain") -> Round:
    """Train a subnetwork ``masks`` under exactly the budget and data order of ``result``.

    ``init="rewind"`` starts from the result's rewind point (``W_k``) and trains
    ``steps - k`` iterations; ``init="reinit"`` starts from a *fresh* initialisation
    (``model_fn()`` under seed ``seed + 7919``) and trains ``steps - k`` iterations as well.
    """
    if not isinstance(result, IMPResult):
        raise TypeError(f"result must be an IMPResult, got {type(result).__name__}")
    if init not in ("rewind", "reinit"):
        raise ValueError(f"init must be 'rewind' or 'reinit', got {init!r}")
    seed = result.seed + (_REINIT_SEED_OFFSET if init == "reinit" else 0)
    model = fresh_model(result.model_fn, seed)
    if init == "rewind":
        rewind(model, result.rewind_state)
    apply_masks(model, masks)
    run, _ = _run(model, result.data, steps=result.steps - result.rewind_step, round_index=round_index,
                  step_offset=result.rewind_step, data_seed=result.data_seed, batch_size=result.batch_size,
                  eval_every=result.eval_every, optimizer_fn=result.optimizer_fn, progress=progress, desc=desc)
    return run


def _control_rounds(result: IMPResult, rounds: Sequence[int] | None) -> list[Round]:
    """The pruned rounds of ``result`` that a control repeats: all of them, or ``rounds``."""
    if not isinstance(result, IMPResult):
        raise TypeError(f"result must be an IMPResult, got {type(result).__name__}")
    last = len(result.rounds) - 1
    if rounds is None:
        return result.rounds[1:]
    if isinstance(rounds, (str, bytes)) or not isinstance(rounds, Sequence):
        raise TypeError(f"rounds must be a sequence of round numbers, got {type(rounds).__name__}")
    return [result.rounds[_validate.integer(r, "rounds[i]", low=1, high=last)] for r in rounds]


def random_reinit(result: IMPResult, *, rounds: Sequence[int] | None = None, progress: bool = True) -> list[Round]:
    """Control 1 (Frankle & Carbin 2019, Sec. 2): each round's ticket mask, fresh random init.

    Returns one :class:`Round` per pruned round of ``result`` (rounds 1, 2, ...), or per
    round listed in ``rounds`` (each in ``1 .. len(result.rounds) - 1``), in that order.
    """
    return [retrain(result, r.masks, init="reinit", round_index=r.round, progress=progress,
                    desc=f"random reinit {r.round}") for r in _control_rounds(result, rounds)]


def random_mask(result: IMPResult, *, rounds: Sequence[int] | None = None, progress: bool = True) -> list[Round]:
    """Control 2: a random mask with each round's per-layer sparsity, from the ticket's init.

    Returns one :class:`Round` per pruned round of ``result`` (rounds 1, 2, ...), or per
    round listed in ``rounds``, in that order. A round's random mask does not depend on
    which other rounds are controlled (its seed is ``seed + 104729 + round``).
    """
    out = []
    for r in _control_rounds(result, rounds):
        masks = random_masks_like(r.masks, result.seed + _MASK_SEED_OFFSET + r.round)
        out.append(retrain(result, masks, init="rewind", round_index=r.round, progress=progress,
                           desc=f"random mask {r.round}"))
    return out


def one_shot(result: IMPResult, rounds: int, *, progress: bool = True) -> Round:
    """Prune the *dense* trained network in one step to the sparsity IMP reaches after ``rounds``.

    Uses the same scope and output-layer rate, compounded: ``1 - (1 - rate) ** rounds`` (:func:`sparsekit.imp_sparsity`)
    (Frankle & Carbin 2019, Sec. 1: one-shot vs iterative). Rewinds and retrains like IMP.
    """
    if not isinstance(result, IMPResult):
        raise TypeError(f"result must be an IMPResult, got {type(result).__name__}")
    rounds = _validate.integer(rounds, "rounds", low=1)
    model = fresh_model(result.model_fn, result.seed)
    rewind(model, result.rounds[0].state)
    rate = imp_sparsity(result.rate, rounds)
    layer_rates = None
    if result.output_rate is not None:
        layer_rates = {output_layer(model): imp_sparsity(result.output_rate, rounds)}
    masks = imp_masks(model, rate, scope=result.scope, layer_rates=layer_rates)
    return retrain(result, masks, init="rewind", round_index=rounds, progress=progress,
                   desc=f"one-shot {rounds}")
