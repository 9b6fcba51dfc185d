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


def lowest_k_parts(parts: list[Tensor], k: int) -> list[Tensor]:
    """Bool masks, True at the ``k`` smallest entries over all ``parts`` together.

    ``parts`` are treated as one flat vector (in list order, each row-major); among equal
    values the lower position is chosen first. Exact for any input. Above ``2**20``
    entries it avoids both concatenation and a full sort: a sample brackets the k-th
    value, and only the entries inside the bracket are sorted.
    """
    flats = [p.reshape(-1) for p in parts]
    n = sum(f.numel() for f in flats)
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    if k in (0, n) or n <= _EXACT_SORT_LIMIT:
        chosen = torch.zeros(n, dtype=torch.bool, device=flats[0].device if flats else None)
        if k:
            chosen[torch.sort(torch.cat(flats), stable=True).indices[:k]] = True
        return list(torch.split(chosen, [f.numel() for f in flats]))

    # 1. Bracket the k-th smallest value between two quantiles of a random sample.
    gen = torch.Generator(device="cpu").manual_seed(0)
    sample = torch.cat([
        f[torch.randint(f.numel(), (max(1, _SAMPLE_SIZE * f.numel() // n),), generator=gen).to(f.device)]
        for f in flats if f.numel()
    ]).sort().values
    m = sample.numel()
    q, margin = k / n, 3.0 / math.sqrt(m) + 1.0 / m  # >= 6 standard deviations of a quantile
    lo_pos, hi_pos = math.floor((q - margin) * m), math.ceil((q + margin) * m)
    lo = sample[lo_pos] if lo_pos >= 0 else sample.new_tensor(-math.inf)
    hi = sample[hi_pos] if hi_pos < m else sample.new_tensor(math.inf)
    # 2. Count what lies below the bracket; sort only what lies inside it.
    n_below = sum(int((f < lo).sum()) for f in flats)
    candidates = torch.cat([f[(f >= lo) & (f <= hi)] for f in flats]).sort().values
    need = k - n_below  # how many of the candidates are chosen
    if not 1 <= need <= candidates.numel():  # unlucky sample: still exact, just slower
        chosen = torch.zeros(n, dtype=torch.bool, device=flats[0].device)
        chosen[torch.sort(torch.cat(flats), stable=True).indices[:k]] = True
        return list(torch.split(chosen, [f.numel() for f in flats]))
    # 3. The exact k-th value t: choose everything <= t, then give back surplus ties.
    t = candidates[need - 1]
    ties = need - int((candidates < t).sum())  # entries equal to t that are chosen
    chosen = [f <= t for f in flats]
    if ties < int((candidates == t).sum()):
        for c, f in zip(chosen, flats):  # ties in position order: the first `ties` stay
            tied = (f == t).nonzero().squeeze(1)
            c[tied[ties:]] = False
            ties = max(0, ties - tied.numel())
    return chosen


def lowest_k(flat: Tensor, k: int) -> Tensor:
    """Bool tensor, True at the ``k`` smallest entries of 1-D ``flat`` (ties -> lower index)."""
    return lowest_k_parts([flat], k)[0]


def _flatten_scores(scores: Mapping[str, Tensor]) -> tuple[list[str], list[Tensor]]:
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError("scores must be a non-empty mapping name -> score tensor")
    names, tensors = [], []
    for name, s in scores.items():
        if not isinstance(s, Tensor):
            raise TypeError(f"scores[{name!r}] must be a Tensor, got {type(s).__name__}")
        if not s.is_floating_point():
            raise TypeError(f"scores[{name!r}] must be a float tensor, got {s.dtype}")
        if torch.isnan(s.sum()) and torch.isnan(s).any():  # one cheap pass in the common case
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
            _check_constraints(name, [s], k, current is not None)
            masks[name] = (~lowest_k(s.flatten(), k)).view(s.shape)
        return masks

    if min_keep > 0:
        prepared = [_protect_top(s, math.ceil(min_keep * s.numel())) for s in prepared]
    total = sum(s.numel() for s in prepared)
    k = round(sparsity * total)
    constrained = current is not None or min_keep > 0
    _check_constraints("all scores", prepared, k, constrained)
    pruned = lowest_k_parts(prepared, k)
    return {name: (~p).view(s.shape) for name, s, p in zip(names, prepared, pruned)}


def _check_constraints(name: str, parts: list[Tensor], k: int, constrained: bool) -> None:
    """With ``current`` / ``min_keep``: -inf marks already-pruned, +inf protected entries."""
    if not constrained:
        return
    already = sum(int(torch.isneginf(p).sum()) for p in parts)
    if already > k:
        raise ValueError(
            f"{name}: {already} entries are already pruned by `current`, more than the "
            f"{k} that the requested sparsity allows; sparsity can only grow"
        )
    protected = sum(int(torch.isposinf(p).sum()) for p in parts)
    if k > sum(p.numel() for p in parts) - protected:
        raise ValueError(f"{name}: cannot prune {k} entries while min_keep protects the rest")


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
