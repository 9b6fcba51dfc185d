"""Channel shrinking: the *select* and *finalize* steps of structured pruning.

A plan (which output channels of which layers go, from per-channel importance of
:mod:`sparsekit.structured.importance`) and the physical shrinking of a copy of the
model: :func:`shrink_channels` removes whole output channels of Conv/Linear layers and
everything that only existed to compute or consume them (the BatchNorm after them, the
next layer's input columns, residual partners), so what is left is a **smaller dense
model**. The dependencies come from the model's ``torch.fx`` graph
(:func:`channel_groups`, :mod:`sparsekit.graph`, after DepGraph, Fang et al. 2023).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

from .. import _validate
from .. import graph as dep
from ..masking import copy_model, remove_masks
from ..train import eval_mode
from .importance import bn_importance, l1_importance

CHANNEL_SCORES = ("l1", "bn")


# ---------------------------------------------------------------------------------
# Removing channels
# ---------------------------------------------------------------------------------

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


def keep_entries(module: nn.Module, name: str, index: Tensor, dim: int = 0) -> None:
    """Keep only ``index`` along ``dim`` of ``module.<name>`` (a parameter or buffer), in place."""
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
        keep_entries(m, "weight", keep)
        keep_entries(m, "bias", keep)
        if isinstance(m, nn.Linear):
            m.out_features = len(keep)
        else:
            m.out_channels = len(keep)
    for bn in g.norms:
        m = modules[bn]
        for name in ("weight", "bias", "running_mean", "running_var"):
            keep_entries(m, name, keep)
        m.num_features = len(keep)
    for c in g.consumers:
        m = modules[c.module]
        cols = (keep.view(-1, 1) * c.inner + torch.arange(c.inner)).flatten()
        keep_entries(m, "weight", cols, dim=1)
        if isinstance(m, nn.Linear):
            m.in_features = len(cols)
        else:
            m.in_channels = len(cols)


def channel_groups(model: nn.Module, example_input: Tensor) -> list[dep.ChannelGroup]:
    """The model's channel groups (see :func:`sparsekit.graph.channel_groups`); every module keeps its mode."""
    return dep.channel_groups(model, example_input)


def shrink_channels(model: nn.Module, sparsity: float | Mapping[str, float], example_input: Tensor, *,
                    score: str | Mapping[str, Tensor] = "l1", layers: Sequence[str] | None = None,
                    scope: str = "layer") -> nn.Module:
    """A new, physically smaller copy of ``model`` with the least important channels removed.

    Args:
        sparsity: fraction in ``[0, 1)`` of the output channels removed from each layer
            in ``layers``: ``round(sparsity * channels)`` of them; or a mapping
            ``{layer: fraction}`` (then ``layers`` is its keys).
        example_input: a batch the model accepts; the dependency graph is traced on it.
            A forward that branches on tensor values is refused (``ValueError``): the
            graph would hold the example's branch only.
        score: ``"l1"`` (filter norm), ``"bn"`` (``|gamma|`` of the following BatchNorm), or a
            mapping ``{layer: Tensor[channels]}`` such as :func:`~sparsekit.structured.importance.taylor_importance`.
        layers: module names whose output channels are pruned; default every Conv/Linear
            whose output does not reach the model output. Layers tied by a residual
            addition form one group, pruned together and ranked by the summed importance.
        scope: ``"layer"`` (each group loses its own fraction) or ``"global"`` (one
            threshold over the importances of all selected groups, as in network slimming).

    The BatchNorm after a removed channel and the next layer's input columns (through
    ``Flatten`` too) shrink with it. In eval mode the result computes the same function
    when every removed channel is constant (all-zero filter, or ``gamma == 0``): the
    constant's contribution is folded into the next layer's bias. Masks of an
    unstructured-pruned model are baked into the copy first. The original is untouched,
    and every module of the copy has the mode it had in the original.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    new = copy_model(model)
    if any(parametrize.is_parametrized(m) for m in new.modules()):
        remove_masks(new)
    with eval_mode(new):
        plans = _plan(new, sparsity, example_input, score, layers, scope)
        consts = {id(g): _constants(new, g) for g, _, _ in plans}
        for g, _, removed in plans:
            _fold_constants(new, g, removed, consts[id(g)])
        for g, keep, _ in plans:
            _shrink(new, g, keep)
        try:
            with torch.no_grad():
                new(example_input)
        except RuntimeError as err:  # a dependency the analysis missed: say so instead of returning a broken model
            raise ValueError(f"the shrunk {type(model).__name__} no longer runs ({err}); "
                             "its graph has a channel dependency sparsekit.structured does not model") from err
    return new


def _plan(model: nn.Module, sparsity: float | Mapping[str, float], example_input: Tensor,
          score: str | Mapping[str, Tensor], layers: Sequence[str] | None,
          scope: str) -> list[tuple[dep.ChannelGroup, Tensor, Tensor]]:
    """The select step: ``[(group, kept channels, removed channels)]`` for every group to shrink.

    ``model`` is in eval mode (the caller's :func:`sparsekit.train.eval_mode`).
    """
    graph = dep.trace(model, example_input)
    groups = dep.channel_groups(model, example_input, graph)
    by_source = {s: g for g in groups for s in g.sources}

    # Which groups, with which fraction.
    if isinstance(sparsity, Mapping):
        if layers is not None:
            raise ValueError("give layers either as the keys of sparsity or as layers=, not both")
        wanted = {name: _validate.fraction(f, f"sparsity[{name!r}]") for name, f in sparsity.items()}
    else:
        frac = _validate.fraction(sparsity, "sparsity")
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

    scores, kind = _resolve_scores(model, example_input, score)
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
    return plans
