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

from . import _validate

_EXACT_SORT_LIMIT = 1 << 20  # below this many entries a plain stable sort is fastest
_SAMPLE_SIZE = 1 << 16


def _check_sparsity(sparsity: float, name: str = "sparsity") -> float:
    return _validate.fraction(sparsity, name)


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


def _flatten_scores(scores: Mapping[str, Tensor], *, allow_empty: bool = False) -> tuple[list[str], list[Tensor]]:
    if not isinstance(scores, Mapping) or not (scores or allow_empty):
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


def _forced(
    names: list[str], tensors: list[Tensor], current: Mapping[str, Tensor] | None
) -> list[Tensor | None]:
    """Per tensor, a bool mask of the entries ``current`` has already pruned (``None``: none).

    Scores are never altered: a score of ``-inf`` or ``1e300`` is a score like any other,
    and the caller's dtype (float64, bfloat16, ...) decides the ranking.
    """
    if current is None:
        return [None] * len(tensors)
    if not isinstance(current, Mapping):
        raise TypeError(f"current must be a mapping name -> bool mask, got {type(current).__name__}")
    unknown = set(current) - set(names)
    if unknown:
        raise ValueError(f"current has names not in scores: {sorted(unknown)}")
    out: list[Tensor | None] = []
    for name, s in zip(names, tensors):
        mask = current.get(name)
        if mask is None:
            out.append(None)
            continue
        if not isinstance(mask, Tensor):
            raise TypeError(
                f"current[{name!r}] must be a bool tensor of shape {tuple(s.shape)}, got {type(mask).__name__}"
            )
        if mask.dtype != torch.bool or mask.shape != s.shape:
            raise ValueError(
                f"current[{name!r}] must be a bool tensor of shape {tuple(s.shape)}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        out.append(~mask.detach().to(s.device))
    return out


def _protect_top(score: Tensor, forced: Tensor | None, keep: int) -> Tensor | None:
    """Bool mask of the ``keep`` largest entries of ``score`` that are not ``forced`` (pruned).

    Ties go to the lower index (it is protected). An already-pruned entry is never
    protected: protection does not revive it.
    """
    if keep <= 0:
        return None
    flat = score.reshape(-1)
    protected = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if forced is None:
        protected = lowest_k(-flat, min(keep, flat.numel()))
    else:
        free = ~forced.reshape(-1)
        candidates = flat[free]
        protected[free] = lowest_k(-candidates, min(keep, candidates.numel()))
    return protected.view(score.shape)


def _count(masks: list[Tensor | None]) -> int:
    """Number of True entries over ``masks`` (this process's)."""
    return sum(int(m.sum()) for m in masks if m is not None)


def _prune_lowest(
    tensors: list[Tensor], forced: list[Tensor | None], protected: list[Tensor | None], k_free: int,
    group: object = None,
) -> list[Tensor]:
    """Pruned-entry masks: every ``forced`` entry, plus the ``k_free`` lowest scores among the
    rest (never a ``protected`` one), counted over all tensors (and ranks) together.

    Only the free entries take part in the ranking, in flat order, so the tie rule (lower
    position first) is the same with or without ``current`` / ``min_keep``.
    """
    free: list[Tensor | None] = []
    for f, p in zip(forced, protected):
        if f is None and p is None:
            free.append(None)  # everything is free: rank the tensor itself, no copy
        else:
            free.append(~f if p is None else ~p if f is None else ~(f | p))
    parts = [s.reshape(-1) if fr is None else s[fr] for s, fr in zip(tensors, free)]
    if group is None:
        chosen = lowest_k_parts(parts, k_free)
    else:
        from . import distributed

        chosen = distributed.lowest_k_parts(parts, k_free, group)
    out = []
    for s, f, fr, c in zip(tensors, forced, free, chosen):
        if fr is None:
            out.append(c.view(s.shape))
            continue
        pruned = f.clone() if f is not None else torch.zeros(s.shape, dtype=torch.bool, device=s.device)
        pruned[fr] = c
        out.append(pruned)
    return out


def select_masks(
    scores: Mapping[str, Tensor],
    sparsity: float,
    scope: str = "global",
    current: Mapping[str, Tensor] | None = None,
    *,
    min_keep: float = 0.0,
    group: object = None,
) -> dict[str, Tensor]:
    """Masks that keep the largest scores: exactly ``round(sparsity * n)`` entries are False.

    Args:
        scores: ``{name: float tensor}``, larger = more important (e.g. ``|w|``). Any
            float dtype; scores are ranked in their own dtype (never rounded to float32),
            and every value but NaN is a valid score (``-inf`` is simply the least
            important).
        sparsity: total fraction of False entries afterwards, in ``[0, 1)``.
        scope: ``"global"`` (one ranking over all tensors together) or ``"layer"``
            (the same fraction in each tensor).
        current: existing masks; entries already False stay False and count toward the
            sparsity. Asking for less sparsity than ``current`` already has is an error.
        min_keep: global scope only: each tensor keeps at least ``ceil(min_keep * numel)``
            of its largest entries, so that global pruning can never empty a layer
            (layer collapse). ``0.0`` disables the guard. With ``scope="layer"`` every
            tensor keeps exactly ``1 - sparsity`` of its entries, so a nonzero
            ``min_keep`` there is an error rather than silently ignored.
        group: a ``torch.distributed`` process group. ``scores`` (and ``current``) then hold
            this rank's tensors (possibly none) and a global selection runs over the union
            of every rank's tensors: the same masks one process computes on rank 0's tensors,
            then rank 1's, ... (ties broken in that order), with only counts, samples and a
            bounded set of candidates sent (:mod:`sparsekit.distributed`). Every rank must
            call it with the same ``sparsity``, ``scope`` and ``min_keep``. ``scope="layer"``
            needs no communication beyond that check.

    Returns:
        ``{name: bool mask}``, same keys and shapes as ``scores``.
    """
    if group is not None:
        return _select_across_ranks(scores, sparsity, scope, current, min_keep, group)
    sparsity, min_keep = _check_arguments(sparsity, scope, min_keep)
    names, tensors = _flatten_scores(scores)
    forced = _forced(names, tensors, current)
    if scope == "layer":
        return _layer_masks(names, tensors, forced, sparsity)
    return _global_masks(names, tensors, forced, sparsity, min_keep)


def _check_arguments(sparsity: float, scope: str, min_keep: float) -> tuple[float, float]:
    sparsity = _check_sparsity(sparsity)
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    min_keep = _validate.fraction(min_keep, "min_keep", allow_one=True)
    if min_keep > 0 and scope == "layer":
        raise ValueError(
            f"min_keep applies to scope='global' only (with scope='layer' each tensor keeps exactly "
            f"1 - sparsity of its entries); got min_keep={min_keep!r} with scope='layer'"
        )
    return sparsity, min_keep


def _layer_masks(names: list[str], tensors: list[Tensor], forced: list[Tensor | None],
                 sparsity: float) -> dict[str, Tensor]:
    masks = {}
    for name, s, f in zip(names, tensors, forced):
        k, already = round(sparsity * s.numel()), _count([f])
        _check_constraints(name, k, s.numel(), already, kept=0)
        masks[name] = ~_prune_lowest([s], [f], [None], k - already)[0]
    return masks


def _global_masks(names: list[str], tensors: list[Tensor], forced: list[Tensor | None], sparsity: float,
                  min_keep: float, group: object = None) -> dict[str, Tensor]:
    protected = [_protect_top(s, f, math.ceil(min_keep * s.numel())) for s, f in zip(tensors, forced)]
    counts = [sum(s.numel() for s in tensors), _count(forced), _count(protected)]
    if group is not None:
        from .distributed import all_sum

        counts = all_sum(counts, group)  # one all-reduce for all three numbers
        if counts[0] == 0:
            raise ValueError("scores must hold at least one tensor on some rank; every rank passed none")
    total, already, kept = counts
    k = round(sparsity * total)
    _check_constraints("all scores", k, total, already, kept)
    pruned = _prune_lowest(tensors, forced, protected, k - already, group)
    return {name: ~p for name, p in zip(names, pruned)}


def _select_across_ranks(scores: Mapping[str, Tensor], sparsity: float, scope: str,
                         current: Mapping[str, Tensor] | None, min_keep: float, group: object) -> dict[str, Tensor]:
    """``select_masks`` with a process group: arguments checked on every rank before any collective."""
    from .distributed import agree

    error, settings = None, (repr(sparsity), repr(scope), repr(min_keep))
    try:
        sparsity, min_keep = _check_arguments(sparsity, scope, min_keep)
        names, tensors = _flatten_scores(scores, allow_empty=True)
        forced = _forced(names, tensors, current)
    except (TypeError, ValueError) as e:
        error = f"{type(e).__name__}: {e}"
    agree(group, settings, error)
    if scope == "layer":
        return _layer_masks(names, tensors, forced, sparsity)
    return _global_masks(names, tensors, forced, sparsity, min_keep, group)


def _check_constraints(name: str, k: int, size: int, already: int, kept: int) -> None:
    """``k`` pruned entries out of ``size`` must include the ``already`` pruned ones (from
    ``current``) and leave the ``kept`` ones that ``min_keep`` protects."""
    if already > k:
        raise ValueError(
            f"{name}: {already} entries are already pruned by `current`, more than the "
            f"{k} that the requested sparsity allows; sparsity can only grow"
        )
    if k > size - kept:
        raise ValueError(f"{name}: cannot prune {k} entries while min_keep protects the rest ({kept} entries)")


# --- random masks: the control every comparison needs ---------------------------


def random_mask(shape: tuple[int, ...] | torch.Size, pruned: int, *, seed: int) -> Tensor:
    """A uniformly random bool mask of ``shape`` with exactly ``pruned`` False entries.

    The random baseline of Blalock et al. 2020 and the "random mask" control of
    Frankle & Carbin 2019: same counts as the mask under test, positions by chance.
    """
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(_validate.is_int(d) and d >= 0 for d in shape):
        raise ValueError(f"shape must be a sequence of non-negative ints, got {shape!r}")
    numel = math.prod(shape)
    pruned = _validate.integer(pruned, "pruned", low=0, high=numel)
    gen = torch.Generator().manual_seed(_validate.seed(seed))
    mask = torch.ones(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=gen)[:pruned]] = False
    return mask.view(tuple(shape))


