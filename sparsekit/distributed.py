"""The *select* step across processes: exact global selection when the scores are sharded.

When a model's weights are spread over the ranks of a ``torch.distributed`` process group
(FSDP, tensor parallelism), global magnitude pruning needs the k-th smallest score of the
union of every rank's scores. Gathering them all costs as much memory and network as the
model. The bracket selection of :func:`sparsekit.select.lowest_k_parts` needs much less:

1. every rank contributes a small random sample of its scores (in proportion to how many
   it holds); all ranks sort the same gathered sample and take two quantiles around the
   target rank as a bracket ``[lo, hi]``;
2. every rank counts its scores below and inside the bracket; the counts are summed;
3. while too many scores lie inside, steps 1-2 repeat on the scores inside the bracket;
4. the few candidates inside are gathered; the exact threshold ``t`` is read off them, and
   ties at ``t`` go to the lowest global position (rank 0's tensors first, then rank 1's, each
   in its dict order, row-major), exactly as one process would break them on the union.

Only counts, samples and the final candidates cross the network: for uniformly spread scores
a few hundred kilobytes for any model size (:class:`CommLog` measures it). The answer never
depends on the samples; an unlucky sample only costs another round.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

SAMPLE_SIZE = 1 << 14
"""Scores sampled per round over all ranks together."""
CANDIDATE_LIMIT = 1 << 16
"""At most this many candidates (over all ranks) are gathered at the end."""


@dataclass
class CommLog:
    """Bytes this rank put into collectives (``sent``) and got out of them (``received``), how many
    calls, and each selection's bracketing ``rounds`` as ``(lo, hi, entries inside over all ranks)``
    (the first is ``(-inf, inf, all entries)``)."""

    sent: int = 0
    received: int = 0
    calls: int = 0
    rounds: list[tuple[float, float, int]] = field(default_factory=list)


_LOGS: list[CommLog] = []


@contextlib.contextmanager
def count_bytes() -> Iterator[CommLog]:
    """Record the collective traffic of the sparsekit calls in the block (this rank's view)."""
    log = CommLog()
    _LOGS.append(log)
    try:
        yield log
    finally:
        _LOGS.remove(log)


def _note(sent: int, received: int) -> None:
    for log in _LOGS:
        log.sent += sent
        log.received += received
        log.calls += 1


def _note_round(lo: Tensor, hi: Tensor, inside: int) -> None:
    for log in _LOGS:
        log.rounds.append((float(lo), float(hi), inside))


def world(group: object) -> tuple[int, int]:
    """``(rank, size)`` of this process in ``group`` (``ValueError`` if torch.distributed is not initialized)."""
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("group was given, but torch.distributed is not initialized (call init_process_group first)")
    return dist.get_rank(group), dist.get_world_size(group)


def _device(group: object) -> torch.device:
    """Where collective buffers live: CUDA for NCCL, CPU otherwise."""
    backend = dist.get_backend(group)
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def all_sum(values: list[int], group: object) -> list[int]:
    """Element-wise sum of integer ``values`` over the ranks."""
    t = torch.tensor(values, dtype=torch.int64, device=_device(group))
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    _note(t.numel() * 8, t.numel() * 8)
    return [int(v) for v in t.tolist()]


def all_reduce_sum_(t: Tensor, group: object) -> Tensor:
    """Sum ``t`` over the ranks, in place (every rank gets the sum)."""
    world(group)
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    _note(t.numel() * t.element_size(), t.numel() * t.element_size())
    return t


def all_gather_counts(value: int, group: object) -> list[int]:
    """Every rank's ``value``, in rank order."""
    _, size = world(group)
    out = [torch.zeros(1, dtype=torch.int64, device=_device(group)) for _ in range(size)]
    dist.all_gather(out, torch.tensor([value], dtype=torch.int64, device=_device(group)), group=group)
    _note(8, 8 * (size - 1))
    return [int(t) for t in out]


def all_gather_values(x: Tensor, group: object) -> Tensor:
    """The 1-D tensors of every rank (sizes may differ), concatenated in rank order."""
    sizes = all_gather_counts(x.numel(), group)
    if max(sizes) == 0:
        return x.new_empty(0)
    device = _device(group)
    padded = torch.zeros(max(sizes), dtype=x.dtype, device=device)
    padded[: x.numel()] = x.to(device)
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded, group=group)
    _note(padded.numel() * padded.element_size(), (len(sizes) - 1) * padded.numel() * padded.element_size())
    return torch.cat([t[:n] for t, n in zip(out, sizes)])


def agree(group: object, settings: tuple, error: str | None) -> None:
    """Raise the same ``ValueError`` on every rank if any rank had an ``error`` or other ``settings``.

    Called before the first collective of a selection, so that a bad argument on one rank
    does not leave the others waiting forever.
    """
    rank, size = world(group)
    everything: list[object] = [None] * size
    dist.all_gather_object(everything, (settings, error), group=group)
    _note(0, 0)
    for r, (_, err) in enumerate(everything):
        if err is not None:
            raise ValueError(f"rank {r}: {err}")
    if any(s != everything[0][0] for s, _ in everything):
        raise ValueError(f"every rank must pass the same arguments; got {[s for s, _ in everything]} "
                         "(rank order)")


