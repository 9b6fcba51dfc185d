"""Attention heads: *score* (head importance), *select* (which heads) and *finalize* (shrink).

Michel et al. 2019 ("Are Sixteen Heads Really Better than One?") gate every head with a
scalar ``xi_h`` and score it by ``|dL/d xi_h|`` per example, averaged (:func:`head_importance`);
:func:`head_magnitude` is the weight-norm baseline. :func:`select_heads` picks the
globally least important heads, and :func:`shrink_heads` returns a new model whose
q/k/v/out projections are physically smaller. :func:`prune_heads_iteratively` chains the
three the way Michel et al. prune step by step, re-scoring the smaller model each time.

Both the book's :class:`~sparsekit.models.MultiHeadSelfAttention` and PyTorch's
``nn.MultiheadAttention`` (packed ``in_proj_weight``; torchvision's ViT) are handled.
``nn.MultiheadAttention`` derives its head size from ``embed_dim // num_heads``, so a
copy with fewer heads cannot stay one: :func:`shrink_heads` replaces it by
:class:`ShrunkMultiheadAttention` (same call signature and parameter names, fewer heads).
For ``nn.MultiheadAttention`` the head gate ``xi_h`` scales head ``h``'s columns of
``out_proj.weight`` (the same as scaling the head's output), applied with
``torch.func.functional_call`` so the model itself never changes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from .. import _validate
from ..masking import copy_model, remove_masks
from ..models import MultiHeadSelfAttention
from ..train import eval_mode
from .importance import LossFn, _batches, model_device
from .shrink import keep_entries


class ShrunkMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with fewer heads: what :func:`shrink_heads` puts in its place.

    Same forward signature, parameter names (``in_proj_weight``, ``in_proj_bias``,
    ``out_proj``) and output as the original with the removed heads' outputs set to
    zero; ``embed_dim`` stays the model width while ``num_heads * head_dim`` shrinks.
    Self- and cross-attention with one packed projection (``kdim == vdim == embed_dim``),
    no ``bias_k``/``bias_v``/``add_zero_attn``.
    """

    def __init__(self, mha: nn.MultiheadAttention, keep_heads: Sequence[int]) -> None:
        super().__init__()
        e, h = mha.embed_dim, mha.num_heads
        d = e // h
        self.embed_dim, self.num_heads, self.head_dim = e, len(keep_heads), d
        self.batch_first, self.dropout = mha.batch_first, mha.dropout
        rows = torch.tensor([k * d + i for k in keep_heads for i in range(d)], dtype=torch.long)
        packed = torch.cat([rows + j * e for j in range(3)])
        w = mha.in_proj_weight.detach()
        self.in_proj_weight = nn.Parameter(w[packed].clone(), requires_grad=mha.in_proj_weight.requires_grad)
        self.in_proj_bias = (nn.Parameter(mha.in_proj_bias.detach()[packed].clone())
                             if mha.in_proj_bias is not None else None)
        with warnings.catch_warnings():  # every head removed: a zero-column Linear (it outputs its bias)
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.out_proj = nn.Linear(len(rows), e, bias=mha.out_proj.bias is not None)
        with torch.no_grad():
            self.out_proj.weight.copy_(mha.out_proj.weight[:, rows])
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)
        self.train(mha.training)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        tq, b, _ = query.shape
        tk = key.shape[0]
        h, d = self.num_heads, self.head_dim
        w = self.in_proj_weight.chunk(3)
        bias = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q, k, v = (F.linear(t, wi, bi) for t, wi, bi in zip((query, key, value), w, bias, strict=True))
        q, k, v = (z.reshape(z.shape[0], b * h, d).transpose(0, 1) for z in (q, k, v))  # [b*h, t, d]
        scores = q @ k.transpose(1, 2) / math.sqrt(d)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            m = attn_mask if attn_mask.dim() == 3 else attn_mask.unsqueeze(0)
            if m.shape[0] != 1:  # per (batch, head) masks of the original's heads cannot be mapped here
                raise ValueError("ShrunkMultiheadAttention supports a 2-D attn_mask only")
            scores = scores.masked_fill(m, float("-inf")) if m.dtype == torch.bool else scores + m
        if key_padding_mask is not None:
            kp = key_padding_mask.view(b, 1, 1, tk).expand(b, h, 1, tk).reshape(b * h, 1, tk)
            scores = scores.masked_fill(kp, float("-inf")) if kp.dtype == torch.bool else scores + kp
        attn = F.dropout(torch.softmax(scores, dim=-1), self.dropout, self.training)
        ctx = (attn @ v).transpose(0, 1).reshape(tq, b, h * d)
        out = self.out_proj(ctx)
        if self.batch_first:
            out = out.transpose(0, 1)
        weights = None
        if need_weights:
            weights = attn.view(b, h, tq, tk)
            weights = weights.mean(1) if average_attn_weights else weights
        return out, weights