def random_masks_like(masks: Mapping[str, Tensor], seed: int) -> dict[str, Tensor]:
    """Random masks with exactly as many False entries in each tensor as ``masks`` has.

    Keeps *how much* of each layer a method prunes and forgets *which* weights: the
    random-mask control of Frankle & Carbin 2019 and the layer-wise shuffle of
    Frankle et al. 2021 (Section 5) are both this function. Tensor ``i`` (in dict
    order) uses seed ``seed + i``.
    """
    if not isinstance(masks, Mapping) or not masks:
        raise ValueError("masks must be a non-empty mapping name -> bool tensor")
    seed = _validate.seed(seed)
    out = {}
    for i, (name, mask) in enumerate(masks.items()):
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"masks[{name!r}] must be a bool tensor, got {got}")
        pruned = mask.numel() - int(mask.sum())
        out[name] = random_mask(mask.shape, pruned, seed=seed + i).to(mask.device)
    return out


# --- schedules: how sparse at each step ---------------------------------------------


def geometric_schedule(final_sparsity: float, rounds: int, initial_sparsity: float = 0.0) -> list[float]:
    """Sparsity after each of ``rounds`` rounds, each pruning the same fraction of what is left.

    Round ``k`` (1-based) keeps ``d_0 * (d / d_0) ** (k / rounds)`` of the weights, with
    ``d = 1 - final_sparsity`` and ``d_0 = 1 - initial_sparsity``: the schedule of
    iterative pruning (Han et al. 2015), of IMP (Frankle & Carbin 2019, where the per-round
    rate is ``1 - (d / d_0) ** (1 / rounds)``) and of iterative SynFlow (Tanaka et al. 2020,
    Algorithm 1). The last entry is exactly ``final_sparsity``.
    """
    final_sparsity = _check_sparsity(final_sparsity, "final_sparsity")
    initial_sparsity = _check_sparsity(initial_sparsity, "initial_sparsity")
    rounds = _validate.positive_int(rounds, "rounds")
    if initial_sparsity > final_sparsity:
        raise ValueError(
            f"initial_sparsity must be <= final_sparsity (sparsity only grows), got "
            f"initial_sparsity={initial_sparsity!r} > final_sparsity={final_sparsity!r}"
        )
    d0, d = 1.0 - initial_sparsity, 1.0 - final_sparsity
    out = [1.0 - d0 * (d / d0) ** (k / rounds) for k in range(1, rounds + 1)]
    out[-1] = final_sparsity  # exact at the end, whatever the rounding
    return out



