"""Structured pruning: remove whole channels, filters and attention heads.

Unstructured pruning zeroes single weights; the tensor keeps its shape, and a dense
kernel does the same work as before. Structured pruning removes a whole output channel
of a layer (a row of a Linear weight, a filter of a Conv) and everything that only
existed to compute or consume it, so what is left is a **smaller dense model** that
runs faster on any hardware.

Importance and removal are separate steps, as everywhere in ``sparsekit``:

* *importance* (one score per output channel, larger = keep):
  :func:`l1_importance` (Li et al. 2017), :func:`bn_importance` (network slimming,
  Liu et al. 2017, trained with :func:`slimming_loss` or :func:`slimming_hook`),
  :func:`taylor_importance` (Molchanov et al. 2019), :func:`random_importance`;
  for attention heads :func:`head_importance` (Michel et al. 2019) and
  :func:`head_magnitude`;
* *removal*: :func:`prune_channels` and :func:`prune_heads` return a new, physically
  smaller model and leave the original untouched. The channel dependencies (BatchNorm,
  the next layer's input, residual groups) come from the model's ``torch.fx`` graph
  (:mod:`sparsekit.graph`, after DepGraph, Fang et al. 2023).
* *cost*: :func:`cost` counts parameters and FLOPs of shrunk models.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

from . import _validate
from . import graph as dep
from .masking import remove_masks
from .models import MultiHeadSelfAttention
from .report import forward_with_hooks

LossFn = Callable[[Tensor, Tensor], Tensor]
CHANNEL_SCORES = ("l1", "bn")


# ---------------------------------------------------------------------------------
# Channel importance: one score per output channel of every Conv/Linear, larger = keep
# ---------------------------------------------------------------------------------

def _sources(model: nn.Module) -> dict[str, nn.Module]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return {n: m for n, m in model.named_modules() if isinstance(m, dep.SOURCE_TYPES)}


@torch.no_grad()
def l1_importance(model: nn.Module) -> dict[str, Tensor]:
    """``{layer: s}`` with ``s_j = sum |W_j|``, the L1 norm of filter ``j`` (Li et al. 2017, Sec. 3.1)."""
    return {n: m.weight.detach().abs().reshape(m.weight.shape[0], -1).sum(1) for n, m in _sources(model).items()}


def random_importance(model: nn.Module, seed: int) -> dict[str, Tensor]:
    """``{layer: uniform random scores}`` from a private generator: the random-channel baseline."""
    gen = torch.Generator().manual_seed(_validate.seed(seed))
    return {n: torch.rand(m.weight.shape[0], generator=gen) for n, m in _sources(model).items()}


@torch.no_grad()
def bn_importance(model: nn.Module, example_input: Tensor) -> dict[str, Tensor]:
    """``{layer: |gamma|}`` of the BatchNorm applied right after each layer (Liu et al. 2017).

    Layers not followed by a BatchNorm are left out. The pairs come from the fx graph.
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


def _batches(inputs: Tensor, targets: Tensor, batch_size: int) -> Iterable[tuple[Tensor, Tensor]]:
    if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
        raise TypeError("inputs and targets must be Tensors")
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise ValueError(f"inputs and targets must be non-empty and equally long, got {len(inputs)}, {len(targets)}")
    batch_size = _validate.positive_int(batch_size, "batch_size")
    for i in range(0, len(inputs), batch_size):
        yield inputs[i:i + batch_size], targets[i:i + batch_size]


def taylor_importance(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn = F.cross_entropy,
                      *, batch_size: int = 128) -> dict[str, Tensor]:
    """First-order Taylor importance of every output channel (Molchanov et al. 2019, Eq. 8).

    A gate ``g_c = 1`` multiplies each output channel; removing the channel sets it to
    0, and the first-order change of the loss is ``dL/dg_c = sum_s g_s w_s`` over the
    channel's parameters. The score is ``(dL/dg_c)^2`` averaged over mini-batches.
    Computed in eval mode (with train-mode BatchNorm a gate before the norm would be
    normalised away); the model's parameters, buffers and mode are left as they were.
    """
    sources = _sources(model)
    gates = {n: torch.ones(m.weight.shape[0], requires_grad=True, device=m.weight.device) for n, m in sources.items()}

    def gate_hook(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            dim = output.dim() - 1 if isinstance(module, nn.Linear) else 1
            shape = [1] * output.dim()
            shape[dim] = -1
            return output * gates[name].view(shape)
        return hook

    handles = [m.register_forward_hook(gate_hook(n)) for n, m in sources.items()]
    scores = {n: torch.zeros(len(g)) for n, g in gates.items()}
    was_training = model.training
    model.eval()
    count = 0
    try:
        for x, y in _batches(inputs, targets, batch_size):
            loss = loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, list(gates.values()), allow_unused=True)
            for (n, _), g in zip(gates.items(), grads, strict=True):
                if g is not None:
                    scores[n] += g.detach().cpu() ** 2
            count += 1
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {n: s / count for n, s in scores.items()}


