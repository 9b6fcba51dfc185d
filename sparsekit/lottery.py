"""Iterative magnitude pruning (IMP) with rewinding, its controls, and linear mode connectivity.

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
initial values). :func:`instability` measures linear mode connectivity: train two copies
from the same rewind point on different data orders and find the error barrier on the
straight line between them (Frankle et al. 2020, Definition 1).

Main entry point::

    result = sk.lottery.imp(lambda: sk.models.MLP(), splits, rounds=10, rate=0.2, steps=300)
    result.remaining(), result.test_acc()

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
from .masking import apply_masks, get_masks, plain_state_keys, prunable_weights
from .masking import sparsity as _sparsity
from .seeding import seed_everything
from .select import random_masks_like, select_masks
from .train import History, evaluate, train

ModelFn = Callable[[], nn.Module]
OptimizerFn = Callable[[nn.Module], torch.optim.Optimizer]

_REINIT_SEED_OFFSET = 7919  # the random-reinit control draws its init from seed + this
_MASK_SEED_OFFSET = 104729  # the random-mask control draws its positions from seed + this


# --- snapshots and rewinding ---------------------------------------------------------


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Every parameter and buffer of ``model`` (detached clones), keyed by *plain* names.

    Masked weights are stored under their plain name (``"0.weight"``, the stored original,
    which is zero where pruned); the parametrizations' own state (masks, N:M STE counters,
    movement scores, whatever their position) is left out
    (:func:`sparsekit.masking.plain_state_keys`). The result can be loaded into
    the same architecture masked or unmasked with :func:`rewind`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    out: dict[str, Tensor] = {}
    plain_of = plain_state_keys(model)
    for key, value in model.state_dict().items():
        plain = plain_of[key]
        if plain is not None:
            out[plain] = value.detach().clone()
    return out


@torch.no_grad()
def rewind(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Reset every parameter and buffer to ``state`` (from :func:`snapshot`), keeping the masks.

    This is the rewinding step of IMP (Frankle & Carbin 2019, step 4; to iteration ``k``:
    Frankle et al. 2020): surviving weights get exactly their saved values, pruned weights
    stay exactly zero. ``state`` must have exactly the model's plain names and shapes.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping name -> Tensor, got {type(state).__name__}")
    targets = {}
    plain_of = plain_state_keys(model)
    for key, value in model.state_dict(keep_vars=True).items():
        plain = plain_of[key]
        if plain is not None:
            targets[plain] = value
    missing, extra = sorted(set(targets) - set(state)), sorted(set(state) - set(targets))
    if missing or extra:
        raise ValueError(f"state does not match the model: missing {missing}, unexpected {extra}")
    for name, target in targets.items():
        value = state[name]
        if not isinstance(value, Tensor):
            raise TypeError(f"state[{name!r}] must be a Tensor, got {type(value).__name__}")
        if value.shape != target.shape:
            raise ValueError(f"state[{name!r}] has shape {tuple(value.shape)}, the model has {tuple(target.shape)}")
        target.copy_(value)
    masks = get_masks(model)
    weights = prunable_weights(model)
    for name, mask in masks.items():
        weights[name].masked_fill_(~mask.to(weights[name].device), 0.0)


# --- the pruning step ----------------------------------------------------------------


def _check_rate(rate: object, name: str) -> float:
    return _validate.fraction(rate, name)


def output_layer(model: nn.Module) -> str:
    """Plain name of the last prunable weight in module order (the classifier of our models)."""
    names = list(prunable_weights(model))
    if not names:
        raise ValueError(f"{type(model).__name__} has no Linear/Conv1d/Conv2d weights")
    return names[-1]


def prune_masks(
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
    rate = _check_rate(rate, "rate")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    weights = prunable_weights(model)
    layer_rates = dict(layer_rates or {})
    for name, r in layer_rates.items():
        if name not in weights:
            raise ValueError(f"layer_rates has unknown weight name {name!r}; allowed: {', '.join(weights)}")
        layer_rates[name] = _check_rate(r, f"layer_rates[{name!r}]")
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

    @property
    def remaining(self) -> float:
        """Fraction of prunable weights that are nonzero."""
        return 1.0 - self.sparsity


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

    def remaining(self) -> list[float]:
        """Fraction of weights remaining after each round."""
        return [r.remaining for r in self.rounds]

    def test_acc(self, at: str = "end") -> list[float]:
        """Test accuracy per round, at the ``"end"`` of training or at ``"early_stop"``."""
        if at == "end":
            return [r.test_acc for r in self.rounds]
        if at == "early_stop":
            return [r.early_stop_test_acc for r in self.rounds]
        raise ValueError(f"at must be 'end' or 'early_stop', got {at!r}")

    def early_stop_steps(self) -> list[int]:
        """Early-stopping iteration (minimum validation loss) per round."""
        return [r.early_stop_step for r in self.rounds]


def default_optimizer(model: nn.Module, lr: float = 3e-3) -> torch.optim.Optimizer:
    """Adam with ``lr = 3e-3``, fused where torch supports it (fewer kernel launches per step)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr)


