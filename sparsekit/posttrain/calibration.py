"""Calibration statistics for one-shot pruning: the Gram matrix of each Linear's inputs.

Every criterion of this package looks at a layer through its inputs on calibration data
only via ``H = X^T X`` (tokens as rows of ``X``): SparseGPT uses the whole matrix (the
Hessian of the layer-wise loss ``||W X^T - W' X^T||^2`` is ``2 H``), Wanda its diagonal
(``||X_j||_2 = sqrt(H_jj)``). Summing ``x^T x`` batch by batch needs one ``[in, in]``
matrix per layer, whatever the number of tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..data import batch_input
from ..train import eval_mode


@dataclass
class CalibrationStats:
    """What a layer saw during calibration: ``gram = sum x^T x`` (float64 ``[in, in]``) over
    ``count`` tokens (rows of the input after flattening its leading dims)."""

    gram: Tensor
    count: int

    @property
    def input_norm(self) -> Tensor:
        """``||X_j||_2`` for every input feature ``j``: ``sqrt(diag(gram))`` (Wanda's norm)."""
        return self.gram.diagonal().clamp_min(0.0).sqrt()


def linear_layers(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, nn.Linear]:
    """``{module name: nn.Linear}`` of ``model`` in module order, or of the named ``layers``
    (``ValueError`` for a name that is not an ``nn.Linear`` of the model)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if layers is None:
        if not linears:
            raise ValueError("model has no nn.Linear layer to calibrate")
        return linears
    if isinstance(layers, str) or not isinstance(layers, Iterable):
        raise TypeError(f"layers must be a sequence of module names, got {type(layers).__name__}")
    layers = list(layers)
    unknown = [name for name in layers if name not in linears]
    if unknown:
        raise ValueError(f"layers {unknown} are not nn.Linear modules of the model; "
                         f"its Linear layers are {list(linears)}")
    if not layers:
        raise ValueError("layers is empty: name at least one nn.Linear")
    return {name: linears[name] for name in layers}


def _all_reduce(stats: dict[str, CalibrationStats], group: object) -> None:
    """Sum every ``gram`` and ``count`` over the ranks of ``group`` (torch.distributed)."""
    from ..distributed import all_reduce_sum_, all_sum

    for s in stats.values():
        all_reduce_sum_(s.gram, group)
    for s, total in zip(stats.values(), all_sum([s.count for s in stats.values()], group)):
        s.count = total


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[object], *, layers: Sequence[str] | None = None,
              group: object = None) -> dict[str, CalibrationStats]:
    """Run ``model`` on ``batches`` (eval mode, no grad) and record each Linear's input Gram matrix.

    Returns ``{module name: CalibrationStats}`` for every ``nn.Linear`` (or the named
    ``layers``), keyed as in ``named_modules()``. A batch is a tensor or an ``(input,
    target)`` pair. The model is left unchanged (parameters, buffers, each module's
    train/eval flag). ``group``: a ``torch.distributed`` process group; each rank runs its
    own batches and the sums are all-reduced, so every rank gets what one process computes
    on all ranks' batches (``None``: this process only).
    """
    targets = linear_layers(model, layers)
    stats = {name: None for name in targets}

    def hook(name: str, module: nn.Linear):
        def record(_module: nn.Module, inputs: tuple[Tensor, ...], _output: Tensor) -> None:
            x = inputs[0].detach().reshape(-1, module.in_features).to(torch.float64)
            if stats[name] is None:
                stats[name] = CalibrationStats(torch.zeros(module.in_features, module.in_features,
                                                           dtype=torch.float64, device=x.device), 0)
            stats[name].gram.addmm_(x.T, x)
            stats[name].count += x.shape[0]
        return record

    handles = [m.register_forward_hook(hook(name, m)) for name, m in targets.items()]
    seen = 0
    try:
        with eval_mode(model):
            for batch in batches:
                model(batch_input(batch, seen))
                seen += 1
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise ValueError("batches is empty: calibration needs at least one batch")
    for name, m in targets.items():  # a layer the batches never reached saw no token
        if stats[name] is None:
            device = m.weight.device
            stats[name] = CalibrationStats(torch.zeros(m.in_features, m.in_features, dtype=torch.float64,
                                                       device=device), 0)
    if group is not None:
        _all_reduce(stats, group)
    return stats