def _comm_dtype(parts: list[Tensor], group: object) -> torch.dtype:
    """float64 if any rank ranks float64 scores, else float32 (exact for float16 and bfloat16)."""
    wide = int(any(p.dtype == torch.float64 for p in parts))
    return torch.float64 if all_sum([wide], group)[0] else torch.float32


def _sample(pool: list[Tensor], share: int, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    """About ``share`` entries drawn uniformly (with replacement) from this rank's ``pool``."""
    local = sum(p.numel() for p in pool)
    picks = [p[torch.randint(p.numel(), (max(1, math.ceil(share * p.numel() / local)),), generator=gen).to(p.device)]
             for p in pool if p.numel() and share]
    return torch.cat(picks) if picks else torch.empty(0, dtype=dtype)


def _count_in(pool: list[Tensor], lo: Tensor, hi: Tensor) -> tuple[int, int]:
    """(entries of ``pool`` below ``lo``, entries in ``[lo, hi]``) on this rank."""
    below = sum(int((p < lo.to(p.device)).sum()) for p in pool)
    inside = sum(int(((p >= lo.to(p.device)) & (p <= hi.to(p.device))).sum()) for p in pool)
    return below, inside


def lowest_k_parts(parts: list[Tensor], k: int, group: object) -> list[Tensor]:
    """Bool masks, True at the ``k`` smallest entries of the union of every rank's ``parts``.

    The same answer as :func:`sparsekit.select.lowest_k_parts` on rank 0's parts, then rank 1's,
    ... concatenated in one process (ties: lower global position first). Every rank must call
    it; a rank may hold no parts.
    """
    rank, _ = world(group)
    dtype = _comm_dtype(parts, group)
    flats = [p.reshape(-1).to(dtype) for p in parts]  # one dtype everywhere: comparisons are exact
    n_local = sum(f.numel() for f in flats)
    (n,) = all_sum([n_local], group)
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    if k == 0 or k == n:
        return [torch.full(p.shape, k == n, dtype=torch.bool, device=p.device).reshape(-1) for p in parts]

    gen = torch.Generator().manual_seed(rank)
    lo, hi = torch.tensor(-math.inf, dtype=dtype), torch.tensor(math.inf, dtype=dtype)
    below, inside_count = 0, n
    pool = flats  # this rank's entries inside [lo, hi]; after the first round, one small tensor
    sample_size = SAMPLE_SIZE
    _note_round(lo, hi, inside_count)
    while inside_count > CANDIDATE_LIMIT:
        local_inside = sum(p.numel() for p in pool)
        sample = all_gather_values(_sample(pool, math.ceil(sample_size * local_inside / inside_count), gen, dtype),
                                   group).sort().values.cpu()
        m = sample.numel()
        q = (k - below) / inside_count
        margin = 3.0 / math.sqrt(m) + 1.0 / m  # >= 6 standard deviations of a sample quantile
        lo_pos, hi_pos = math.floor((q - margin) * m), math.ceil((q + margin) * m)
        new_lo = sample[lo_pos] if lo_pos >= 0 else lo
        new_hi = sample[hi_pos] if hi_pos < m else hi
        more_below, new_inside = all_sum(list(_count_in(pool, new_lo, new_hi)), group)
        if not below + more_below < k <= below + more_below + new_inside:  # unlucky sample: sample more
            sample_size *= 4
            if sample_size >= inside_count:  # sampling would cost as much as gathering: gather
                break
            continue
        if new_inside == inside_count:  # cannot narrow (many equal scores): gather what is left
            break
        lo, hi, below, inside_count = new_lo, new_hi, below + more_below, new_inside
        _note_round(lo, hi, inside_count)
        pool = [torch.cat([p[(p >= lo.to(p.device)) & (p <= hi.to(p.device))] for p in pool])] if pool else []

    local_candidates = [p[(p >= lo.to(p.device)) & (p <= hi.to(p.device))] for p in pool]
    gathered = all_gather_values(torch.cat(local_candidates) if local_candidates else torch.empty(0, dtype=dtype),
                                 group)
    candidates = gathered.sort().values
    need = k - below
    t = candidates[need - 1]
    ties = need - int((candidates < t).sum())  # entries equal to t that are chosen, in global position order
    chosen = [f < t.to(f.device) for f in flats]
    equal = [(f == t.to(f.device)).nonzero().squeeze(1) for f in flats]
    before_me = sum(all_gather_counts(sum(e.numel() for e in equal), group)[:rank])
    mine = max(0, ties - before_me)
    for c, e in zip(chosen, equal):
        c[e[:mine]] = True
        mine = max(0, mine - e.numel())
    return chosen
