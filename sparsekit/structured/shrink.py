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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.func import functional_call
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


@dataclass
class ChannelPlan:
    """Which channels :func:`shrink_channels` removed, and which groups it left alone and why.

    ``removed``: ``{source layer: removed output channels}`` (indices into the original
    layer) for every layer that lost channels; ``skipped``: ``{group label: reason}`` for
    the groups the default call could not prune (``strict=True`` raises instead).
    ``removed`` alone rebuilds the shrunk model from a fresh one (:func:`apply_plan`).
    """

    removed: dict[str, Tensor] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def state(self) -> dict[str, Tensor]:
        """``removed`` as plain tensors (what :func:`save_shrunk` stores)."""
        return {k: v.clone() for k, v in self.removed.items()}


def _atom_scores(deps: dep.Dependencies, scores: Mapping[str, Tensor]) -> Tensor:
    """One score per atom (NaN where the layer has no score)."""
    out = torch.full((len(deps.atom_source),), float("nan"))
    for src, start, stop in _layer_spans(deps):
        if src in scores:
            s = torch.as_tensor(scores[src]).detach().float().cpu().flatten()
            if len(s) != stop - start:
                raise ValueError(f"score for {src!r} has {len(s)} entries, the layer has {stop - start} channels")
            out[start:stop] = s
    return out


def _layer_spans(deps: dep.Dependencies) -> Iterator[tuple[str, int, int]]:
    """``(layer, start, stop)``: the atoms of each layer, which ``atom_source`` lists contiguously."""
    start = 0
    while start < len(deps.atom_source):
        src = deps.atom_source[start]
        stop = start
        while stop < len(deps.atom_source) and deps.atom_source[stop] == src:
            stop += 1
        yield src, start, stop
        start = stop


def _group_scores(group: dep.ChannelGroup, atom_scores: Tensor, kind: str) -> Tensor:
    """Summed importance of each unit's atoms (residual groups: the sum over the tied layers)."""
    vals = atom_scores[group.atoms]
    if bool(vals.isnan().all()):
        raise ValueError(f"score {kind!r} has no entry for layer(s) {_group_label(group)}"
                         + ("; the 'bn' score needs a BatchNorm right after the layer" if kind == "bn" else ""))
    return torch.zeros(group.channels).index_add_(0, group.atom_unit, vals.nan_to_num(0.0))


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


def _removed_units(group: dep.ChannelGroup, imp: Tensor, n: int) -> Tensor:
    """``n`` least important units; a grouped convolution's blocks each lose ``n / blocks`` of them."""
    if group.blocks is None:
        keep = _keep_indices(imp, n)
        mask = torch.ones(group.channels, dtype=torch.bool)
        mask[keep] = False
        return mask
    per = n // len(group.blocks)
    mask = torch.zeros(group.channels, dtype=torch.bool)
    for blk in group.blocks:
        idx = torch.tensor(blk)
        mask[idx[torch.argsort(imp[idx], stable=True)[:per]]] = True
    return mask


def _fill(state: tuple[Tensor, Tensor], shape: torch.Size) -> tuple[Tensor, Tensor]:
    const, val = state
    return const.expand(shape), val.expand(shape)


def _narrow_like(t: Tensor, ids: Tensor) -> Tensor:
    for d in range(t.dim()):
        if ids.shape[d] == 1 and t.shape[d] > 1:
            t = t.narrow(d, 0, 1)
    return t.contiguous()


