"""Attention heads: *score* (head importance), *select* (which heads) and *finalize* (shrink).

Michel et al. 2019 ("Are Sixteen Heads Really Better than One?") gate every head with a
scalar ``xi_h`` and score it by ``|dL/d xi_h|`` per example, averaged (:func:`head_importance`);
:func:`head_magnitude` is the weight-norm baseline. :func:`select_heads` picks the
globally least important heads, and :func:`shrink_heads` returns a new model whose
q/k/v/out projections are physically smaller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .. import _validate
from ..masking import copy_model, remove_masks
from ..models import MultiHeadSelfAttention
from ..train import eval_mode
from .importance import LossFn, _batches, model_device
from .shrink import keep_entries


def attention_layers(model: nn.Module) -> list[MultiHeadSelfAttention]:
    """The model's attention modules, in order (``head_masks[i]`` goes to the i-th)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    found = [m for m in model.modules() if isinstance(m, MultiHeadSelfAttention)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no MultiHeadSelfAttention layers")
    return found


def head_importance(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn = F.cross_entropy, *,
                    batch_size: int = 128, normalize: bool = True) -> list[Tensor]:
    """``I_h = E_x |dL(x)/d xi_h|`` for every head (Michel et al. 2019, Eq. 2), one tensor per layer.

    ``xi_h`` is a gate (``head_masks``, all ones, on the model's device) multiplying head
    ``h``'s output. As Eq. 2 states, the absolute value is taken **per example** (the gradient
    of example ``x``'s own loss ``loss_fn(model(x[None]), y[None])``), then averaged over the
    examples: a head whose gradient changes sign from one example to the next still counts.
    (The absolute value of a mini-batch's mean gradient would let such signs cancel.)
    The per-example gradients come from ``torch.func.vmap``, ``batch_size`` examples at a
    time, in eval mode (:func:`sparsekit.train.eval_mode`). ``normalize`` divides each layer's
    scores by their L2 norm, as Michel et al. do before global pruning. The model must accept
    ``model(x, head_masks=...)`` like ``TinyTransformer``.
    """
    from torch.func import grad, vmap

    attn = attention_layers(model)
    device = model_device(model)
    gates = [torch.ones(a.num_heads, device=device) for a in attn]
    batches = list(_batches(inputs, targets, batch_size))  # validate before anything runs

    def example_loss(masks: list[Tensor], x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(model(x.unsqueeze(0), head_masks=masks), y.unsqueeze(0))

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))
    totals = [torch.zeros_like(g) for g in gates]
    with eval_mode(model), torch.enable_grad():
        for x, y in batches:
            for total, d in zip(totals, per_example(gates, x.to(device), y.to(device)), strict=True):
                total += d.detach().abs().sum(0)
    scores = [t / len(inputs) for t in totals]
    if normalize:
        scores = [s / s.norm().clamp_min(1e-20) for s in scores]
    return scores


@torch.no_grad()
def head_magnitude(model: nn.Module) -> list[Tensor]:
    """L1 norm of each head's rows of q/k/v and columns of out: the magnitude baseline for heads."""
    out = []
    for a in attention_layers(model):
        h, d = a.num_heads, a.head_dim
        rows = sum(m.weight.abs().reshape(h, d * m.weight.shape[1]).sum(1) for m in (a.q, a.k, a.v))
        cols = a.out.weight.abs().reshape(a.out.weight.shape[0], h, d).sum((0, 2))
        out.append(rows + cols)
    return out


def select_heads(importance: Sequence[Tensor], num_to_prune: int) -> dict[int, list[int]]:
    """The ``num_to_prune`` globally least important heads as ``{layer: [heads]}``.

    Ties are broken toward the earlier layer and the lower head index.
    """
    total = sum(len(s) for s in importance)
    num_to_prune = _validate.integer(num_to_prune, "num_to_prune", low=0, high=total)
    flat = torch.cat([torch.as_tensor(s).detach().float().cpu().flatten() for s in importance])
    where = [(i, h) for i, s in enumerate(importance) for h in range(len(s))]
    chosen: dict[int, list[int]] = {}
    for k in torch.argsort(flat, stable=True)[:num_to_prune].tolist():
        i, h = where[k]
        chosen.setdefault(i, []).append(h)
    return {i: sorted(hs) for i, hs in sorted(chosen.items())}


def shrink_heads(model: nn.Module, heads_to_prune: Mapping[int, Iterable[int]]) -> nn.Module:
    """A new, smaller copy of ``model`` whose attention layers lost the given heads; the original is untouched.

    ``heads_to_prune``: ``{layer index: head indices}`` (indices into the current heads).
    Rows ``h*d:(h+1)*d`` of q/k/v and the same columns of ``out`` are removed, so the
    projections are physically smaller. A layer may lose every head; it then outputs
    ``out.bias``, exactly what the unpruned layer computes with those heads masked.
    Masks of an unstructured-pruned model are baked into the copy first.
    """
    if not isinstance(heads_to_prune, Mapping):
        raise TypeError(f"heads_to_prune must be a mapping layer -> heads, got {type(heads_to_prune).__name__}")
    attention_layers(model)  # refuse a model without attention before copying it
    new = copy_model(model)
    if any(parametrize.is_parametrized(m) for m in new.modules()):
        remove_masks(new)
    attn = attention_layers(new)
    plans = []
    for layer, heads in heads_to_prune.items():  # check everything before anything changes
        if not _validate.is_int(layer) or not 0 <= layer < len(attn):
            raise ValueError(f"heads_to_prune has layer {layer!r}; allowed: 0..{len(attn) - 1}")
        a = attn[layer]
        heads = list(heads)
        bad = [h for h in heads if not _validate.is_int(h) or not 0 <= h < a.num_heads]
        if bad or len(set(heads)) != len(heads):
            raise ValueError(f"heads_to_prune[{layer}] = {heads} must hold distinct ints in [0, {a.num_heads})")
        plans.append((a, [h for h in range(a.num_heads) if h not in set(heads)]))
    for a, keep_heads in plans:
        d = a.head_dim
        rows = torch.tensor([h * d + i for h in keep_heads for i in range(d)], dtype=torch.long)
        for proj in (a.q, a.k, a.v):
            keep_entries(proj, "weight", rows)
            keep_entries(proj, "bias", rows)
            proj.out_features = len(rows)
        keep_entries(a.out, "weight", rows, dim=1)
        a.out.in_features = len(rows)
        a.num_heads = len(keep_heads)
    return new
