"""The *score* step from second order: Optimal Brain Damage (LeCun, Denker & Solla 1990).

Expand the training loss around trained weights ``w`` to second order in a change ``dw``:

    dL = g . dw + 1/2 dw^T H dw + O(dw^3).

At a minimum the gradient ``g`` vanishes; OBD further keeps only the diagonal of the
Hessian ``H``. Deleting weight ``k`` (``dw_k = -w_k``, the others unchanged) then costs

    s_k = 1/2 h_kk w_k^2                                   (OBD, Eq. 5)

and OBD prunes the smallest saliencies. If every ``h_kk`` is the same constant, ``s_k`` ranks
weights exactly as ``|w_k|``: magnitude pruning is OBD with an isotropic Hessian.

The exact Hessian diagonal needs one extra backward pass per parameter. We use the diagonal
of the **empirical Fisher** instead, ``F_kk = mean_n (d l_n / d w_k)^2`` over examples
``n``: for a cross-entropy loss the Fisher is the Gauss-Newton approximation of the Hessian
(exact at the model's own predictive distribution), and it needs only per-example gradients
(``torch.func.vmap`` over ``torch.func.grad``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from . import _validate
from .masking import effective_weights, get_masks, prunable_weights
from .scores import _check_batch
from .train import eval_mode

__all__ = ["fisher_diagonal", "obd_saliency"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _check(model: object, inputs: object, targets: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_batch(inputs, targets)
    if not prunable_weights(model):
        raise ValueError(f"{type(model).__name__} has no Linear/Conv1d/Conv2d weights to score")


def fisher_diagonal(model: nn.Module, inputs: Tensor, targets: Tensor, *,
                    loss_fn: LossFn = F.cross_entropy, chunk: int = 256) -> dict[str, Tensor]:
    """Diagonal of the empirical Fisher, ``mean_n (d loss(x_n, y_n) / d w)^2``, per prunable weight.

    The OBD Hessian estimate of :func:`obd_saliency` (module docstring). Per-example gradients
    are taken ``chunk`` examples at a time with the model in eval mode (BatchNorm uses its
    running statistics; each module's flag is restored afterwards). Gradients are with
    respect to the *effective* weights of a masked model, so a pruned entry gets 0. The model
    is not changed and no ``.grad`` is written. Returns ``{plain weight name: tensor}``.
    """
    _check(model, inputs, targets)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    chunk = _validate.positive_int(chunk, "chunk")
    by_id = {id(p): n for n, p in model.named_parameters()}
    stored = {plain: by_id[id(p)] for plain, p in prunable_weights(model).items()}
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
        # clones: ordinary tensors even when called under inference mode; the model is never touched
        state = {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}
        leaves = {plain: state[s] for plain, s in stored.items()}

        def loss_one(weights: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            full = {**state, **{stored[plain]: w for plain, w in weights.items()}}
            return loss_fn(functional_call(model, full, (x.unsqueeze(0),)), y.unsqueeze(0))

        per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))
        total = {plain: torch.zeros_like(w, dtype=torch.float64) for plain, w in leaves.items()}
        for start in range(0, len(inputs), chunk):
            grads = per_example(leaves, inputs[start:start + chunk].clone(), targets[start:start + chunk].clone())
            for plain, g in grads.items():
                total[plain] += g.detach().double().square().sum(0)
    masks = get_masks(model)
    out = {}
    for plain, t in total.items():
        f = (t / len(inputs)).to(leaves[plain].dtype)
        out[plain] = f.masked_fill(~masks[plain], 0.0) if plain in masks else f
    return out


def obd_saliency(model: nn.Module, inputs: Tensor, targets: Tensor, *,
                 loss_fn: LossFn = F.cross_entropy, chunk: int = 256) -> dict[str, Tensor]:
    """OBD saliency ``s_k = 1/2 h_kk w_k^2`` (LeCun et al. 1990, Eq. 5), ``h_kk`` the empirical Fisher.

    Larger = more important, like every score of :mod:`sparsekit.scores`: pass it as
    ``scores=`` to :func:`sparsekit.unstructured.apply_magnitude_pruning` or to
    :func:`sparsekit.select_masks`. ``h_kk`` is :func:`fisher_diagonal` on ``(inputs,
    targets)`` (use the training set: OBD expands the training loss). Pruned entries score 0.
    """
    fisher = fisher_diagonal(model, inputs, targets, loss_fn=loss_fn, chunk=chunk)
    weights = effective_weights(model)
    return {name: 0.5 * f * weights[name].square() for name, f in fisher.items()}