# ---------------------------------------------------------------------------------
# Removing channels
# ---------------------------------------------------------------------------------

def _check_fraction(value: Any, what: str) -> float:
    return _validate.fraction(value, what)


def _group_label(group: dep.ChannelGroup) -> str:
    return "+".join(repr(s) for s in group.sources)


def _group_scores(group: dep.ChannelGroup, scores: Mapping[str, Tensor], kind: str) -> Tensor:
    """Summed importance of a group's sources (residual groups: the sum over the tied layers)."""
    parts = []
    for src in group.sources:
        if src in scores:
            s = torch.as_tensor(scores[src]).detach().float().cpu().flatten()
            if len(s) != group.channels:
                raise ValueError(f"score for {src!r} has {len(s)} entries, the layer has {group.channels} channels")
            parts.append(s)
    if not parts:
        raise ValueError(f"score {kind!r} has no entry for layer(s) {_group_label(group)}"
                         + ("; the 'bn' score needs a BatchNorm right after the layer" if kind == "bn" else ""))
    return torch.stack(parts).sum(0)


def _resolve_scores(model: nn.Module, example_input: Tensor,
                    score: str | Mapping[str, Tensor]) -> tuple[Mapping[str, Tensor], str]:
    if isinstance(score, Mapping):
        return score, "mapping"
    if score == "l1":
        return l1_importance(model), "l1"
    if score == "bn":
        return bn_importance(model, example_input), "bn"
    raise ValueError(f"score must be one of {CHANNEL_SCORES} or a mapping layer -> Tensor "
                     f"(e.g. taylor_importance(...)), got {score!r}")


def _keep_indices(importance: Tensor, remove: int) -> Tensor:
    """The ``C - remove`` most important channels, in their original order (ties keep the lower index)."""
    order = torch.argsort(-importance, stable=True)
    return order[: len(importance) - remove].sort().values


def _probe(value: Tensor, dim: int, channels: Tensor) -> Tensor:
    shape = [1] * value.dim()
    shape[dim] = -1
    return channels.view(shape)


@torch.no_grad()
def _constants(model: nn.Module, g: dep.ChannelGroup) -> dict[str, tuple[Tensor, Tensor]]:
    """For every node of the group: ``(is_constant[C], value[C])`` of each channel.

    A channel is constant when its filter is all zero (the output is the bias) or its
    BatchNorm has ``gamma == 0`` (the output is ``beta``); activations, pools, reshapes
    and additions of constants keep it constant. Values are propagated by re-running
    each op on a probe tensor with one element per channel (the model is in eval mode).
    """
    modules = dict(model.named_modules())
    state: dict[fx.Node, tuple[Tensor, Tensor]] = {}
    sources = set(g.sources)
    for node in g.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        value = node.meta["value"]
        if node.op == "call_module" and node.target in sources:
            w = module.weight.detach().reshape(g.channels, -1)
            const = (w == 0).all(1)
            vals = module.bias.detach().clone() if module.bias is not None else torch.zeros(g.channels)
        else:
            ins = [a for a in node.all_input_nodes if a in state]
            if isinstance(module, dep.BN_TYPES):
                const_in, v_in = state[ins[0]]
                vals = module(_probe(value, 1, v_in)).flatten()
                gamma_zero = (module.weight == 0) if module.weight is not None else torch.zeros_like(const_in)
                const = const_in | gamma_zero
            elif dep.is_pool(node, module) or dep.is_reshape(node, module):
                const, vals = state[ins[0]]
            else:
                replace = {a: _probe(a.meta["value"], a.meta["channel_dim"], state[a][1]) for a in ins}
                vals = torch.as_tensor(dep.run_node(node, modules, replace)).flatten()
                const = torch.stack([state[a][0] for a in ins]).all(0)
        state[node] = (const, vals.to(torch.float32).cpu())
    return {n.name: s for n, s in state.items()}


