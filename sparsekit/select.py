"""The *select* step: turn importance scores into boolean masks, and sparsity schedules.

``select_masks`` keeps the largest scores and prunes the smallest, with *exact* counts:
``round(sparsity * total)`` entries are False afterwards, globally (one threshold over
every tensor) or per layer (the same fraction in each tensor). Ties are broken by
position: among equal scores the entry with the lower flat index (tensors in dict
order, then row-major) is pruned first.

Finding the k smallest of tens of millions of scores is the expensive part. Instead of a
full sort we bracket the k-th value with a small random sample, count what lies below
the bracket, and sort only the few candidates inside it (a selection algorithm in the
spirit of Floyd & Rivest 1975). The answer is exact whatever the sample; the sample
only decides how much work is left for the final sort.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

_EXACT_SORT_LIMIT = 1 << 20  # below this many entries a plain stable sort is fastest
_SAMPLE_SIZE = 1 << 16


def _check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(sparsity).__name__}")
    if math.isnan(sparsity) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {sparsity!r}")
    return float(sparsity)


def _sorted_prefix(values: Tensor, k: int) -> Tensor:
    """Indices (into ``values``) of the k smallest, ties -> lower index first."""
    return torch.sort(values, stable=True).indices[:k]


def lowest_k(flat: Tensor, k: int) -> Tensor:
    """Bool tensor, True at the ``k`` smallest entries of 1-D ``flat`` (ties -> lower index).

    Exact for any input; uses sample bracketing above ``2**20`` entries so that the cost
    is a few linear passes instead of a full sort.
    """
    n = flat.numel()
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    chosen = torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k == 0:
        return chosen
    if k == n:
        return chosen.fill_(True)
    if n <= _EXACT_SORT_LIMIT:
        chosen[_sorted_prefix(flat, k)] = True
        return chosen

    # Bracket the k-th smallest value between two sample quantiles.
    gen = torch.Generator(device="cpu").manual_seed(0)
    sample = flat[torch.randint(n, (_SAMPLE_SIZE,), generator=gen).to(flat.device)]
    sample = torch.sort(sample).values
    q = k / n
    margin = 4.0 / math.sqrt(_SAMPLE_SIZE) + 1.0 / _SAMPLE_SIZE  # ~8 standard deviations
    lo_pos = math.floor((q - margin) * _SAMPLE_SIZE)
    hi_pos = math.ceil((q + margin) * _SAMPLE_SIZE)
    lo = sample[lo_pos] if lo_pos >= 0 else None
    hi = sample[hi_pos] if hi_pos < _SAMPLE_SIZE else None

    below = flat < lo if lo is not None else torch.zeros_like(chosen)
    inside = ~below if hi is None else (~below) & (flat <= hi)
    n_below = int(below.sum())
    candidates = inside.nonzero().squeeze(1)  # ascending flat index
    need = k - n_below
    if not 0 <= need <= candidates.numel():  # unlucky sample: fall back, still exact
        chosen[_sorted_prefix(flat, k)] = True
        return chosen
    chosen |= below
    chosen[candidates[_sorted_prefix(flat[candidates], need)]] = True
    return chosen


def _flatten_scores(scores: Mapping[str, Tensor]) -> tuple[list[str], list[Tensor]]:
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError("scores must be a non-empty mapping name -> score tensor")
    names, tensors = [], []
    for name, s in scores.items():
        if not isinstance(s, Tensor):
            raise TypeError(f"scores[{name!r}] must be a Tensor, got {type(s).__name__}")
        if not s.is_floating_point():
            raise TypeError(f"scores[{name!r}] must be a float tensor, got {s.dtype}")
        if torch.isnan(s).any():
            raise ValueError(f"scores[{name!r}] contains NaN; scores must be comparable")
        names.append(name)
        tensors.append(s.detach())
    return names, tensors


def _prepare(
    names: list[str], tensors: list[Tensor], current: Mapping[str, Tensor] | None
) -> list[Tensor]:
    """Scores with already-pruned entries forced to -inf, so they are pruned first."""
    if current is None:
        return tensors
    if not isinstance(current, Mapping):
        raise TypeError(f"current must be a mapping name -> bool mask, got {type(current).__name__}")
    unknown = set(current) - set(names)
    if unknown:
        raise ValueError(f"current has names not in scores: {sorted(unknown)}")
    out = []
    for name, s in zip(names, tensors):
        mask = current.get(name)
        if mask is None:
            out.append(s)
            continue
        if mask.dtype != torch.bool or mask.shape != s.shape:
            raise ValueError(
                f"current[{name!r}] must be a bool tensor of shape {tuple(s.shape)}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        out.append(s.float().masked_fill(~mask.to(s.device), -math.inf))
    return out


def _protect_top(score: Tensor, keep: int) -> Tensor:
    """Set the ``keep`` largest entries of ``score`` to +inf (they can never be pruned)."""
    if keep <= 0:
        return score
    flat = score.flatten().float().clone()
    keep = min(keep, flat.numel())
    flat[lowest_k(-flat, keep) & ~torch.isneginf(flat)] = math.inf  # never revive pruned
    return flat.view_as(score)


def select_masks(
    scores: Mapping[str, Tensor],
    sparsity: float,
    scope: str = "global",
    current: Mapping[str, Tensor] | None = None,
    *,
    min_keep: float = 0.0,
) -> dict[str, Tensor]:
    """Masks that keep the largest scores: exactly ``round(sparsity * n)`` entries are False.

    Args:
        scores: ``{name: float tensor}``, larger = more important (e.g. ``|w|``).
        sparsity: total fraction of False entries afterwards, in ``[0, 1)``.
        scope: ``"global"`` (one ranking over all tensors together) or ``"layer"``
            (the same fraction in each tensor).
        current: existing masks; entries already False stay False and count toward the
            sparsity. Asking for less sparsity than ``current`` already has is an error.
        min_keep: global scope only: each tensor keeps at least ``ceil(min_keep * numel)``
            of its largest entries, so that global pruning can never empty a layer
            (layer collapse). ``0.0`` disables the guard.

    Returns:
        ``{name: bool mask}``, same keys and shapes as ``scores``.
    """
    sparsity = _check_sparsity(sparsity)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    if not isinstance(min_keep, (int, float)) or not 0.0 <= min_keep <= 1.0:
        raise ValueError(f"min_keep must be a fraction in [0, 1], got {min_keep!r}")
    names, tensors = _flatten_scores(scores)
    prepared = _prepare(names, tensors, current)

    if scope == "layer":
        masks = {}
        for name, s in zip(names, prepared):
            k = round(sparsity * s.numel())
            masks[name] = _keep_mask(name, s.flatten(), k).view(s.shape)
        return masks

    if min_keep > 0:
        prepared = [_protect_top(s, math.ceil(min_keep * s.numel())) for s in prepared]
    total = sum(s.numel() for s in prepared)
    k = round(sparsity * total)
    flat = torch.cat([s.flatten().to(torch.float32) for s in prepared])
    keep = _keep_mask("all scores", flat, k)
    masks, start = {}, 0
    for name, s in zip(names, prepared):
        masks[name] = keep[start : start + s.numel()].view(s.shape).clone()
        start += s.numel()
    return masks


def _keep_mask(name: str, flat: Tensor, k: int) -> Tensor:
    already = int(torch.isneginf(flat).sum())
    if already > k:
        raise ValueError(
            f"{name}: {already} entries are already pruned by `current`, more than the "
            f"{k} that the requested sparsity allows; sparsity can only grow"
        )
    if k > flat.numel() - int(torch.isposinf(flat).sum()):
        raise ValueError(f"{name}: cannot prune {k} entries while min_keep protects the rest")
    return ~lowest_k(flat, k)


# --- schedules: how sparse at each step ---------------------------------------------


def one_shot(final_sparsity: float) -> float:
    """The trivial schedule: prune straight to ``final_sparsity``."""
    return _check_sparsity(final_sparsity, "final_sparsity")


def imp_sparsity(rate: float, rounds: int) -> float:
    """Sparsity after ``rounds`` rounds that each prune ``rate`` of the *remaining* weights.

    ``1 - (1 - rate) ** rounds`` (Frankle & Carbin 2019 use ``rate = 0.2``).
    """
    _check_sparsity(rate, "rate")
    if not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be a non-negative int, got {rounds!r}")
    return 1.0 - (1.0 - rate) ** rounds


def cubic_sparsity(
    step: int,
    final_sparsity: float,
    *,
    begin_step: int,
    end_step: int,
    initial_sparsity: float = 0.0,
) -> float:
    """Gradual pruning schedule of Zhu & Gupta 2017, Eq. (1).

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0)) ** 3`` for
    ``t_0 <= t <= t_end``; ``s_i`` before ``t_0`` and ``s_f`` after ``t_end``. It prunes
    fast early, while the network has many redundant weights, and slowly near the end.
    """
    _check_sparsity(final_sparsity, "final_sparsity")
    _check_sparsity(initial_sparsity, "initial_sparsity")
    if not isinstance(begin_step, int) or not isinstance(end_step, int) or end_step <= begin_step:
        raise ValueError(f"need integer begin_step < end_step, got {begin_step!r}, {end_step!r}")
    if step <= begin_step:
        return initial_sparsity
    if step >= end_step:
        return final_sparsity
    frac = (step - begin_step) / (end_step - begin_step)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - frac) ** 3