@torch.no_grad()
def _constants(model: nn.Module, deps: dep.Dependencies) -> dict[fx.Node, tuple[Tensor, Tensor]]:
    """For every node carrying channels: ``(is_constant, value)`` per element of its id tensor.

    A channel is constant when its filter is all zero (the output is the bias) or its
    BatchNorm has ``gamma == 0`` (the output is ``beta``); activations, pools, means,
    reshapes, and additions or products of constants keep it constant. Values are
    propagated by re-running each op on probe tensors shaped like the id tensors (the
    model is in eval mode); any op not known to keep constants makes them non-constant.
    """
    modules = dict(model.named_modules())
    state: dict[fx.Node, Any] = {}
    if not _any_constant(modules, deps):
        return state

    def false_like(ids: Tensor) -> tuple[Tensor, Tensor]:
        return torch.zeros(ids.shape, dtype=torch.bool), torch.zeros(ids.shape)

    for node, ids in deps.ids.items():
        kind = node.meta.get("sk_kind")
        ins = [a for a in node.all_input_nodes if a in state]
        module = modules.get(node.target) if node.op == "call_module" else None
        try:
            if kind in ("source", "dw"):
                w = module.weight.detach()
                c = (w.reshape(w.shape[0], -1) == 0).all(1)
                v = module.bias.detach().float() if module.bias is not None else torch.zeros(w.shape[0])
                dim = 1 if kind == "dw" or not isinstance(module, nn.Linear) else ids.dim() - 1
                state[node] = (dep._channel_view(c, ids.dim(), dim), dep._channel_view(v.clone(), ids.dim(), dim))
            elif kind == "bn":
                c, v = state[ins[0]]
                gamma_zero = ((module.weight == 0) if module.weight is not None
                              else torch.zeros(ids.shape[1], dtype=torch.bool))
                v = module(v.expand(ids.shape).to(module.running_mean.dtype if module.running_mean is not None
                                                  else torch.float32)).float()
                state[node] = (c | dep._channel_view(gamma_zero, ids.dim(), 1), v)
            elif kind == "pool":
                state[node] = state[ins[0]]
            elif kind == "mean":
                c, v = state[ins[0]]
                state[node] = (c.reshape(ids.shape), v.reshape(ids.shape))
            elif kind == "pass":
                c, v = state[ins[0]]
                out = torch.as_tensor(dep.run_node(node, modules, {ins[0]: v}))
                state[node] = (c, out.float()) if out.shape == v.shape else false_like(ids)
            elif kind == "move":
                def full(a: fx.Node, which: int) -> Any:
                    value = a.meta["value"]
                    if a in state:
                        x = state[a]
                        if isinstance(value, Tensor):
                            return x[which].expand(value.shape).contiguous()
                        return type(value)(s[which].expand(t.shape).contiguous() if s is not None else t
                                           for s, t in zip(x, value, strict=True))
                    if isinstance(value, Tensor):
                        return torch.zeros(value.shape, dtype=torch.bool if which == 0 else torch.float32)
                    return type(value)(torch.zeros(t.shape, dtype=torch.bool if which == 0 else torch.float32)
                                       if isinstance(t, Tensor) else t for t in value)
                srcs = [a for a in node.all_input_nodes if dep._flat_ids(a.meta.get("value"))]
                outs = [dep.run_node(node, modules, {a: full(a, k) for a in srcs}) for k in (0, 1)]
                if isinstance(ids, Tensor):
                    state[node] = (_narrow_like(outs[0], ids), _narrow_like(outs[1], ids))
                else:
                    state[node] = tuple((_narrow_like(c, i), _narrow_like(v, i)) if isinstance(i, Tensor) else None
                                        for c, v, i in zip(outs[0], outs[1], ids, strict=True))
            elif kind == "binary":
                tensors = [a for a in node.all_input_nodes if isinstance(a.meta.get("value"), Tensor)]
                if any(a not in state and a.meta["value"].numel() > 1 for a in tensors):
                    state[node] = false_like(ids)
                    continue
                carried = [a for a in tensors if a in state]
                out = torch.as_tensor(dep.run_node(node, modules, {a: state[a][1] for a in carried})).float()
                c = torch.ones((), dtype=torch.bool)
                for a in carried:
                    c = c & state[a][0]
                c, out = torch.broadcast_tensors(c, out)
                state[node] = (_narrow_like(c, ids), _narrow_like(out, ids))
            elif isinstance(ids, Tensor):
                state[node] = false_like(ids)
        except (RuntimeError, KeyError, TypeError, IndexError):
            if isinstance(ids, Tensor):
                state[node] = false_like(ids)
    return state


