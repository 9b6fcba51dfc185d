"""The *score* step: importance criteria, one number per weight, larger = more important.

Every function returns ``{plain weight name: float tensor}`` with the keys and shapes of
:func:`sparsekit.prunable_weights`, and never changes the model (parameters, buffers,
train/eval mode). Movement scores, which need a training loop, live in
:mod:`sparsekit.movement`.

All five take the same keyword ``masks: Mapping[str, Tensor] | None = None``: score the
model *as if these masks were applied as well* (intersected with the masks it already
carries), without touching it. Iterative pruning re-scores this way each round
(:func:`sparsekit.at_init.pruning_path`). Whatever the criterion, an entry pruned (by the
model's own masks or by ``masks``) scores exactly 0, and a gradient-based score sees the
network of the kept weights only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from . import _validate
from .masking import effective_weights, get_masks, prunable_weights
from .train import eval_mode

LossFn = Callable[[Tensor, Tensor], Tensor]
F_ = TypeVar("F_", bound=Callable[..., Any])


def magnitude(model: nn.Module, *, masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """``|w|`` of the effective weights (Han et al. 2015): small weights matter least.

    Already-pruned entries (and those ``masks`` prunes) score 0, so they are pruned first again.
    """
    return _zero_pruned(model, {name: w.abs().clone() for name, w in effective_weights(model).items()}, masks)


def random(model: nn.Module, seed: int, *, masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """I.i.d. uniform scores in ``[0, 1)`` from a private generator seeded with ``seed``.

    The baseline every pruning method must beat (Blalock et al. 2020). The global RNG
    state is left untouched. Pruned entries (the model's own, or those ``masks`` prunes)
    score 0; the others get the same values as in the unmasked model.
    """
    seed = _validate.seed(seed)
    gen = torch.Generator().manual_seed(seed)
    drawn = {
        name: torch.rand(w.shape, generator=gen, dtype=torch.float32).to(w.device)
        for name, w in effective_weights(model).items()
    }
    return _zero_pruned(model, drawn, masks)


def _zero_pruned(model: nn.Module, scores: dict[str, Tensor], masks: Mapping[str, Tensor] | None
                 ) -> dict[str, Tensor]:
    """``scores`` with every entry pruned by the model's masks or by ``masks`` set to 0."""
    extra = _check_extra_masks(model, masks)
    for name, own in get_masks(model).items():
        extra[name] = own & extra[name].to(own.device) if name in extra else own
    for name, keep in extra.items():
        scores[name] = scores[name].masked_fill(~keep.to(scores[name].device), 0.0)
    return scores


# --- pruning at initialization: SNIP, GraSP, SynFlow --------------------------------
#
# These criteria look at the network *before* training and need one batch (SNIP,
# GraSP) or no data at all (SynFlow). They share two rules:
#
# * The model is never changed. Gradients are taken with ``torch.autograd.grad`` on
#   detached copies of the parameters (so no ``.grad`` is written), and BatchNorm
#   running statistics are updated only on copies of the buffers
#   (``torch.func.functional_call``).
# * A masked model is scored as the network of its *kept* weights: the stored
#   original (zero where pruned) goes through the mask as in the forward pass, so
#   pruned entries get gradient 0, score exactly 0, and do not carry signal. Pass
#   ``current=sk.get_masks(model)`` to ``select_masks`` so they stay pruned whatever
#   their score (GraSP scores can be negative, so 0 is not the smallest).
# * ``masks=`` scores the model as if these masks were applied too (intersected with
#   its own), without touching it: iterative pruning re-scores this way each round.


def _with_grad(fn: F_) -> F_:
    """Run ``fn`` with autograd on, even when called under ``torch.no_grad()`` or
    ``torch.inference_mode()``: the scores *are* gradients, and computing them never
    changes the model, so the caller's context need not forbid them. Inside, inference
    mode is switched off, so the copies the score is computed on are ordinary tensors."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _normal(t: Tensor) -> Tensor:
    """``t``, or a copy of it if it is an inference tensor (autograd cannot save those)."""
    return t.clone() if t.is_inference() else t


def _check_batch(inputs: Tensor, targets: Tensor) -> None:
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a Tensor, got {type(inputs).__name__}")
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a Tensor, got {type(targets).__name__}")
    if inputs.dim() == 0 or len(inputs) == 0:
        raise ValueError(f"inputs must be a non-empty batch, got shape {tuple(inputs.shape)}")
    if targets.dim() == 0 or len(targets) != len(inputs):
        raise ValueError(
            f"targets must hold one label per input: inputs has {len(inputs)} rows, "
            f"targets has shape {tuple(targets.shape)}"
        )


def _stored_names(model: nn.Module) -> dict[str, str]:
    """``{plain weight name: name of the stored parameter in named_parameters()}``."""
    by_id = {id(p): n for n, p in model.named_parameters()}
    weights = prunable_weights(model)
    if not weights:
        raise ValueError(f"{type(model).__name__} has no Linear/Conv1d/Conv2d weights to score")
    return {plain: by_id[id(p)] for plain, p in weights.items()}


def _check_extra_masks(model: nn.Module, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    if masks is None:
        return {}
    if not isinstance(masks, Mapping):
        raise TypeError(f"masks must be a mapping name -> bool tensor or None, got {type(masks).__name__}")
    weights = prunable_weights(model)
    for name, m in masks.items():
        if name not in weights:
            raise ValueError(f"masks has unknown weight name {name!r}; allowed names: {', '.join(weights)}")
        if not isinstance(m, Tensor) or m.dtype != torch.bool:
            got = m.dtype if isinstance(m, Tensor) else type(m).__name__
            raise TypeError(f"masks[{name!r}] must be a bool tensor, got {got}")
        if m.shape != weights[name].shape:
            raise ValueError(f"masks[{name!r}] has shape {tuple(m.shape)}, the weight has shape "
                             f"{tuple(weights[name].shape)}")
    return dict(masks)


def _functional_state(model: nn.Module, masks: Mapping[str, Tensor] | None = None,
                      transform: Callable[[Tensor], Tensor] | None = None
                      ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(state, leaves)`` for ``functional_call``: copies of every parameter and buffer.

    ``leaves`` maps each plain weight name to a fresh leaf tensor (requires grad); in
    ``state`` that leaf appears multiplied by ``masks[name]`` when given, so pruned
    entries get gradient 0 exactly as under :func:`sparsekit.apply_masks`. ``transform``
    (e.g. ``abs`` in float64) is applied to every float parameter and buffer. Masks and
    counters (bool / integer buffers) are copied unchanged. BatchNorm's in-place
    updates hit the copies, never the model.
    """
    masks = _check_extra_masks(model, masks)
    names = _stored_names(model)
    state: dict[str, Tensor] = {}
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        t = t.detach().clone()
        if transform is not None and t.is_floating_point():
            t = transform(t)
        state[name] = t
    leaves: dict[str, Tensor] = {}
    for plain, stored in names.items():
        leaf = state[stored].requires_grad_()
        leaves[plain] = leaf
        if plain in masks:
            state[stored] = leaf.masked_fill(~masks[plain].to(leaf.device), 0.0)
    return state, leaves


def _loss_and_weights(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn,
                      masks: Mapping[str, Tensor] | None) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss of ``model`` on the batch, as a function of fresh leaf copies of its weights."""
    _check_batch(inputs, targets)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    state, leaves = _functional_state(model, masks)
    loss = loss_fn(functional_call(model, state, (_normal(inputs),)), _normal(targets))
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError("loss_fn must return a scalar tensor")
    return loss, leaves


@_with_grad
def snip(model: nn.Module, inputs: Tensor, targets: Tensor,
         loss_fn: LossFn = F.cross_entropy, *, masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """SNIP connection sensitivity ``|g * w|`` on one batch (Lee et al. 2019).

    With a gate ``c`` on every connection (``w -> c * w``), ``dL/dc`` at ``c = 1`` is
    ``g * w``: the first-order change of the loss when the connection is removed. Lee
    et al. normalise by the sum of all scores; that does not change the ranking, so we
    return the raw values. The forward pass runs in the model's current mode (in train
    mode BatchNorm uses the batch's statistics; its running statistics stay untouched).
    ``masks``: score as if these masks were applied as well (pruned entries score 0).
    Works under ``torch.no_grad()`` and ``torch.inference_mode()`` (autograd is switched
    on inside; the model is not changed), as do :func:`grasp` and :func:`synflow`.
    """
    loss, leaves = _loss_and_weights(model, inputs, targets, loss_fn, masks)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {
        name: (torch.zeros_like(w) if g is None else (g * w).abs()).detach()
        for (name, w), g in zip(leaves.items(), grads)
    }


@_with_grad
def grasp(model: nn.Module, inputs: Tensor, targets: Tensor,
          loss_fn: LossFn = F.cross_entropy, *, masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """GraSP: ``w * (H g)``, larger = keep (Wang et al. 2020, Eq. 8).

    Removing ``delta = -w`` changes the gradient norm ``g^T g`` by about
    ``-2 w^T H g``. Wang et al. score ``S = -w * (H g)`` and remove the *largest* S,
    i.e. the weights whose removal shrinks gradient flow least (or grows it); keeping
    the largest ``w * (H g)`` is the same ranking. ``H g`` is the gradient of
    ``g . stop_grad(g)`` (double backpropagation), with ``H`` the Hessian of the loss
    with respect to the prunable weights (other parameters are held fixed). The scores
    are signed. Mode and ``masks`` as in :func:`snip`; for a masked network ``H`` and
    ``g`` are those of its kept weights.
    """
    loss, leaves = _loss_and_weights(model, inputs, targets, loss_fn, masks)
    ws = list(leaves.values())
    grads = torch.autograd.grad(loss, ws, create_graph=True, allow_unused=True)
    used = [(w, g) for w, g in zip(ws, grads) if g is not None]
    if not used:
        return {name: torch.zeros_like(w).detach() for name, w in leaves.items()}
    z = sum((g * g.detach()).sum() for _, g in used)
    hg = torch.autograd.grad(z, [w for w, _ in used], allow_unused=True)
    hg_of = {id(w): h for (w, _), h in zip(used, hg)}
    out = {}
    for name, w in leaves.items():
        h = hg_of.get(id(w))
        out[name] = torch.zeros_like(w).detach() if h is None else (w * h).detach()
    return out


@_with_grad
def synflow(model: nn.Module, example_input: Tensor, *,
            masks: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """SynFlow: ``(dR/dw) * w`` with ``R = 1^T (prod_l |W_l|) 1`` (Tanaka et al. 2020).

    Data-free: every parameter and floating buffer is replaced by its absolute value in
    float64 (so the network is linear and positive), the input is one example of all
    ones shaped like ``example_input[:1]``, and ``R`` is the sum of the outputs. For a
    bias-free ReLU network ``R`` is exactly the path norm ``1^T |W_L| ... |W_1| 1``;
    biases (as in Tanaka et al.'s code) add their own positive paths. The pass runs with
    every module in eval mode (BatchNorm uses running statistics), then each module's
    mode is restored: the model is left exactly as it was. ``masks`` as in :func:`snip`.

    Scores are float64 and, for networks of Linear / Conv / ReLU / pooling (and
    BatchNorm at its initial statistics), >= 0 (a mean-subtracting LayerNorm breaks
    positivity). They obey the *conservation law* (Tanaka et al. 2020, Theorem 2): in a
    bias-free network ``R`` is homogeneous of degree 1 in each layer's weights, so by
    Euler's theorem ``sum(w * dR/dw)`` over any one layer equals ``R``: every layer's
    scores sum to the same value.
    """
    if not isinstance(example_input, Tensor):
        raise TypeError(f"example_input must be a Tensor, got {type(example_input).__name__}")
    if example_input.dim() == 0 or len(example_input) == 0:
        raise ValueError(f"example_input must be a non-empty batch, got shape {tuple(example_input.shape)}")
    state, leaves = _functional_state(model, masks, lambda t: t.double().abs())
    ones = torch.ones_like(example_input[:1], dtype=torch.float64)
    with eval_mode(model):
        r = functional_call(model, state, (ones,)).sum()
    grads = torch.autograd.grad(r, list(leaves.values()), allow_unused=True)
    return {
        name: (torch.zeros_like(w) if g is None else g * w).detach()
        for (name, w), g in zip(leaves.items(), grads)
    }