def _fold_constants(model: nn.Module, g: dep.ChannelGroup, removed: Tensor,
                    consts: dict[str, tuple[Tensor, Tensor]]) -> None:
    """Add the removed constant channels' contribution to each consumer's bias."""
    modules = dict(model.named_modules())
    for c in g.consumers:
        const, vals = consts[c.node]
        fold = removed[const[removed] & (vals[removed] != 0)]
        if len(fold) == 0:
            continue
        layer = modules[c.module]
        w = layer.weight.detach()
        if isinstance(layer, nn.Linear):
            cols = w.view(w.shape[0], -1, c.inner)[:, fold, :].sum(-1)       # [out, k]
        else:
            cols = w[:, fold].reshape(w.shape[0], len(fold), -1).sum(-1)       # [out, k]
            pad = layer.padding if isinstance(layer.padding, tuple) else (layer.padding,)
            padded = layer.padding == "same" or any(p != 0 for p in pad if isinstance(p, int))
            if layer.padding_mode == "zeros" and padded:
                warnings.warn(f"folding constant channels into {c.module!r}, which zero-pads its input: "
                              "outputs next to the border change (the padding sees 0, not the constant)",
                              stacklevel=3)
        delta = cols @ vals[fold].to(w.dtype)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
        layer.bias.data += delta.to(layer.bias.device)