def _new_model(model_fn: ModelFn, seed: int) -> nn.Module:
    seed_everything(seed)
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
    )
    return result, saved.get("state")


def _check_int(value: object, name: str, low: int) -> int:
    return _validate.integer(value, name, low=low)


def _check_model_fn(model_fn: object) -> None:
    if isinstance(model_fn, nn.Module) or not callable(model_fn):
        raise TypeError(
            f"model_fn must be a factory (a callable returning a fresh nn.Module), got {type(model_fn).__name__}"
        )


def _check_data(data: object) -> _data.Splits:
    if not isinstance(data, _data.Splits):
        raise TypeError(f"data must be a sparsekit.data.Splits, got {type(data).__name__}")
    if len(data.y_val) == 0:
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
    the remaining weights by magnitude (:func:`prune_masks`), rewinds the survivors to
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
        optimizer_fn: ``model -> optimizer`` (default Adam, lr 3e-3), built fresh every run.
        eval_every: iterations between evaluations of validation loss and test accuracy.
    """
    _check_model_fn(model_fn)
    data = _check_data(data)
    rounds = _check_int(rounds, "rounds", 0)
    rate = _check_rate(rate, "rate")
    if rate == 0.0:
        raise ValueError("rate must be in (0, 1), got 0.0")
    steps = _check_int(steps, "steps", 1)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if output_rate is not None:
        output_rate = _check_rate(output_rate, "output_rate")
    rewind_step = _check_int(rewind_step, "rewind_step", 0)
    if rewind_step >= steps:
        raise ValueError(f"rewind_step must be < steps={steps}, got {rewind_step}")
    seed = _check_int(seed, "seed", 0)
    data_seed = seed if data_seed is None else _check_int(data_seed, "data_seed", 0)
    eval_every = _check_int(eval_every, "eval_every", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    common = dict(data_seed=data_seed, batch_size=batch_size, eval_every=eval_every,
                  optimizer_fn=optimizer_fn, progress=progress)

    model = _new_model(model_fn, seed)
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
        masks = prune_masks(model, rate, scope=scope, layer_rates=layer_rates)  # trained weights
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
    model = _new_model(result.model_fn, seed)
    if init == "rewind":
        rewind(model, result.rewind_state)
    apply_masks(model, masks)
    run, _ = _run(model, result.data, steps=result.steps - result.rewind_step, round_index=round_index,
                  step_offset=result.rewind_step, data_seed=result.data_seed, batch_size=result.batch_size,
                  eval_every=result.eval_every, optimizer_fn=result.optimizer_fn, progress=progress, desc=desc)
    return run


def random_reinit(result: IMPResult, *, progress: bool = True) -> list[Round]:
    """Control 1 (Frankle & Carbin 2019, Sec. 2): each round's ticket mask, fresh random init.

    Returns one :class:`Round` per pruned round of ``result`` (rounds 1, 2, ...).
    """
    return [retrain(result, r.masks, init="reinit", round_index=r.round, progress=progress,
                    desc=f"random reinit {r.round}") for r in result.rounds[1:]]


def random_mask(result: IMPResult, *, progress: bool = True) -> list[Round]:
    """Control 2: a random mask with each round's per-layer sparsity, from the ticket's init.

    Returns one :class:`Round` per pruned round of ``result`` (rounds 1, 2, ...).
    """
    out = []
    for r in result.rounds[1:]:
        masks = random_masks_like(r.masks, result.seed + _MASK_SEED_OFFSET + r.round)
        out.append(retrain(result, masks, init="rewind", round_index=r.round, progress=progress,
                           desc=f"random mask {r.round}"))
    return out


def one_shot(result: IMPResult, rounds: int, *, progress: bool = True) -> Round:
    """Prune the *dense* trained network in one step to the sparsity IMP reaches after ``rounds``.

    Uses the same scope and output-layer rate, compounded: ``1 - (1 - rate) ** rounds``
    (Frankle & Carbin 2019, Sec. 1: one-shot vs iterative). Rewinds and retrains like IMP.
    """
    if not isinstance(result, IMPResult):
        raise TypeError(f"result must be an IMPResult, got {type(result).__name__}")
    rounds = _check_int(rounds, "rounds", 1)
    model = _new_model(result.model_fn, result.seed)
    rewind(model, result.rounds[0].state)
    rate = 1.0 - (1.0 - result.rate) ** rounds
    layer_rates = None
    if result.output_rate is not None:
        layer_rates = {output_layer(model): 1.0 - (1.0 - result.output_rate) ** rounds}
    masks = prune_masks(model, rate, scope=result.scope, layer_rates=layer_rates)
    return retrain(result, masks, init="rewind", round_index=rounds, progress=progress,
                   desc=f"one-shot {rounds}")


# --- linear mode connectivity --------------------------------------------------------


def interpolate_states(a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """``(1 - alpha) * a + alpha * b`` for floating-point entries; integer buffers from ``a``."""
    if set(a) != set(b):
        raise ValueError(f"states differ in keys: {sorted(set(a) ^ set(b))}")
    alpha = _validate.fraction(alpha, "alpha", allow_one=True)
    return {k: torch.lerp(a[k], b[k].to(a[k].dtype), float(alpha)) if a[k].is_floating_point()
            else a[k].clone() for k in a}


def error_barrier(errors: Sequence[float]) -> float:
    """``max_alpha E(alpha) - (E(0) + E(1)) / 2`` (Frankle et al. 2020, Definition 1: instability).

    ``errors`` are the errors at evenly spaced ``alpha`` from 0 to 1 (at least two).
    """
    errs = [float(e) for e in errors]
    if len(errs) < 2:
        raise ValueError(f"errors needs at least two values (alpha = 0 and 1), got {len(errs)}")
    return max(errs) - (errs[0] + errs[-1]) / 2


@dataclass
class LMCResult:
    """Error along the line between two copies trained from the same rewind point."""

    alphas: list[float]
    errors: list[float]     # test error at each alpha
    barrier: float          # error_barrier(errors)
    end_acc: tuple[float, float]  # test accuracy of the two trained copies


def instability(
    model_fn: ModelFn,
    data: _data.Splits,
    *,
    rewind_step: int,
    steps: int = 300,
    masks: Mapping[str, Tensor] | None = None,
    seed: int = 0,
    data_seeds: tuple[int, int] = (1, 2),
    num_alphas: int = 11,
    optimizer_fn: OptimizerFn | None = None,
    batch_size: int = 128,
    progress: bool = True,
) -> LMCResult:
    """Linear mode connectivity from iteration ``k`` (Frankle et al. 2020, Sec. 3).

    Train ``model_fn()`` (seed ``seed``, data order ``seed``) for ``k = rewind_step``
    iterations, optionally apply ``masks`` (a subnetwork), then train two copies for
    ``steps - k`` iterations each with the data orders ``data_seeds``. Evaluate the test
    error of ``(1 - alpha) W_a + alpha W_b`` at ``num_alphas`` evenly spaced ``alpha``.
    A barrier near 0 means the two runs end in one linearly connected minimum: the
    network is *stable* to SGD noise from iteration ``k``. BatchNorm running statistics are
    interpolated like the weights (a simplification; re-estimating them is more exact).
    """
    _check_model_fn(model_fn)
    data = _check_data(data)
    steps = _check_int(steps, "steps", 1)
    rewind_step = _check_int(rewind_step, "rewind_step", 0)
    if rewind_step >= steps:
        raise ValueError(f"rewind_step must be < steps={steps}, got {rewind_step}")
    num_alphas = _check_int(num_alphas, "num_alphas", 2)
    if len(data_seeds) != 2 or data_seeds[0] == data_seeds[1]:
        raise ValueError(f"data_seeds must be two different ints, got {data_seeds!r}")
    opt = optimizer_fn or default_optimizer

    model = _new_model(model_fn, seed)
    if rewind_step > 0:
        loader = _data.loader(data.x_train, data.y_train, batch_size, shuffle=True, seed=seed)
        train(model, loader, steps=rewind_step, optimizer=opt(model), progress=progress, desc=f"to k={rewind_step}")
    if masks is not None:
        apply_masks(model, masks)
    start = snapshot(model)
    ends = []
    for s in data_seeds:
        rewind(model, start)
        loader = _data.loader(data.x_train, data.y_train, batch_size, shuffle=True, seed=s)
        train(model, loader, steps=steps - rewind_step, optimizer=opt(model), progress=progress,
              desc=f"copy (data seed {s})")
        ends.append(snapshot(model))
    test_loader = _data.loader(data.x_test, data.y_test, 1024)
    alphas = [i / (num_alphas - 1) for i in range(num_alphas)]
    errors = []
    for alpha in alphas:
        rewind(model, interpolate_states(ends[0], ends[1], alpha))
        errors.append(1.0 - evaluate(model, test_loader)[1])
    return LMCResult(alphas, errors, error_barrier(errors), (1.0 - errors[0], 1.0 - errors[-1]))