def _any_constant(modules: Mapping[str, nn.Module], deps: dep.Dependencies) -> bool:
    """True when some channel can be constant: an all-zero filter, or a BatchNorm with ``gamma == 0``."""
    with torch.no_grad():
        for r in deps.roles:
            m = modules[r.module]
            if r.kind in ("out", "dw") and int(torch.count_nonzero(m.weight)) < m.weight.numel() \
                    and bool((m.weight.reshape(m.weight.shape[0], -1) == 0).all(1).any()):
                return True
            if r.kind == "bn" and m.weight is not None and bool((m.weight == 0).any()):
                return True
    return False


def _fold_constants(model: nn.Module, deps: dep.Dependencies, removed: Tensor,
                    consts: dict[fx.Node, Any]) -> None:
    """Add the removed constant channels' contribution to each consumer's bias."""
    modules = dict(model.named_modules())
    for r in deps.roles:
        if r.kind not in ("in", "gin") or r.node not in consts or not isinstance(consts[r.node], tuple) \
                or not isinstance(consts[r.node][0], Tensor):
            continue
        layer = modules[r.module]
        linear = isinstance(layer, nn.Linear)
        ids = deps.ids[r.node]
        cdim = ids.dim() - 1 if linear else 1
        const, vals = consts[r.node]
        const = dep._line(const.expand(ids.shape) if const.shape != ids.shape else const, cdim, len(r.atoms))
        vals = dep._line(vals.expand(ids.shape) if vals.shape != ids.shape else vals, cdim, len(r.atoms))
        gone = (r.atoms >= 0) & removed[r.atoms.clamp_min(0)]
        fold = (gone & const & (vals != 0)).nonzero().flatten()
        if len(fold) == 0:
            continue
        w = layer.weight.detach()
        if not linear:
            pad = layer.padding if isinstance(layer.padding, tuple) else (layer.padding,)
            padded = layer.padding == "same" or any(p != 0 for p in pad if isinstance(p, int))
            if layer.padding_mode == "zeros" and padded:
                warnings.warn(f"folding constant channels into {r.module!r}, which zero-pads its input: "
                              "outputs next to the border change (the padding sees 0, not the constant)",
                              stacklevel=3)
        w2 = w.reshape(w.shape[0], w.shape[1], -1).sum(-1) if not linear else w   # [out, in/groups]
        if r.kind == "in":
            delta = w2[:, fold] @ vals[fold].to(w.dtype)
        else:
            groups = layer.groups
            in_g, out_g = w.shape[1], w.shape[0] // groups
            delta = torch.zeros(w.shape[0], dtype=w.dtype)
            for p in fold.tolist():
                j = p // in_g
                delta[j * out_g:(j + 1) * out_g] += w2[j * out_g:(j + 1) * out_g, p - j * in_g] * vals[p].to(w.dtype)
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