def _take(module: nn.Module, name: str, index: Tensor, dim: int = 0) -> None:
    t = getattr(module, name)
    if t is None:
        return
    new = t.detach().index_select(dim, index.to(t.device)).clone()
    if isinstance(t, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        module._buffers[name] = new


def _shrink(model: nn.Module, g: dep.ChannelGroup, keep: Tensor) -> None:
    modules = dict(model.named_modules())
    for src in g.sources:
        m = modules[src]
        _take(m, "weight", keep)
        _take(m, "bias", keep)
        if isinstance(m, nn.Linear):
            m.out_features = len(keep)
        else:
            m.out_channels = len(keep)
    for bn in g.norms:
        m = modules[bn]
        for name in ("weight", "bias", "running_mean", "running_var"):
            _take(m, name, keep)
        m.num_features = len(keep)
    for c in g.consumers:
        m = modules[c.module]
        cols = (keep.view(-1, 1) * c.inner + torch.arange(c.inner)).flatten()
        _take(m, "weight", cols, dim=1)
        if isinstance(m, nn.Linear):
            m.in_features = len(cols)
        else:
            m.in_channels = len(cols)


def channel_groups(model: nn.Module, example_input: Tensor) -> list[dep.ChannelGroup]:
    """The model's channel groups (see :func:`sparsekit.graph.channel_groups`)."""
    return dep.channel_groups(model, example_input)


def prune_channels(model: nn.Module, sparsity: float | Mapping[str, float], example_input: Tensor, *,
                   score: str | Mapping[str, Tensor] = "l1", layers: Sequence[str] | None = None,
                   scope: str = "layer") -> nn.Module:
    """A new, physically smaller copy of ``model`` with the least important channels removed.

    Args:
        sparsity: fraction in ``[0, 1)`` of the output channels removed from each layer
            in ``layers``: ``round(sparsity * channels)`` of them; or a mapping
            ``{layer: fraction}`` (then ``layers`` is its keys).
        example_input: a batch the model accepts; the dependency graph is traced on it.
        score: ``"l1"`` (filter norm), ``"bn"`` (``|gamma|`` of the following BatchNorm), or a
            mapping ``{layer: Tensor[channels]}`` such as :func:`taylor_importance`.
        layers: module names whose output channels are pruned; default every Conv/Linear
            whose output does not reach the model output. Layers tied by a residual
            addition form one group, pruned together and ranked by the summed importance.
        scope: ``"layer"`` (each group loses its own fraction) or ``"global"`` (one
            threshold over the importances of all selected groups, as in network slimming).

    The BatchNorm after a removed channel and the next layer's input columns (through
    ``Flatten`` too) shrink with it. In eval mode the result computes the same function
    when every removed channel is constant (all-zero filter, or ``gamma == 0``): the
    constant's contribution is folded into the next layer's bias. Masks of an
    unstructured-pruned model are baked into the copy first. The original is untouched.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    new = copy.deepcopy(model)
    if any(parametrize.is_parametrized(m) for m in new.modules()):
        remove_masks(new)
    was_training = new.training
    new.eval()
    graph = dep.trace(new, example_input)
    groups = dep.channel_groups(new, example_input, graph)
    by_source = {s: g for g in groups for s in g.sources}

    # Which groups, with which fraction.
    if isinstance(sparsity, Mapping):
        if layers is not None:
            raise ValueError("give layers either as the keys of sparsity or as layers=, not both")
        wanted = {name: _check_fraction(f, f"sparsity[{name!r}]") for name, f in sparsity.items()}
    else:
        frac = _check_fraction(sparsity, "sparsity")
        if layers is None:
            names = [s for g in groups for s in g.sources if g.blocked != "its channels reach the model output"]
        elif isinstance(layers, str) or not isinstance(layers, Sequence):
            raise TypeError(f"layers must be a sequence of module names, got {type(layers).__name__}")
        else:
            names = list(layers)
        wanted = {name: frac for name in names}
    chosen: dict[int, tuple[dep.ChannelGroup, float]] = {}
    for name, frac in wanted.items():
        if name not in by_source:
            raise ValueError(f"layers has {name!r}, which is not a Conv/Linear of the model; "
                             f"allowed: {', '.join(by_source)}")
        g = by_source[name]
        if not g.prunable:
            raise ValueError(f"cannot prune the output channels of {name!r}: {g.blocked}")
        if id(g) in chosen and chosen[id(g)][1] != frac:
            raise ValueError(f"{_group_label(g)} are tied by a residual addition and must share one "
                             f"sparsity; got {chosen[id(g)][1]} and {frac}")
        chosen[id(g)] = (g, frac)

    scores, kind = _resolve_scores(new, example_input, score)
    plans: list[tuple[dep.ChannelGroup, Tensor, Tensor]] = []  # group, keep, removed
    imps = {gid: _group_scores(g, scores, kind) for gid, (g, _) in chosen.items()}
    if scope == "global" and chosen:
        fracs = {f for _, f in chosen.values()}
        if len(fracs) > 1:
            raise ValueError("scope='global' needs one sparsity for all layers")
        allimp = torch.cat([imps[gid] for gid in chosen])
        n_remove = round(fracs.pop() * len(allimp))
        order = torch.argsort(allimp, stable=True)
        removed_flat = torch.zeros(len(allimp), dtype=torch.bool)
        removed_flat[order[:n_remove]] = True
        per_group = removed_flat.split([len(imps[gid]) for gid in chosen])
        counts = {gid: int(r.sum()) for gid, r in zip(chosen, per_group, strict=True)}
    else:
        counts = {gid: round(frac * g.channels) for gid, (g, frac) in chosen.items()}
    for gid, (g, frac) in chosen.items():
        n = counts[gid]
        if n >= g.channels:
            raise ValueError(f"removing {n} of {g.channels} channels of {_group_label(g)} (sparsity {frac}, "
                             f"scope {scope!r}) would remove every channel; at least one must remain")
        keep = _keep_indices(imps[gid], n)
        mask = torch.ones(g.channels, dtype=torch.bool)
        mask[keep] = False
        plans.append((g, keep, mask.nonzero().flatten()))

    consts = {id(g): _constants(new, g) for g, _, _ in plans}
    for g, _, removed in plans:
        _fold_constants(new, g, removed, consts[id(g)])
    for g, keep, _ in plans:
        _shrink(new, g, keep)
    try:
        with torch.no_grad():
            new(example_input)
    except RuntimeError as err:  # a dependency the analysis missed: say so instead of returning a broken model
        raise ValueError(f"the pruned {type(model).__name__} no longer runs ({err}); "
                         "its graph has a channel dependency sparsekit.structured does not model") from err
    finally:
        new.train(was_training)
    return new


# ---------------------------------------------------------------------------------
# Attention heads (Michel et al. 2019)
# ---------------------------------------------------------------------------------

def attention_layers(model: nn.Module) -> list[MultiHeadSelfAttention]:
    """The model's attention modules, in order (``head_masks[i]`` goes to the i-th)."""
    found = [m for m in model.modules() if isinstance(m, MultiHeadSelfAttention)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no MultiHeadSelfAttention layers")
    return found


def head_importance(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn = F.cross_entropy, *,
                    batch_size: int = 128, normalize: bool = True) -> list[Tensor]:
    """``I_h = E_x |dL/d xi_h|`` for every head (Michel et al. 2019, Eq. 2), one tensor per layer.

    ``xi_h`` is a gate (``head_masks``, all ones) multiplying head ``h``'s output; the
    absolute gradient is averaged over mini-batches. ``normalize`` divides each
    layer's scores by their L2 norm, as Michel et al. do before global pruning.
    The model must accept ``model(x, head_masks=...)`` like ``TinyTransformer``.
    """
    attn = attention_layers(model)
    masks = [torch.ones(a.num_heads, requires_grad=True) for a in attn]
    total = [torch.zeros(a.num_heads) for a in attn]
    was_training = model.training
    model.eval()
    count = 0
    try:
        for x, y in _batches(inputs, targets, batch_size):
            loss = loss_fn(model(x, head_masks=masks), y)
            grads = torch.autograd.grad(loss, masks, allow_unused=True)
            for t, g in zip(total, grads, strict=True):
                if g is not None:
                    t += g.detach().abs() * len(x)
            count += len(x)
    finally:
        model.train(was_training)
    scores = [t / count for t in total]
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
    flat = torch.cat([torch.as_tensor(s).float().flatten() for s in importance])
    where = [(i, h) for i, s in enumerate(importance) for h in range(len(s))]
    chosen: dict[int, list[int]] = {}
    for k in torch.argsort(flat, stable=True)[:num_to_prune].tolist():
        i, h = where[k]
        chosen.setdefault(i, []).append(h)
    return {i: sorted(hs) for i, hs in sorted(chosen.items())}


def prune_heads(model: nn.Module, heads_to_prune: Mapping[int, Iterable[int]]) -> nn.Module:
    """A new copy of ``model`` whose attention layers lost the given heads.

    ``heads_to_prune``: ``{layer index: head indices}`` (indices into the current heads).
    Rows ``h*d:(h+1)*d`` of q/k/v and the same columns of ``out`` are removed, so the
    projections are physically smaller. A layer may lose every head; it then outputs
    ``out.bias``, exactly what the unpruned layer computes with those heads masked.
    """
    if not isinstance(heads_to_prune, Mapping):
        raise TypeError(f"heads_to_prune must be a mapping layer -> heads, got {type(heads_to_prune).__name__}")
    new = copy.deepcopy(model)
    if any(parametrize.is_parametrized(m) for m in new.modules()):
        remove_masks(new)
    attn = attention_layers(new)
    for layer, heads in heads_to_prune.items():
        if not _validate.is_int(layer) or not 0 <= layer < len(attn):
            raise ValueError(f"heads_to_prune has layer {layer!r}; allowed: 0..{len(attn) - 1}")
        a = attn[layer]
        heads = list(heads)
        bad = [h for h in heads if not _validate.is_int(h) or not 0 <= h < a.num_heads]
        if bad or len(set(heads)) != len(heads):
            raise ValueError(f"heads_to_prune[{layer}] = {heads} must hold distinct ints in [0, {a.num_heads})")
        keep_heads = [h for h in range(a.num_heads) if h not in set(heads)]
        d = a.head_dim
        rows = torch.tensor([h * d + i for h in keep_heads for i in range(d)], dtype=torch.long)
        for proj in (a.q, a.k, a.v):
            _take(proj, "weight", rows)
            _take(proj, "bias", rows)
            proj.out_features = len(rows)
        _take(a.out, "weight", rows, dim=1)
        a.out.in_features = len(rows)
        a.num_heads = len(keep_heads)
    return new


# ---------------------------------------------------------------------------------
# What a (shrunk) model costs
# ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cost:
    """Parameters and FLOPs (a multiply-add counts 2) of one forward pass."""

    params: int
    flops: int

    def __str__(self) -> str:
        return f"{self.params:,} params, {self.flops / 1e6:.2f} MFLOPs"


@torch.no_grad()
def cost(model: nn.Module, example_input: Tensor) -> Cost:
    """Parameters and FLOPs of ``model(example_input)`` (for the whole batch).

    Counts Linear and Conv layers (``2 * weight.numel()`` per output position) and the
    two attention matmuls ``Q K^T`` and ``A V`` (``2 * 2 * heads * T^2 * head_dim`` per
    example); norms and activations are ignored. Works on shrunk models, including
    attention layers with no heads left.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    flops = 0

    def dense(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        nonlocal flops
        w = module.weight
        if isinstance(module, nn.Linear):  # every leading dim is a position (either side may be 0 wide)
            positions = (args[0].numel() // module.in_features if module.in_features
                         else output.numel() // max(module.out_features, 1))
        else:
            positions = output.shape[0] * math.prod(output.shape[2:])
        flops += 2 * w.numel() * positions

    def attention(module: MultiHeadSelfAttention, args: tuple[Any, ...], output: Tensor) -> None:
        nonlocal flops
        b, t = args[0].shape[:2]
        flops += 2 * 2 * b * module.num_heads * t * t * module.head_dim

    hooks = [(m, dense) for m in model.modules() if isinstance(m, dep.SOURCE_TYPES)]
    hooks += [(m, attention) for m in model.modules() if isinstance(m, MultiHeadSelfAttention)]
    forward_with_hooks(model, example_input, hooks)
    return Cost(params=sum(p.numel() for p in model.parameters()), flops=flops)
