"""Linear mode connectivity: is training from a rewind point stable to SGD noise?

An analysis of the *train* step of score -> select -> mask -> train -> finalize, after
Frankle, Dziugaite, Roy & Carbin 2020, "Linear Mode Connectivity and the Lottery Ticket
Hypothesis". Train two copies of a network from the same point ``W_k`` (iteration ``k``,
optionally masked) on two different data orders, to ``W_T^a`` and ``W_T^b``. Along the
straight line between them the test error is

    E(alpha) = error((1 - alpha) W_T^a + alpha W_T^b),   alpha in [0, 1],

and the **error barrier** (their Definition 1, *instability*) is

    max_alpha E(alpha) - (E(0) + E(1)) / 2,

the highest error on the line above the mean of the two end points. A barrier near 0
means both runs end in one linearly connected minimum: from ``W_k`` the network is
*stable*.

When the two end points differ in error, that quantity is at least half their gap
``|E(1) - E(0)|/2`` even on a path whose error rises perfectly linearly from one end to
the other (no barrier at all). Entezari, Sedghi, Saukh & Neyshabur 2022 ("The Role of
Permutation Invariance in Linear Mode Connectivity of Neural Networks", Eq. 1) measure the
barrier above the straight line between the end points instead,

    max_alpha E(alpha) - ((1 - alpha) E(0) + alpha E(1)),

which is 0 on such a path and never negative (:func:`barrier_above_line`). Read the two side
by side, with the end-point gap (:attr:`LMCResult.endpoint_gap`): the difference between
them is asymmetry of the end points, not a barrier.

Frankle et al. find that IMP's sparse subnetworks match the dense network's
accuracy exactly when they are stable, which is why rewinding to an early ``k > 0`` makes
IMP work on larger networks (:mod:`sparsekit.lottery`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from . import _validate
from . import data as _data
from .lottery import ModelFn, OptimizerFn, check_splits, default_optimizer, fresh_model
from .masking import apply_masks
from .rewinding import rewind, snapshot
from .train import evaluate, train

__all__ = ["interpolate_states", "error_barrier", "barrier_above_line", "LMCResult", "instability"]


def interpolate_states(a: Mapping[str, Tensor], b: Mapping[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """``(1 - alpha) * a + alpha * b`` for floating-point entries; integer buffers from ``a``.

    The point at ``alpha`` on the line between two snapshots (:func:`sparsekit.snapshot`).
    """
    if set(a) != set(b):
        raise ValueError(f"states differ in keys: {sorted(set(a) ^ set(b))}")
    alpha = _validate.fraction(alpha, "alpha", allow_one=True)
    return {k: torch.lerp(a[k], b[k].to(a[k].dtype), alpha) if a[k].is_floating_point()
            else a[k].clone() for k in a}


def error_barrier(errors: Sequence[float]) -> float:
    """``max_alpha E(alpha) - (E(0) + E(1)) / 2`` (Frankle et al. 2020, Definition 1: instability).

    ``errors`` are the errors at evenly spaced ``alpha`` from 0 to 1 (at least two).
    """
    errs = [float(e) for e in errors]
    if len(errs) < 2:
        raise ValueError(f"errors needs at least two values (alpha = 0 and 1), got {len(errs)}")
    return max(errs) - (errs[0] + errs[-1]) / 2


def barrier_above_line(errors: Sequence[float]) -> float:
    """``max_alpha E(alpha) - ((1 - alpha) E(0) + alpha E(1))`` (Entezari et al. 2022, Eq. 1).

    ``errors`` are the errors at evenly spaced ``alpha`` from 0 to 1 (at least two). The
    barrier above the straight line between the end points: 0 when the error changes
    linearly (or less) along the path, never negative (``alpha = 0`` contributes 0). Unlike
    :func:`error_barrier` it does not count half the gap between unequal end points.
    """
    errs = [float(e) for e in errors]
    if len(errs) < 2:
        raise ValueError(f"errors needs at least two values (alpha = 0 and 1), got {len(errs)}")
    n = len(errs) - 1
    return max(e - ((n - i) * errs[0] + i * errs[-1]) / n for i, e in enumerate(errs))


@dataclass
class LMCResult:
    """Error along the line between two copies trained from the same rewind point."""

    alphas: list[float]
    errors: list[float]     # test error at each alpha
    barrier: float          # error_barrier(errors): Frankle et al. 2020, above the end points' mean
    end_acc: tuple[float, float]  # test accuracy of the two trained copies
    barrier_above_line: float = 0.0  # barrier_above_line(errors): Entezari et al. 2022

    @property
    def endpoint_gap(self) -> float:
        """``|E(1) - E(0)|``: how much the two trained copies differ in test error."""
        return abs(self.errors[-1] - self.errors[0])


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
    error of ``(1 - alpha) W_a + alpha W_b`` at ``num_alphas`` evenly spaced ``alpha``, and
    both barriers: Frankle et al.'s (:func:`error_barrier`) and Entezari et al.'s
    (:func:`barrier_above_line`). Each copy gets a fresh optimizer. A barrier near 0 means
    the two runs end in one linearly connected minimum: the network is *stable* to SGD
    noise from iteration ``k``. BatchNorm running statistics are
    interpolated like the weights (a simplification; re-estimating them is more exact).
    """
    data = check_splits(data, validation=False)
    steps = _validate.positive_int(steps, "steps")
    rewind_step = _validate.integer(rewind_step, "rewind_step", low=0)
    if rewind_step >= steps:
        raise ValueError(f"rewind_step must be < steps={steps}, got {rewind_step}")
    num_alphas = _validate.integer(num_alphas, "num_alphas", low=2)
    if len(data_seeds) != 2 or data_seeds[0] == data_seeds[1]:
        raise ValueError(f"data_seeds must be two different ints, got {data_seeds!r}")
    opt = optimizer_fn or default_optimizer

    model = fresh_model(model_fn, seed)
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
    return LMCResult(alphas, errors, error_barrier(errors), (1.0 - errors[0], 1.0 - errors[-1]),
                     barrier_above_line(errors))
