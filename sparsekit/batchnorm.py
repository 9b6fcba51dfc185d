"""BatchNorm: recalibration after pruning, and network slimming's sparsity training of gamma.

Recalibration (:func:`sparsekit.recalibrate_batchnorm`). Pipeline step: between *mask* and *evaluate*
(and before or instead of *train*). Pruning a network with BatchNorm changes the distribution of
every pruned layer's output, but the BatchNorm layers after it still normalise with the running
mean and variance of the *dense* network. In eval mode those stale statistics shift and rescale
every channel, which can cost more accuracy than the pruning itself. Re-estimating them on a few
batches, with no gradient
step, removes that part of the loss. ``torch.optim.swa_utils.update_bn`` does the same for
averaged weights (Izmailov et al. 2018); Li et al. 2020 (EagleEye, "adaptive BatchNorm") use it
to evaluate pruned candidates without fine-tuning.

Network slimming (Liu et al. 2017). Pipeline steps *train* then *score*: :func:`fit_slimming`
trains with an L1 penalty on every BatchNorm scale gamma (their Eq. 1), applied as a proximal
step after each optimizer step, under a :class:`sparsekit.recipes.Recipe` (the paper: SGD with
momentum); :func:`slimming_scores` turns the trained ``|gamma|`` into channel scores for ONE
global threshold across layers, raised so that no layer can lose its last ``min_keep`` channels;
:func:`taylor_bn_importance` is Molchanov et al.'s Taylor score with the gate after BatchNorm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.optimizer import register_optimizer_step_post_hook

from . import _validate
from .data import batch_input
from .train import eval_mode

__all__ = ["batchnorm_layers", "recalibrate_batchnorm", "fit_slimming", "slimming_scores", "taylor_bn_importance"]


def batchnorm_layers(model: nn.Module) -> dict[str, _BatchNorm]:
    """Every BatchNorm (1d/2d/3d, SyncBatchNorm) of ``model`` that tracks running statistics,
    by module name, in module order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[object], *,
                          num_batches: int | None = None) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance on ``batches``; **in place**.

    For each BatchNorm ``b`` that tracks running statistics, afterwards

    * ``b.running_mean`` = the mean of ``b``'s inputs over all samples (and positions) of the
      pass, per channel;
    * ``b.running_var`` = their unbiased variance (``N - 1`` in the denominator, as PyTorch
      keeps it), per channel; ``b.num_batches_tracked`` = the number of batches used.

    These are the exact pooled statistics (accumulated in float64), independent of how the
    samples are split into batches. (PyTorch's own cumulative average, ``momentum=None``,
    weights batches equally and averages per-batch variances; it agrees only for one batch.)
    During the pass every BatchNorm is in training mode, so it normalises with the batch's
    own statistics, as in training and as ``torch.optim.swa_utils.update_bn`` does; every
    other module (Dropout, ...) is in eval mode. No gradient is computed and no parameter
    changes. Each module's ``training`` flag and each BatchNorm's ``momentum`` are restored
    afterwards; if the pass raises, the running statistics are restored too.

    Args:
        model: a network with at least one BatchNorm that tracks running statistics.
        batches: an iterable of input tensors or of ``(input, target, ...)`` pairs (a
            ``DataLoader``); inputs are moved to the model's device.
        num_batches: use at most this many batches (default: all of them).

    Returns:
        ``model`` itself.

    Raises:
        ValueError: ``model`` has no such BatchNorm, ``batches`` yields nothing, or
            ``num_batches`` is not a positive int.
        TypeError: ``model`` is not a module, or a batch is not a tensor or a pair.
    """
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError("model has no BatchNorm layer with running statistics (track_running_stats=True): "
                         "there is nothing to recalibrate")
    if num_batches is not None:
        num_batches = _validate.positive_int(num_batches, "num_batches")
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device
    saved = {name: (b.momentum, b.running_mean.clone(), b.running_var.clone(),  # type: ignore[union-attr]
                    b.num_batches_tracked.clone()) for name, b in layers.items()}  # type: ignore[union-attr]
    sums: dict[str, list[Tensor]] = {}  # name -> [count, sum, sum of squares] (float64, per channel)

    def hook(name: str):  # noqa: ANN202
        def accumulate(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].detach().to(torch.float64)
            x = x.movedim(1, -1).reshape(-1, x.shape[1]) if x.dim() > 1 else x.reshape(1, -1)
            s = sums.setdefault(name, [torch.zeros((), dtype=torch.float64, device=x.device),
                                       torch.zeros(x.shape[1], dtype=torch.float64, device=x.device),
                                       torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)])
            s[0] += x.shape[0]
            s[1] += x.sum(0)
            s[2] += (x * x).sum(0)
        return accumulate

    handles = [b.register_forward_pre_hook(hook(name)) for name, b in layers.items()]
    used = 0
    ok = False
    try:
        with eval_mode(model):
            for b in layers.values():
                b.reset_running_stats()
                b.momentum = None  # cumulative average while the pass runs (overwritten below)
                b.train()
            for i, batch in enumerate(batches):
                if num_batches is not None and used >= num_batches:
                    break
                model(batch_input(batch, i).to(device))
                used += 1
        if used == 0:
            raise ValueError("batches is empty: recalibrating BatchNorm needs at least one batch")
        for name, b in layers.items():
            if name not in sums:
                raise ValueError(f"BatchNorm {name!r} saw no input during the pass (is it used in forward?)")
            count, total, squares = sums[name]
            if count < 2:
                raise ValueError(f"BatchNorm {name!r} saw {int(count)} value per channel; the unbiased "
                                 "variance needs at least 2")
            mean = total / count
            var = (squares - count * mean * mean).clamp_min(0.0) / (count - 1)
            b.running_mean.copy_(mean)  # type: ignore[union-attr]
            b.running_var.copy_(var)  # type: ignore[union-attr]
            b.num_batches_tracked.fill_(used)  # type: ignore[union-attr]
        ok = True
    finally:
        for h in handles:
            h.remove()
        for name, b in layers.items():
            momentum, mean, var, tracked = saved[name]
            b.momentum = momentum
            if not ok:
                b.running_mean.copy_(mean)  # type: ignore[union-attr]
                b.running_var.copy_(var)  # type: ignore[union-attr]
                b.num_batches_tracked.copy_(tracked)  # type: ignore[union-attr]
    return model


def fit_slimming(model: nn.Module, splits: object, recipe: object, lam: float, *, seed: int = 0,
                 progress: bool = True) -> object:
    """Network slimming's sparsity training (Liu et al. 2017, Eq. 1): :func:`sparsekit.recipes.fit`
    with the penalty ``lam * sum |gamma|`` over every affine BatchNorm scale; **in place**.

    After every optimizer step the proximal step of the penalty is applied with the recipe's
    learning rate ``lr``: ``gamma <- sign(gamma) * max(|gamma| - lr * lam, 0)``
    (:func:`sparsekit.structured.importance.slimming_hook`). With SGD + momentum (the paper's optimizer,
    ``recipe.optimizer == "sgd"``) the cross-entropy gradient and the penalty act on the same
    scale, so scales the loss does not need reach exactly zero; Adam would rescale the loss
    gradient per parameter and blur the split. Early stopping and best-epoch restore as in
    :func:`sparsekit.recipes.fit`. Returns its ``Fit``.

    Raises:
        ValueError: ``model`` has no affine BatchNorm, or ``lam`` is negative.
        TypeError: ``model`` is not a module or ``recipe`` not a ``Recipe``.
    """
    from .recipes import Recipe, fit  # recipes imports the training loop; keep this module light
    from .structured.importance import slimming_hook

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    lam = _validate.real(lam, "lam", low=0.0)
    gammas = {id(m.weight) for m in model.modules() if isinstance(m, _BatchNorm) and m.weight is not None}
    if not gammas:
        raise ValueError(f"{type(model).__name__} has no affine BatchNorm layer: nothing to slim")
    prox = slimming_hook(lam, recipe.lr)

    def after_step(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        if any(id(p) in gammas for group in optimizer.param_groups for p in group["params"]):
            prox(0, model)  # only the optimizer that trains this model's gammas

    handle = register_optimizer_step_post_hook(after_step)
    try:
        return fit(model, splits, recipe, seed=seed, progress=progress, desc=f"slimming seed {seed}")
    finally:
        handle.remove()


@torch.no_grad()
def slimming_scores(model: nn.Module, example_input: Tensor, *, min_keep: int = 1) -> dict[str, Tensor]:
    """``{layer: |gamma|}`` of the BatchNorm after each layer, for ONE global threshold (Liu et al. 2017).

    Network slimming removes every channel whose ``|gamma|`` is below a single threshold over
    the whole network. Such a threshold can empty a layer (a network with no path left), so
    here each layer's ``min_keep`` largest ``|gamma|`` are raised to ``+inf``: a global
    selection (``shrink_channels(..., score=slimming_scores(...), scope="global")``) then
    never removes them and otherwise follows the threshold. Layers without a BatchNorm right
    after them are left out (as in :func:`sparsekit.structured.importance.bn_importance`).

    Raises:
        ValueError: ``min_keep`` is not a positive int, or larger than some layer's channels.
    """
    from .structured.importance import bn_importance

    min_keep = _validate.positive_int(min_keep, "min_keep")
    out = {}
    for name, g in bn_importance(model, example_input).items():
        if min_keep > len(g):
            raise ValueError(f"min_keep={min_keep} exceeds the {len(g)} channels of {name!r}")
        g = g.clone()
        g[torch.argsort(-g, stable=True)[:min_keep]] = math.inf
        out[name] = g
    return out


def taylor_bn_importance(model: nn.Module, inputs: Tensor, targets: Tensor, example_input: Tensor,
                         loss_fn: object = None, *, batch_size: int = 128) -> dict[str, Tensor]:
    """First-order Taylor importance with the gate **after** BatchNorm (Molchanov et al. 2019, Eq. 8).

    Molchanov et al. place the channel gate ``g_c`` after each BatchNorm: removing the channel
    then removes ``gamma_c * xhat_c + beta_c``, and ``dL/dg_c = gamma_c dL/dgamma_c + beta_c
    dL/dbeta_c``. The score is ``(dL/dg_c)^2`` averaged over mini-batches, like
    :func:`sparsekit.structured.importance.taylor_importance`, which gates the layer's output *before*
    its BatchNorm instead. Keyed by the Conv/Linear layer the BatchNorm follows (found in the
    fx graph traced on ``example_input``), so it plugs into ``shrink_channels(score=...)``.
    Layers without a BatchNorm right after them are left out. Eval mode; nothing changes.
    """
    import torch.nn.functional as F

    from .structured.importance import gated_taylor_scores

    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (logits, targets) -> loss, got {type(loss_fn).__name__}")
    from . import graph as dep

    modules = dict(model.named_modules())
    pairs = {src: bn for g in dep.channel_groups(model, example_input) for src, bn in g.bn_of.items()}
    if not pairs:
        raise ValueError(f"{type(model).__name__} has no Conv/Linear layer followed by a BatchNorm")
    return gated_taylor_scores(model, {src: (modules[bn], modules[bn].num_features) for src, bn in pairs.items()},
                               inputs, targets, loss_fn, batch_size=batch_size)