def _apply(model: nn.Module, deps: dep.Dependencies, removed: Tensor) -> None:
    """Remove the ``removed`` atoms (bool per atom) from every module dimension they index, in place."""
    modules = dict(model.named_modules())
    order = {"in": 0, "gin": 0, "out": 1, "dw": 1, "bn": 1, "ln": 1, "param": 1}
    for r in sorted(deps.roles, key=lambda r: order[r.kind]):
        keep = (r.atoms < 0) | ~removed[r.atoms.clamp_min(0)]
        if bool(keep.all()):
            continue
        idx = keep.nonzero().flatten()
        m = modules[r.module]
        if r.kind == "out":
            keep_entries(m, "weight", idx)
            keep_entries(m, "bias", idx)
            if isinstance(m, nn.Linear):
                m.out_features = len(idx)
            else:
                m.out_channels = len(idx)
        elif r.kind == "dw":
            mult = m.out_channels // m.groups
            keep_entries(m, "weight", idx)
            keep_entries(m, "bias", idx)
            m.out_channels = len(idx)
            m.in_channels = m.groups = len(idx) // mult
        elif r.kind == "bn":
            for name in ("weight", "bias", "running_mean", "running_var"):
                keep_entries(m, name, idx)
            m.num_features = len(idx)
        elif r.kind == "ln":
            keep_entries(m, "weight", idx)
            keep_entries(m, "bias", idx)
            m.normalized_shape = (len(idx),)
        elif r.kind == "param":
            keep_entries(m, r.attr, idx, dim=r.dim)
        elif r.kind == "in":
            keep_entries(m, "weight", idx, dim=1)
            if isinstance(m, nn.Linear):
                m.in_features = len(idx)
            else:
                m.in_channels = len(idx)
        else:  # "gin": every group of the convolution keeps its own columns
            g = m.groups
            blocks = keep.view(g, -1)
            counts = blocks.sum(1)
            if len(set(counts.tolist())) != 1:
                raise ValueError(f"grouped convolution {r.module!r} would keep {counts.tolist()} input channels "
                                 "per group; every group must keep the same number")
            w = m.weight.detach()
            out_g = w.shape[0] // g
            parts = [w[j * out_g:(j + 1) * out_g][:, blocks[j]] for j in range(g)]
            m.weight = nn.Parameter(torch.cat(parts).clone(), requires_grad=m.weight.requires_grad)
            m.in_channels = int(counts.sum())


def channel_groups(model: nn.Module, example_input: Tensor) -> list[dep.ChannelGroup]:
    """The model's channel groups (see :func:`sparsekit.graph.channel_groups`); every module keeps its mode."""
    return dep.channel_groups(model, example_input)


