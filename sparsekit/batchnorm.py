"""BatchNorm recalibration after pruning: re-estimate running statistics, train nothing.

Pipeline step: between *mask* and *evaluate* (and before or instead of *train*). Pruning a
network with BatchNorm changes the distribution of every pruned layer's output, but the
BatchNorm layers after it still normalise with the running mean and variance of the *dense*
network. In eval mode those stale statistics shift and rescale every channel, which can cost
more accuracy than the pruning itself. Re-estimating them on a few batches, with no gradient
step, removes that part of the loss. ``torch.optim.swa_utils.update_bn`` does the same for
averaged weights (Izmailov et al. 2018); Li et al. 2020 (EagleEye, "adaptive BatchNorm") use it
to evaluate pruned candidates without fine-tuning.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import _validate
from .data import batch_input
from .train import eval_mode

__all__ = ["batchnorm_layers", "recalibrate_batchnorm"]


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