def imp_sparsity(rate: float, rounds: int) -> float:
    """Sparsity after ``rounds`` rounds that each prune ``rate`` of the *remaining* weights.

    ``1 - (1 - rate) ** rounds`` (Frankle & Carbin 2019 use ``rate = 0.2``).
    """
    rate = _check_sparsity(rate, "rate")
    rounds = _validate.integer(rounds, "rounds", low=0)
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
    ``initial_sparsity > final_sparsity`` raises ``ValueError``: the schedule only grows.
    """
    final_sparsity = _check_sparsity(final_sparsity, "final_sparsity")
    initial_sparsity = _check_sparsity(initial_sparsity, "initial_sparsity")
    if initial_sparsity > final_sparsity:
        raise ValueError(
            f"initial_sparsity must be <= final_sparsity (sparsity only grows), got "
            f"initial_sparsity={initial_sparsity!r} > final_sparsity={final_sparsity!r}"
        )
    step = _validate.integer(step, "step")
    begin_step = _validate.integer(begin_step, "begin_step")
    end_step = _validate.integer(end_step, "end_step")
    if end_step <= begin_step:
        raise ValueError(f"need begin_step < end_step, got begin_step={begin_step!r}, end_step={end_step!r}")
    if step <= begin_step:
        return initial_sparsity
    if step >= end_step:
        return final_sparsity
    frac = (step - begin_step) / (end_step - begin_step)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - frac) ** 3
