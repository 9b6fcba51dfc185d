"""Channel importance for structured pruning: the *score* step, one number per output channel.

Larger = keep, as everywhere in ``sparsekit``:

* :func:`l1_importance`: the L1 norm of each filter (Li et al. 2017);
* :func:`bn_importance`: ``|gamma|`` of the BatchNorm after each layer (network
  slimming, Liu et al. 2017), trained toward sparsity with :func:`slimming_loss` or
  :func:`slimming_hook` (the L1 penalty :func:`bn_l1_penalty`);
* :func:`taylor_importance`: first-order Taylor expansion of the loss around a channel
  gate (Molchanov et al. 2019);
* :func:`random_importance`: the random-channel control.

:func:`gate_gradients` is the loop behind Taylor importance and head importance
(:func:`sparsekit.structured.heads.head_importance`): ``dL/dg`` for gates multiplying
channels or heads, over mini-batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _validate
from .. import graph as dep
from ..train import eval_mode

LossFn = Callable[[Tensor, Tensor], Tensor]


def sources(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` for every Conv/Linear whose output channels can be scored, in module order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return {n: m for n, m in model.named_modules() if isinstance(m, dep.SOURCE_TYPES)}


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def l1_importance(model: nn.Module) -> dict[str, Tensor]:
    """``{layer: s}`` with ``s_j = sum |W_j|``, the L1 norm of filter ``j`` (Li et al. 2017, Sec. 3.1)."""
    return {n: m.weight.detach().abs().reshape(m.weight.shape[0], -1).sum(1) for n, m in sources(model).items()}


def random_importance(model: nn.Module, seed: int) -> dict[str, Tensor]:
    """``{layer: uniform random scores}`` from a private generator: the random-channel baseline.

    ``seed`` must be an int (``None`` is refused: the control must be reproducible).
    """
    gen = torch.Generator().manual_seed(_validate.seed(seed))
    return {n: torch.rand(m.weight.shape[0], generator=gen).to(m.weight.device) for n, m in sources(model).items()}


@torch.no_grad()
def bn_importance(model: nn.Module, example_input: Tensor) -> dict[str, Tensor]:
    """``{layer: |gamma|}`` of the BatchNorm applied right after each layer (Liu et al. 2017).

    Layers not followed by a BatchNorm are left out. The pairs come from the fx graph
    (traced in eval mode; every module keeps its own train/eval mode).
    """
    modules = dict(model.named_modules())
    out: dict[str, Tensor] = {}
    for group in dep.channel_groups(model, example_input):
        for src, bn in group.bn_of.items():
            weight = modules[bn].weight
            out[src] = weight.detach().abs().clone() if weight is not None else torch.ones(group.channels)
    return out


def bn_l1_penalty(model: nn.Module) -> Tensor:
    """``sum |gamma|`` over every BatchNorm: the sparsity term of Liu et al. 2017, Eq. (1).

    Add ``lam * bn_l1_penalty(model)`` to the loss in a custom training loop.
    """
    gammas = [m.weight.abs().sum() for m in model.modules() if isinstance(m, dep.BN_TYPES) and m.weight is not None]
    if not gammas:
        raise ValueError(f"{type(model).__name__} has no affine BatchNorm layers")
    return torch.stack(gammas).sum()


def slimming_loss(model: nn.Module, lam: float, loss_fn: LossFn = F.cross_entropy) -> LossFn:
    """``loss_fn(logits, y) + lam * sum |gamma|``: network slimming's training loss (Liu et al. 2017, Eq. 1).

    Pass it as ``loss_fn`` to :func:`sparsekit.train.train`. The L1 subgradient
    ``lam * sign(gamma)`` pushes the scales of unneeded channels toward zero; with Adam
    they then hover within about one learning rate of zero instead of reaching it.
    """
    lam = _validate.real(lam, "lam", low=0.0)
    bn_l1_penalty(model)  # fail early if there is no BatchNorm

    def loss(logits: Tensor, targets: Tensor, **kwargs: Any) -> Tensor:
        return loss_fn(logits, targets, **kwargs) + float(lam) * bn_l1_penalty(model)

    return loss


def slimming_hook(lam: float, lr: float) -> Callable[[int, nn.Module], None]:
    """A ``step_hook`` for :func:`sparsekit.train.train` that applies the L1 penalty on gamma.

    After every optimizer step, the proximal step of ``lam * sum |gamma|`` (Liu et al.
    2017, Eq. 1) with step size ``lr``: ``gamma <- sign(gamma) * max(|gamma| - lr * lam, 0)``.
    Unlike a subgradient in the loss (which Adam would rescale), it drives unimportant
    scales to exactly zero.
    """
    lam = _validate.real(lam, "lam", low=0.0)
    lr = _validate.real(lr, "lr", low=0.0, low_open=True)
    shrink = float(lam) * float(lr)

    @torch.no_grad()
    def hook(step: int, model: nn.Module) -> None:
        for m in model.modules():
            if isinstance(m, dep.BN_TYPES) and m.weight is not None:
                m.weight.copy_(m.weight.sign() * (m.weight.abs() - shrink).clamp_min(0.0))

    return hook


# ---------------------------------------------------------------------------------
# The gate-gradient loop: dL/dg for gates on channels (Taylor) or heads (Michel et al.)
# ---------------------------------------------------------------------------------

def _batches(inputs: Tensor, targets: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
        raise TypeError(f"inputs and targets must be Tensors, got {type(inputs).__name__}, {type(targets).__name__}")
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise ValueError(f"inputs and targets must be non-empty and equally long, got {len(inputs)}, {len(targets)}")
    batch_size = _validate.positive_int(batch_size, "batch_size")
    for i in range(0, len(inputs), batch_size):
        yield inputs[i:i + batch_size], targets[i:i + batch_size]


def gate_gradients(model: nn.Module, gates: Sequence[Tensor], forward: Callable[[Tensor], Tensor],
                   inputs: Tensor, targets: Tensor, loss_fn: LossFn = F.cross_entropy, *,
                   batch_size: int = 128) -> list[tuple[list[Tensor], int]]:
    """``[(dL/dg for every gate, batch size)]``, one entry per mini-batch of ``inputs``.

    ``gates`` are leaf tensors (``requires_grad=True``, all ones, on the model's device)
    that ``forward(x)`` multiplies into channels or heads; ``dL/dg_c`` is the first-order
    change of the loss when gate ``c`` goes from 1 to 0. The model runs in eval mode
    (:func:`sparsekit.train.eval_mode`: each module's own mode comes back, a frozen
    BatchNorm stays frozen), with gradients enabled even inside ``torch.no_grad()``;
    batches move to the gates' device. No ``.grad`` is written and nothing in the
    model changes.
    """
    device = gates[0].device if gates else model_device(model)
    batches = list(_batches(inputs, targets, batch_size))  # validate before anything runs
    out = []
    with eval_mode(model), torch.enable_grad():
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            grads = torch.autograd.grad(loss_fn(forward(x), y), list(gates), allow_unused=True)
            out.append(([torch.zeros_like(g) if d is None else d.detach() for g, d in zip(gates, grads, strict=True)],
                        len(x)))
    return out


def taylor_importance(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn = F.cross_entropy,
                      *, batch_size: int = 128) -> dict[str, Tensor]:
    """First-order Taylor importance of every output channel (Molchanov et al. 2019, Eq. 8).

    A gate ``g_c = 1`` multiplies each output channel; removing the channel sets it to
    0, and the first-order change of the loss is ``dL/dg_c = sum_s g_s w_s`` over the
    channel's parameters. The score is ``(dL/dg_c)^2`` averaged over mini-batches
    (:func:`gate_gradients`). Computed in eval mode (with train-mode BatchNorm a gate
    before the norm would be normalised away); the model's parameters, buffers and every
    module's mode are left as they were.
    """
    return gated_taylor_scores(model, {n: (m, m.weight.shape[0]) for n, m in sources(model).items()},
                               inputs, targets, loss_fn, batch_size=batch_size)


def gated_taylor_scores(model: nn.Module, gated: dict[str, tuple[nn.Module, int]], inputs: Tensor,
                        targets: Tensor, loss_fn: LossFn = F.cross_entropy, *,
                        batch_size: int = 128) -> dict[str, Tensor]:
    """``{key: (dL/dg)^2 averaged over mini-batches}`` for a gate ``g`` (all ones) multiplied
    into the channels of each ``gated[key] = (module, channels)``'s output (the last dimension
    of a Linear's output, dimension 1 otherwise). Where the gate sits is the caller's choice:
    after each Conv/Linear (:func:`taylor_importance`) or after each BatchNorm
    (:func:`sparsekit.batchnorm.taylor_bn_importance`)."""
    device = model_device(model)
    gates = {key: torch.ones(channels, requires_grad=True, device=device) for key, (_, channels) in gated.items()}

    def gate_hook(key: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            dim = output.dim() - 1 if isinstance(module, nn.Linear) else 1
            shape = [1] * output.dim()
            shape[dim] = -1
            return output * gates[key].view(shape)
        return hook

    handles = [module.register_forward_hook(gate_hook(key)) for key, (module, _) in gated.items()]
    try:
        per_batch = gate_gradients(model, list(gates.values()), model, inputs, targets, loss_fn,
                                   batch_size=batch_size)
    finally:
        for h in handles:
            h.remove()
    total = [sum(grads[i] ** 2 for grads, _ in per_batch) / len(per_batch) for i in range(len(gates))]
    return dict(zip(gates, total, strict=True))
