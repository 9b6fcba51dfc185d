"""Channel permutations for N:M sparsity (Pool & Yu 2021): a step before *select*.

In score -> select -> mask -> train -> finalize, an N:M mask (*select*) can only keep
``n`` of each group of ``m`` consecutive input channels, so which channels share a group
matters. Permuting a layer's input channels together with the previous layer's output
channels leaves the network's function unchanged (Pool & Yu 2021, "Channel Permutations
for N:M Sparsity", Sec. 3) and can raise the magnitude the mask keeps.

This module holds, top to bottom: the objective ``kept_magnitude``, the greedy
channel-swap search ``search_permutation``, ``permute_channels`` (one producer /
consumer pair) and ``permute_for_nm`` (search and apply over a model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .masking import stored_weight, weight_name
from .nm import check_nm, group_view, nm_mask

__all__ = ["kept_magnitude", "search_permutation", "permute_channels", "permute_for_nm"]


def kept_magnitude(w: Tensor, n: int = 2, m: int = 4) -> float:
    """Sum of ``|w|`` that an N:M mask keeps (Pool & Yu 2021's objective)."""
    flat = group_view(w).detach().abs().float()
    return float((flat * nm_mask(flat, n, m)).sum())


def _group_kept(a: Tensor, n: int) -> Tensor:
    """``a [..., rows, m]`` (magnitudes) -> kept magnitude of each group summed over rows."""
    return a.topk(n, dim=-1).values.sum(-1).sum(-1)


def search_permutation(weight: Tensor, n: int = 2, m: int = 4, *, max_iters: int = 1000,
                       tol: float = 1e-6) -> Tensor:
    """A permutation ``perm`` of the input columns that increases the magnitude N:M keeps.

    Greedy channel swaps (Pool & Yu 2021, Sec. 4.2 "channel swap"): among all swaps of two
    columns in different groups, apply the one that gains the most kept magnitude, until
    no swap gains more than ``tol`` (relative) or ``max_iters`` swaps were made. The paper
    adds bounded regressions to escape local optima; we stop at the first one. Permuted
    weight: ``weight[:, perm]``. Only 2-D (Linear) weights.
    """
    group_view(weight)  # a Tensor with at least one dimension (else TypeError / ValueError)
    check_nm(n, m)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (a Linear weight), got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if cols % m:
        raise ValueError(f"weight.shape[1] must be a multiple of m={m}, got {cols}")
    a = weight.detach().abs().double().t().contiguous()  # [cols, rows]: column magnitudes
    perm = torch.arange(cols)
    g = cols // m
    if g < 2 or n == m:
        return perm
    scale = float(a.sum()) or 1.0

    def new_kept(positions: Tensor, chunk: int = 32) -> Tensor:
        # table[p, c]: kept magnitude of the group of position p with its member at p
        # replaced by column c. Per row, with o = the other m-1 members sorted descending,
        # top-n of (o, c) = sum(o[:n]) + relu(c - o[n-1]).  -> [len(positions), cols]
        out = []
        for part in positions.split(chunk):
            members = perm.view(g, m)[part // m]  # [P, m] column ids
            slot = part % m
            others = torch.stack([torch.cat([mem[:s], mem[s + 1:]]) for mem, s in zip(members, slot)])
            o = a[others].sort(dim=1, descending=True).values  # [P, m-1, rows]
            base = o[:, :n].sum(dim=(1, 2))  # [P]
            nth = o[:, n - 1]  # [P, rows]
            out.append(base[:, None] + (a[None, :, :] - nth[:, None, :]).clamp_min(0).sum(-1))
        return torch.cat(out)

    positions = torch.arange(cols)
    table = new_kept(positions)  # [cols(positions), cols(columns)]
    group_of = positions // m
    same_group = group_of.unsqueeze(1) == group_of.unsqueeze(0)
    base = _group_kept(a[perm.view(g, m)].transpose(-1, -2), n)  # [g] kept magnitude per group
    for _ in range(max_iters):
        # gain[p, q] of swapping the columns at positions p and q:
        # table[p, perm[q]] + table[q, perm[p]] - base[group p] - base[group q].
        t = table[:, perm]
        bp = base[group_of]
        gain = (t + t.t() - bp.unsqueeze(1) - bp.unsqueeze(0)).masked_fill_(same_group, -math.inf)
        best = int(gain.argmax())
        p, q = divmod(best, cols)
        if float(gain[p, q]) <= tol * scale:
            break
        perm[[p, q]] = perm[[q, p]]
        gp, gq = int(group_of[p]), int(group_of[q])
        touched = torch.cat([torch.arange(gp * m, gp * m + m), torch.arange(gq * m, gq * m + m)])
        table[touched] = new_kept(touched)
        base[[gp, gq]] = _group_kept(a[perm.view(g, m)[[gp, gq]]].transpose(-1, -2), n)
    return perm


def _check_perm(perm: Tensor, size: int) -> Tensor:
    if not isinstance(perm, Tensor) or perm.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"perm must be an integer Tensor, got {type(perm).__name__}")
    perm = perm.long().cpu()
    if perm.dim() != 1 or len(perm) != size or not torch.equal(perm.sort().values, torch.arange(size)):
        raise ValueError(f"perm must be a permutation of range({size}), got shape {tuple(perm.shape)}")
    return perm


@torch.no_grad()
def permute_channels(producer: nn.Module, consumer: nn.Module, perm: Tensor,
                     between: Sequence[nn.Module] = ()) -> None:
    """Permute ``consumer``'s input channels and ``producer``'s output channels by ``perm``.

    ``consumer.weight[:, perm]`` and ``producer.weight[perm]`` (and its bias, and every
    BatchNorm in ``between``) together leave the network's function unchanged, as long as
    only elementwise ops (ReLU, BatchNorm) sit between them (Pool & Yu 2021, Sec. 3).
    Masks held by sparsekit parametrizations are permuted with their weights.
    """
    for name, mod in (("producer", producer), ("consumer", consumer)):
        if not isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            raise TypeError(f"{name} must be a Linear or Conv layer, got {type(mod).__name__}")
    out_ch = stored_weight(producer).shape[0]
    in_ch = stored_weight(consumer).shape[1]
    if out_ch != in_ch:
        raise ValueError(f"producer has {out_ch} output channels but consumer has {in_ch} input channels")
    perm = _check_perm(perm, in_ch).to(stored_weight(consumer).device)
    _permute_tensor_param(consumer, "weight", perm, dim=1)
    _permute_tensor_param(producer, "weight", perm, dim=0)
    if producer.bias is not None:
        producer.bias.copy_(producer.bias[perm])
    for bn in between:
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            raise TypeError(f"between may only hold BatchNorm layers, got {type(bn).__name__}")
        if bn.num_features != in_ch:
            raise ValueError(f"BatchNorm has {bn.num_features} features, expected {in_ch}")
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            if t is not None:
                t.copy_(t[perm])


def _permute_tensor_param(module: nn.Module, name: str, perm: Tensor, dim: int) -> None:
    stored = stored_weight(module)
    stored.copy_(stored.index_select(dim, perm))
    if parametrize.is_parametrized(module, name):
        for p in module.parametrizations[name]:
            for buf in p.buffers(recurse=False):
                if buf.shape == stored.shape:
                    buf.copy_(buf.index_select(dim, perm))


def permute_for_nm(model: nn.Module, pairs: Sequence[tuple[str, str] | tuple[str, str, Sequence[str]]],
                   n: int = 2, m: int = 4, **search_kwargs: int) -> dict[str, tuple[float, float]]:
    """Search and apply a channel permutation for each ``(producer, consumer[, batchnorms])``.

    Names are module names (``"0"``, ``"2"`` in an MLP). Each consumer's input columns are
    permuted to maximize the N:M-kept magnitude (``search_permutation``), the producer's
    outputs with them, so ``model`` computes the same function. Returns
    ``{consumer weight name: (kept magnitude before, after)}``.
    """
    modules = dict(model.named_modules())
    out: dict[str, tuple[float, float]] = {}
    for entry in pairs:
        prod_name, cons_name = entry[0], entry[1]
        between_names = entry[2] if len(entry) > 2 else ()  # type: ignore[misc]
        for nm_ in (prod_name, cons_name, *between_names):
            if nm_ not in modules:
                raise ValueError(f"model has no module named {nm_!r}")
        consumer = modules[cons_name]
        weight = stored_weight(consumer)
        if weight.dim() != 2:
            raise ValueError(f"consumer {cons_name!r} must be a Linear layer for the search")
        before = kept_magnitude(weight, n, m)
        perm = search_permutation(weight, n, m, **search_kwargs)
        permute_channels(modules[prod_name], consumer, perm, [modules[b] for b in between_names])
        out[weight_name(cons_name)] = (before, kept_magnitude(stored_weight(consumer), n, m))
    return out