def shrink_channels(model: nn.Module, sparsity: float | Mapping[str, float], example_input: Tensor, *,
                    score: str | Mapping[str, Tensor] = "l1", layers: Sequence[str] | None = None,
                    scope: str = "layer", max_fraction: float | None = None, strict: bool = False,
                    allow_inexact: bool = False) -> nn.Module:
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
        layers: module names whose output channels are pruned; default every group that
            can be pruned (groups that cannot are skipped and listed in the returned
            model's ``channel_plan.skipped`` with the reason). Layers tied together
            (residual additions, gates, depthwise convolutions) form one group, pruned
            together and ranked by the summed importance. Naming a layer that cannot be
            pruned raises ``ValueError``.
        scope: ``"layer"`` (each group loses its own fraction) or ``"global"`` (one
            threshold over the importances of all selected groups, as in network slimming).
        max_fraction: with ``scope="global"``, the largest fraction of any one group that
            may go (Torch-Pruning's ``max_pruning_ratio``); default: all but one channel.
            The global threshold skips channels of groups at their limit, so no layer is
            ever emptied.
        strict: raise ``ValueError`` for a group the default call would skip.
        allow_inexact: also prune channels that a LayerNorm normalizes over (ConvNeXt,
            ViT), with the norm's weight and bias. The pruned model then normalizes over
            the kept channels only, so it computes a different function: a
            ``UserWarning`` names the LayerNorms. Default: such groups are skipped.

    The BatchNorm after a removed channel, depthwise filters, and the next layer's input
    columns (through ``Flatten``, concatenations, splits and channel shuffles too)
    shrink with it. In eval mode the result computes the same function when every
    removed channel is constant (all-zero filter, or ``gamma == 0``): the constant's
    contribution is folded into the next layer's bias. Masks of an unstructured-pruned
    model are baked into the copy first. The original is untouched, and every module of
    the copy has the mode it had in the original. The returned model carries the plan as
    ``channel_plan`` (:class:`ChannelPlan`): what went, what was skipped.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if max_fraction is not None:
        max_fraction = _validate.fraction(max_fraction, "max_fraction")
    _validate_bool(strict, "strict")
    new = copy_model(model)
    if any(parametrize.is_parametrized(m) for m in new.modules()):
        remove_masks(new)
    with eval_mode(new):
        deps = dep.dependencies(new, example_input, allow_inexact=_validate_bool(allow_inexact, "allow_inexact"))
        removed, plan = _plan(new, deps, sparsity, example_input, score, layers, scope, max_fraction, strict)
        touched = sorted({r.module for r in deps.roles if r.kind == "ln"
                          and bool(((r.atoms >= 0) & removed[r.atoms.clamp_min(0)]).any())})
        if touched:
            warnings.warn(f"allow_inexact: channels normalized by LayerNorm {touched} are removed; these norms "
                          "now take their mean and variance over the kept channels only, so the pruned model "
                          "computes a different function (fine-tune it)", UserWarning, stacklevel=2)
        _fold_constants(new, deps, removed, _constants(new, deps))
        _apply(new, deps, removed)
        _check_runs(new, model, example_input)
    new.channel_plan = plan
    return new


def _validate_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _check_runs(new: nn.Module, model: nn.Module, example_input: Tensor) -> None:
    """The shrunk copy must run on the example: for a large example checked on the ``meta`` device
    (shapes only), else (and when meta fails) for real."""
    if dep._work(new, example_input) <= dep.META_ABOVE:
        tensors = {}
    else:
        tensors = dict(new.named_parameters())
        tensors.update(dict(new.named_buffers()))
    try:
        if tensors:
            meta = {k: torch.empty_like(v, device="meta") for k, v in tensors.items()}
            with torch.no_grad():
                functional_call(new, meta, (example_input.to("meta"),), strict=False)
            return
    except Exception:  # noqa: BLE001, S110 - whatever failed on meta tensors is decided by the real run below
        pass
    try:
        with torch.no_grad():
            new(example_input)
    except RuntimeError as err:  # a dependency the analysis missed: say so instead of returning a broken model
        raise ValueError(f"the shrunk {type(model).__name__} no longer runs ({err}); "
                         "its graph has a channel dependency sparsekit.structured does not model") from err


def _plan(model: nn.Module, deps: dep.Dependencies, sparsity: float | Mapping[str, float], example_input: Tensor,
          score: str | Mapping[str, Tensor], layers: Sequence[str] | None, scope: str,
          max_fraction: float | None, strict: bool) -> tuple[Tensor, ChannelPlan]:
    """The select step: the removed atoms (bool per atom) and the :class:`ChannelPlan`.

    ``model`` is in eval mode (the caller's :func:`sparsekit.train.eval_mode`).
    """
    groups = deps.groups
    by_source = {s: g for g in groups for s in g.sources}
    output_only = "its channels reach the model output"
    plan = ChannelPlan()

    # Which groups, with which fraction.
    if isinstance(sparsity, Mapping):
        if layers is not None:
            raise ValueError("give layers either as the keys of sparsity or as layers=, not both")
        wanted = {name: _validate.fraction(f, f"sparsity[{name!r}]") for name, f in sparsity.items()}
    else:
        frac = _validate.fraction(sparsity, "sparsity")
        if layers is None:
            names = []
            for g in groups:
                if g.prunable:
                    names += g.sources
                elif strict and g.blocked != output_only:
                    raise ValueError(f"cannot prune the output channels of {g.sources[0]!r}: {g.blocked}")
                elif g.blocked != output_only:
                    plan.skipped[_group_label(g)] = str(g.blocked)
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
            raise ValueError(f"{_group_label(g)} are tied together and must share one "
                             f"sparsity; got {chosen[id(g)][1]} and {frac}")
        chosen[id(g)] = (g, frac)

    scores, kind = _resolve_scores(model, example_input, score)
    atom_scores = _atom_scores(deps, scores)
    imps = {gid: _group_scores(g, atom_scores, kind) for gid, (g, _) in chosen.items()}
    if scope == "global" and chosen:
        counts = _global_counts(chosen, imps, max_fraction)
    else:
        counts = {}
        for gid, (g, frac) in chosen.items():
            if g.blocks is None:
                counts[gid] = round(frac * g.channels)
            else:
                nb = len(g.blocks)
                counts[gid] = round(frac * g.channels / nb) * nb
    removed = torch.zeros(len(deps.atom_source), dtype=torch.bool)
    for gid, (g, frac) in chosen.items():
        n = counts[gid]
        if n >= g.channels:
            raise ValueError(f"removing {n} of {g.channels} channels of {_group_label(g)} (sparsity {frac}, "
                             f"scope {scope!r}) would remove every channel; at least one must remain")
        gone = _removed_units(g, imps[gid], n)
        removed[g.atoms] = gone[g.atom_unit]
    for name, start, stop in _layer_spans(deps):
        r = removed[start:stop].nonzero().flatten()
        if len(r):
            plan.removed[name] = r
    return removed, plan


def _global_counts(chosen: Mapping[int, tuple[dep.ChannelGroup, float]], imps: Mapping[int, Tensor],
                   max_fraction: float | None) -> dict[int, int]:
    """How many units each group loses under one global threshold, no group beyond its limit.

    Units are taken in order of importance (lowest first, ties: earlier group, lower
    index); a group at its limit (``floor(max_fraction * C)``, at most ``C - 1``) is
    passed over, so the total is exactly ``round(sparsity * total)`` unless the limits
    make that impossible (``ValueError``).
    """
    fracs = {f for _, f in chosen.values()}
    if len(fracs) > 1:
        raise ValueError("scope='global' needs one sparsity for all layers")
    frac = fracs.pop()
    gids = list(chosen)
    allimp = torch.cat([imps[gid] for gid in gids])
    owner = torch.cat([torch.full((len(imps[gid]),), i) for i, gid in enumerate(gids)])
    n_remove = round(frac * len(allimp))
    limits = []
    for gid in gids:
        c = chosen[gid][0].channels
        limits.append(min(c - 1, int(max_fraction * c + 1e-9)) if max_fraction is not None else c - 1)
    order = torch.argsort(allimp, stable=True)
    counts = [0] * len(gids)
    taken = 0
    for i in owner[order].tolist():
        if taken == n_remove:
            break
        if counts[i] < limits[i]:
            counts[i] += 1
            taken += 1
    if taken < n_remove:
        raise ValueError(f"scope='global' cannot remove {n_remove} channels when no group may lose more than "
                         f"max_fraction={max_fraction} of its channels (at most {sum(limits)})")
    out = {}
    for i, gid in enumerate(gids):
        g = chosen[gid][0]
        nb = len(g.blocks) if g.blocks is not None else 1
        out[gid] = counts[i] // nb * nb
    return out


# ---------------------------------------------------------------------------------
# The zero-channel reference, and plans that rebuild a shrunk model
# ---------------------------------------------------------------------------------

def _removed_atoms(deps: dep.Dependencies, removed: Mapping[str, Tensor]) -> Tensor:
    """``{source: removed channels}`` as a bool per atom of ``deps``."""
    if not isinstance(removed, Mapping):
        raise TypeError(f"plan must be a ChannelPlan or a mapping layer -> channels, got {type(removed).__name__}")
    start: dict[str, int] = {}
    count: dict[str, int] = {}
    for a, s in enumerate(deps.atom_source):
        start.setdefault(s, a)
        count[s] = count.get(s, 0) + 1
    out = torch.zeros(len(deps.atom_source), dtype=torch.bool)
    for name, idx in removed.items():
        if name not in start:
            raise ValueError(f"plan names {name!r}, which is not a Conv/Linear output of the model")
        idx = torch.as_tensor(idx, dtype=torch.long).flatten()
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= count[name]):
            raise ValueError(f"plan removes channels {idx.tolist()} of {name!r}, which has {count[name]}")
        out[start[name] + idx] = True
    for g in deps.groups:  # a unit goes whole or not at all
        hits = torch.zeros(g.channels, dtype=torch.long).index_add_(0, g.atom_unit, out[g.atoms].long())
        sizes = torch.bincount(g.atom_unit, minlength=g.channels)
        if bool(((hits > 0) & (hits < sizes)).any()):
            raise ValueError(f"plan removes part of a tied unit of {_group_label(g)}: channels tied together "
                                 "must be removed together")
    return out


def _plan_mapping(plan: ChannelPlan | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    return plan.removed if isinstance(plan, ChannelPlan) else plan


def cut_removed_inputs(model: nn.Module, plan: ChannelPlan | Mapping[str, Tensor],
                       example_input: Tensor) -> nn.Module:
    """A copy of ``model`` in which every weight that *reads* a removed channel is zero: the zero-channel reference.

    Removing a channel and cutting every edge that reads it compute the same function,
    so ``shrink_channels(model, ...)`` must equal ``cut_removed_inputs(model,
    small.channel_plan, x)`` (up to rounding). The consumers' input columns (grouped
    convolutions: each group's own columns) are zeroed; nothing is removed.
    """
    ref = copy_model(model)
    with eval_mode(ref):
        deps = dep.dependencies(ref, example_input)
        removed = _removed_atoms(deps, _plan_mapping(plan))
    modules = dict(ref.named_modules())
    with torch.no_grad():
        for r in deps.roles:
            if r.kind not in ("in", "gin"):
                continue
            gone = ((r.atoms >= 0) & removed[r.atoms.clamp_min(0)]).nonzero().flatten()
            w = modules[r.module].weight
            if r.kind == "in":
                w[:, gone] = 0.0
            else:
                in_g, out_g = w.shape[1], w.shape[0] // modules[r.module].groups
                for p in gone.tolist():
                    j = p // in_g
                    w[j * out_g:(j + 1) * out_g, p - j * in_g] = 0.0
    return ref


def apply_plan(model: nn.Module, plan: ChannelPlan | Mapping[str, Tensor], example_input: Tensor) -> nn.Module:
    """A new, smaller copy of ``model`` with exactly the channels of ``plan`` removed (no scores, no selection).

    ``plan``: a :class:`ChannelPlan` or its ``removed`` mapping ``{layer: channels}``. On
    a fresh model from the same constructor this rebuilds the architecture of the model
    ``shrink_channels`` returned, so its ``state_dict`` loads (:func:`load_shrunk`).
    Constant removed channels are folded into the consumers' biases, as in
    :func:`shrink_channels`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    new = copy_model(model)
    if any(parametrize.is_parametrized(m) for m in new.modules()):
        remove_masks(new)
    mapping = _plan_mapping(plan)
    with eval_mode(new):
        deps = dep.dependencies(new, example_input)
        removed = _removed_atoms(deps, mapping)
        _fold_constants(new, deps, removed, _constants(new, deps))
        _apply(new, deps, removed)
        _check_runs(new, model, example_input)
    new.channel_plan = ChannelPlan(removed={k: torch.as_tensor(v, dtype=torch.long).clone()
                                            for k, v in mapping.items()})
    return new


def save_shrunk(model: nn.Module, f: Any) -> None:
    """Save a model returned by :func:`shrink_channels` as ``{"plan": {layer: removed}, "state_dict": ...}``.

    Only tensors and strings: it loads with ``torch.load(f, weights_only=True)``.
    """
    plan = getattr(model, "channel_plan", None)
    if not isinstance(plan, ChannelPlan):
        raise ValueError(f"{type(model).__name__} has no channel_plan; save a model returned by shrink_channels")
    torch.save({"plan": plan.state(), "state_dict": model.state_dict()}, f)


def load_shrunk(model: nn.Module, f: Any, example_input: Tensor) -> nn.Module:
    """Rebuild a shrunk model saved by :func:`save_shrunk` from a fresh ``model`` of the same constructor.

    Reads with ``torch.load(f, weights_only=True)``, shrinks a copy of ``model`` by the
    saved plan (:func:`apply_plan`), then loads the saved weights into it (strict).
    """
    saved = torch.load(f, weights_only=True)
    if not isinstance(saved, dict) or set(saved) != {"plan", "state_dict"}:
        raise ValueError("the file does not hold a model saved by save_shrunk")
    new = apply_plan(model, saved["plan"], example_input)
    new.load_state_dict(saved["state_dict"])
    return new