_ATTENTION = (MultiHeadSelfAttention, nn.MultiheadAttention, ShrunkMultiheadAttention)


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The model's attention modules, in order (``head_masks[i]`` goes to the i-th).

    The book's ``MultiHeadSelfAttention`` and ``nn.MultiheadAttention`` (then
    :func:`mha_layers` names them).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    found = [m for m in model.modules() if isinstance(m, _ATTENTION)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no MultiHeadSelfAttention or nn.MultiheadAttention layers")
    return found


def mha_layers(model: nn.Module) -> dict[str, nn.MultiheadAttention]:
    """``{name: module}`` for every ``nn.MultiheadAttention`` whose heads sparsekit can score and remove."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
                raise ValueError(f"nn.MultiheadAttention {name!r} has separate q/k/v projections, bias_k/bias_v "
                                 "or add_zero_attn; only the packed in_proj_weight form is supported")
            out[name] = m
    return out


def _mha_forward(model: nn.Module, gates: Sequence[Tensor]) -> Callable[[Tensor], Tensor]:
    """``x -> model(x)`` with head ``h`` of the i-th ``nn.MultiheadAttention`` scaled by ``gates[i][h]``."""
    layers = mha_layers(model)

    def forward(x: Tensor) -> Tensor:
        params = {}
        for (name, m), g in zip(layers.items(), gates, strict=True):
            d = m.embed_dim // m.num_heads
            params[f"{name}.out_proj.weight"] = m.out_proj.weight * g.repeat_interleave(d).view(1, -1)
        return functional_call(model, params, (x,), strict=False)

    return forward


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
    ``model(x, head_masks=...)`` like ``TinyTransformer``, or hold ``nn.MultiheadAttention``
    layers (each head gated through its columns of ``out_proj``, ``_mha_forward``).
    """
    from torch.func import grad, vmap

    attn = attention_layers(model)
    device = model_device(model)
    gates = [torch.ones(a.num_heads, device=device) for a in attn]
    batches = list(_batches(inputs, targets, batch_size))  # validate before anything runs
    mha = any(isinstance(a, nn.MultiheadAttention) for a in attn)
    if mha and len(mha_layers(model)) != len(attn):
        raise ValueError(f"{type(model).__name__} mixes nn.MultiheadAttention with other attention layers")

    def example_loss(masks: list[Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = _mha_forward(model, masks)(x.unsqueeze(0)) if mha else model(x.unsqueeze(0), head_masks=masks)
        return loss_fn(out, y.unsqueeze(0))

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))
    totals = [torch.zeros_like(g) for g in gates]
    with eval_mode(model), torch.enable_grad(), warnings.catch_warnings():
        # vmap over nn.MultiheadAttention's fused attention falls back to a loop: a performance note only
        warnings.filterwarnings("ignore", "There is a performance drop because we have not yet implemented")
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
        if isinstance(a, (nn.MultiheadAttention, ShrunkMultiheadAttention)):
            h, e = a.num_heads, a.embed_dim
            d = e // h if isinstance(a, nn.MultiheadAttention) else a.head_dim
            rows = a.in_proj_weight.abs().reshape(3, h, d * e).sum((0, 2))
            out.append(rows + a.out_proj.weight.abs().reshape(e, h, d).sum((0, 2)))
            continue
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
    An ``nn.MultiheadAttention`` is replaced by a :class:`ShrunkMultiheadAttention`.
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
    swaps = {id(m): n for n, m in new.named_modules() if isinstance(m, nn.MultiheadAttention)}
    for a, keep_heads in plans:
        if isinstance(a, nn.MultiheadAttention):
            new.set_submodule(swaps[id(a)], ShrunkMultiheadAttention(a, keep_heads))
            continue
        if isinstance(a, ShrunkMultiheadAttention):
            raise ValueError("shrink heads of an nn.MultiheadAttention once (from the original model)")
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


HeadScore = Callable[[nn.Module], Sequence[Tensor]]
"""``model -> one score tensor per attention layer``, e.g. ``lambda m: head_importance(m, x, y)``."""


def prune_heads_iteratively(model: nn.Module, score: HeadScore, heads_per_step: int = 1, *,
                            min_heads: int = 1) -> Iterator[tuple[int, nn.Module]]:
    """Remove the ``heads_per_step`` least important heads, re-score the smaller model, repeat.

    Michel et al. 2019 prune heads step by step in order of importance, re-estimating the
    importance of the remaining heads after each step (their Figure 3 curves). Yields
    ``(heads removed so far, model)``, starting with ``(0, model)`` itself, and stops before a
    step would leave fewer than ``min_heads`` heads in the whole model. Each step is
    :func:`select_heads` on ``score(current)`` then :func:`shrink_heads`, so every yielded model is
    a new, physically smaller copy; ``model`` is never changed. The book's
    :class:`~sparsekit.models.MultiHeadSelfAttention` only: a shrunk ``nn.MultiheadAttention``
    cannot be shrunk again.
    """
    if not callable(score):
        raise TypeError(f"score must be a callable model -> per-layer scores, got {type(score).__name__}")
    heads_per_step = _validate.positive_int(heads_per_step, "heads_per_step")
    min_heads = _validate.integer(min_heads, "min_heads", low=0)
    if any(isinstance(a, nn.MultiheadAttention) for a in attention_layers(model)):
        raise TypeError("prune_heads_iteratively shrinks a model several times: nn.MultiheadAttention "
                        "can be shrunk once (use select_heads and shrink_heads)")
    current, removed = model, 0
    while True:
        yield removed, current
        left = sum(a.num_heads for a in attention_layers(current))
        if left - heads_per_step < min_heads:
            return
        current = shrink_heads(current, select_heads(score(current), heads_per_step))
        removed += heads_per_step
