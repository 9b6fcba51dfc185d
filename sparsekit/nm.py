"""N:M masks and the 2:4 compressed format: the *select* and *finalize (compress)* steps.

In score -> select -> mask -> train -> finalize, an N:M pattern is a *select* rule: keep
at most ``n`` nonzeros in every group of ``m`` consecutive weights along the *input*
dimension (the last dim of a Linear weight; for a convolution the flattened
``in_channels x kernel`` dim); ``apply_nm`` then holds the masks with ``sk.apply_masks``
(the *mask* step). With 2:4, NVIDIA's Sparse Tensor Cores (Ampere and later) skip the
zeros: the *finalize* step stores the weight as its kept values (half the entries) plus
2-bit indices (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks").

This module holds, top to bottom:

1. masks: ``nm_mask``, ``is_nm``, and model-level ``nm_masks`` / ``apply_nm``;
2. the 2:4 format (reference, pure torch): ``compress_24`` / ``decompress_24``.

Training N:M masks with a straight-through estimator (SR-STE) lives in
``sparsekit.nm_training``; channel permutations that raise the kept magnitude
(Pool & Yu 2021) in ``sparsekit.permutation``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from . import _validate
from .masking import apply_masks, prunable_weights

__all__ = [
    "nm_mask", "is_nm", "group_view", "nm_masks", "apply_nm", "compress_24", "decompress_24",
    "check_nm", "check_meta_24",
]


# --------------------------------------------------------------------------------------
# 1. Masks
# --------------------------------------------------------------------------------------

def check_nm(n: int, m: int) -> None:
    """Check an N:M pattern: ``n`` and ``m`` ints with ``1 <= n <= m`` (else ``ValueError`` /
    ``TypeError`` naming them)."""
    for name, v in (("n", n), ("m", m)):
        _validate.integer(v, name)
    if m < 1 or n < 1 or n > m:
        raise ValueError(f"need 1 <= n <= m, got n={n}, m={m}")


def _check_tensor(w: Tensor, name: str = "w") -> None:
    if not isinstance(w, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(w).__name__}")
    if w.dim() < 1:
        raise ValueError(f"{name} must have at least one dimension, got a 0-d tensor")


def _groups(w: Tensor, m: int, name: str = "w") -> Tensor:
    """View ``w`` as ``[..., K // m, m]`` (groups of ``m`` along the last dim)."""
    k = w.shape[-1]
    if k % m:
        raise ValueError(f"{name}.shape[-1] must be a multiple of m={m}, got {k} (shape {tuple(w.shape)})")
    return w.reshape(*w.shape[:-1], k // m, m)


def group_view(weight: Tensor) -> Tensor:
    """A weight as the 2-D matrix whose rows hold the N:M groups: ``[out, in * kernel]``.

    A Linear weight is returned as is; a Conv weight ``[out, in, *kernel]`` is flattened
    to ``[out, in * prod(kernel)]`` (PyTorch's memory order, input channel major).
    """
    _check_tensor(weight, "weight")
    return weight if weight.dim() <= 2 else weight.reshape(weight.shape[0], -1)


def _rank_in_group(scores: Tensor) -> Tensor:
    """Rank of each entry in its group (0 = largest); ties -> the lower index ranks first.

    ``rank_i = #{j : s_j > s_i} + #{j < i : s_j == s_i}``, by pairwise comparison: the
    same rule the Triton kernel uses, so both choose the same entries bit for bit.
    """
    m = scores.shape[-1]
    a = scores.unsqueeze(-1)  # s_i  [..., m, 1]
    b = scores.unsqueeze(-2)  # s_j  [..., 1, m]
    lower = torch.ones(m, m, dtype=torch.bool, device=scores.device).tril(-1)  # [i, j]: j < i
    beats = (b > a) | ((b == a) & lower)
    return beats.sum(-1)


def nm_mask(w: Tensor, n: int = 2, m: int = 4) -> Tensor:
    """Boolean mask keeping the ``n`` largest ``|w|`` of every ``m`` consecutive entries.

    Groups run along the last dim (the input dim of a Linear weight). Ties go to the
    lower index. This is the magnitude criterion of Mishra et al. 2021 (Sec. 3: "prune
    the two smallest of every four"). Raises ``ValueError`` if the last dim is not a
    multiple of ``m`` or unless ``1 <= n <= m``, and if ``w`` holds NaN: a NaN compares
    false with everything, so it has no rank, and a group of NaNs would otherwise keep all
    ``m`` entries (not N:M). ``inf`` is an ordinary, largest, magnitude.
    """
    _check_tensor(w)
    check_nm(n, m)
    g = _groups(w.detach(), m)
    if g.is_floating_point() and bool(torch.isnan(g).any()):
        count = int(torch.isnan(g).sum())
        raise ValueError(f"w contains {count} NaN value(s); N:M masks need comparable scores "
                         "(replace NaN first, e.g. torch.nan_to_num(w, nan=0.0) to prune them)")
    return (_rank_in_group(g.abs()) < n).reshape(w.shape)


def is_nm(w: Tensor, n: int = 2, m: int = 4) -> bool:
    """True if every group of ``m`` consecutive entries (last dim) has at most ``n`` nonzeros."""
    _check_tensor(w)
    check_nm(n, m)
    return bool(((_groups(w, m) != 0).sum(-1) <= n).all())


def nm_masks(model: nn.Module, n: int = 2, m: int = 4, scores: Mapping[str, Tensor] | None = None,
             *, strict: bool = False) -> dict[str, Tensor]:
    """N:M masks for every Linear / Conv weight of ``model`` (keys as ``prunable_weights``).

    Groups run along the input dim (``group_view``). ``scores`` (default: the weights'
    magnitudes) decide which ``n`` of every ``m`` survive. A layer whose input dim is not a
    multiple of ``m`` (e.g. a first conv with one input channel and kernel 5) cannot be
    N:M: it is left out, as NVIDIA's ASP does, or raises ``ValueError`` with ``strict=True``.
    ``scores`` must hold every weight that gets a mask and no other name (``ValueError``).
    """
    check_nm(n, m)
    weights = prunable_weights(model)
    in_dims = {k: group_view(w).shape[-1] for k, w in weights.items()}
    if scores is not None:
        if not isinstance(scores, Mapping):
            raise TypeError(f"scores must be a mapping weight name -> Tensor or None, got {type(scores).__name__}")
        missing = [k for k in weights  # a layer that is left out needs no score
                   if k not in scores and (strict or in_dims[k] % m == 0)]
        unknown = [k for k in scores if k not in weights]
        if missing or unknown:
            raise ValueError(f"scores must have one entry per prunable weight ({', '.join(weights)}); "
                             f"missing {missing}, unknown {unknown}")
        for name, score in scores.items():
            if not isinstance(score, Tensor):
                raise TypeError(f"scores[{name!r}] must be a Tensor, got {type(score).__name__}")
    masks: dict[str, Tensor] = {}
    for name, weight in weights.items():
        if in_dims[name] % m:  # before the score is read: a layer that is left out needs none
            if strict:
                raise ValueError(f"{name}: input dim {in_dims[name]} is not a multiple of m={m}")
            continue
        score = weight.detach().abs() if scores is None else scores[name].detach()
        if score.shape != weight.shape:
            raise ValueError(f"scores[{name!r}] has shape {tuple(score.shape)}, weight has {tuple(weight.shape)}")
        masks[name] = nm_mask(group_view(score), n, m).reshape(weight.shape)  # ranked in the scores' own dtype
    return masks


def apply_nm(model: nn.Module, n: int = 2, m: int = 4, scores: Mapping[str, Tensor] | None = None,
             *, strict: bool = False) -> dict[str, Tensor]:
    """One-shot N:M pruning: compute ``nm_masks`` and hold them with ``sk.apply_masks``.

    Returns the masks applied. Layers that cannot be N:M are left dense (see ``nm_masks``).
    """
    masks = nm_masks(model, n, m, scores, strict=strict)
    apply_masks(model, masks)
    return masks


# --------------------------------------------------------------------------------------
# 2. The 2:4 compressed format
# --------------------------------------------------------------------------------------

def compress_24(w: Tensor) -> tuple[Tensor, Tensor]:
    """Compress a 2:4-sparse tensor into ``(values, meta)``.

    ``values[..., K // 2]`` holds, per group of 4, the entries at two indices
    ``i0 < i1``; ``meta[..., ceil(K / 8)]`` (uint8) holds the nibble ``i0 | (i1 << 2)``
    per group (torch's convention), group ``2j`` in the low nibble of byte ``j`` and group
    ``2j + 1`` in the high nibble. A group with fewer than two nonzeros keeps zeros at its
    lowest free indices. A tensor that is not 2:4 raises ``ValueError`` (values are never
    dropped silently); so does a last dim that is not a multiple of 4.
    """
    _check_tensor(w)
    g = _groups(w, 4)
    nonzero = g != 0
    count = nonzero.sum(-1, keepdim=True)
    if bool((count > 2).any()):
        bad = int((count > 2).sum())
        raise ValueError(f"w is not 2:4 sparse: {bad} group(s) of 4 have more than 2 nonzeros; "
                         "prune first, e.g. w * sk.nm_mask(w)")
    # Fill: the lowest-index zeros until every group has exactly two kept entries.
    zero_rank = (~nonzero).cumsum(-1) - 1  # rank of each zero among the group's zeros
    kept = nonzero | (~nonzero & (zero_rank < 2 - count))
    order = kept.cumsum(-1)
    idx = torch.arange(4, device=w.device)
    i0 = ((order == 1) & kept).long().mul(idx).sum(-1)
    i1 = ((order == 2) & kept).long().mul(idx).sum(-1)
    pair = torch.stack([i0, i1], dim=-1)
    values = g.gather(-1, pair).reshape(*w.shape[:-1], -1)
    nibbles = (i0 | (i1 << 2)).to(torch.uint8)  # [..., G]
    if nibbles.shape[-1] % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(*nibbles.shape[:-1], 1)], dim=-1)
    pairs = nibbles.reshape(*nibbles.shape[:-1], -1, 2)
    meta = pairs[..., 0] | (pairs[..., 1] << 4)
    return values.contiguous(), meta.contiguous()


def _check_compressed(values: Tensor, meta: Tensor) -> int:
    """Validate a ``(values, meta)`` pair; return ``K`` (the decompressed last dim)."""
    for name, t in (("values", values), ("meta", meta)):
        _check_tensor(t, name)
    if meta.dtype != torch.uint8:
        raise TypeError(f"meta must have dtype torch.uint8, got {meta.dtype}")
    half = values.shape[-1]
    if half % 2:
        raise ValueError(f"values.shape[-1] must be even (two values per group of 4), got {half}")
    k = 2 * half
    expected = (*values.shape[:-1], math.ceil(k / 8))
    if tuple(meta.shape) != expected:
        raise ValueError(f"meta has shape {tuple(meta.shape)}; for values of shape {tuple(values.shape)} "
                         f"it must be {expected}")
    if meta.device != values.device:
        raise ValueError(f"values and meta are on different devices: {values.device} vs {meta.device}")
    return k


def _unpack_meta(meta: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """``(i0, i1)`` per group, each ``[..., groups]`` int64."""
    nib = torch.stack([meta & 0xF, meta >> 4], dim=-1).reshape(*meta.shape[:-1], -1)[..., :groups]
    nib = nib.long()
    return nib & 3, nib >> 2


def check_meta_24(meta: Tensor, k: int) -> None:
    """Check that every nibble of ``meta`` that describes one of the ``K / 4`` groups holds
    an index pair ``i0 < i1`` (the 6 nibbles ``compress_24`` writes); else ``ValueError``.

    A nibble with ``i0 >= i1`` would place both kept values of a group at one index (one is
    lost) or in the wrong order. The padding nibble of an odd group count is not checked.
    """
    i0, i1 = _unpack_meta(meta, k // 4)
    bad = i0 >= i1
    if bool(bad.any()):
        first = [int(i) for i in bad.nonzero()[0]]
        raise ValueError(f"meta holds {int(bad.sum())} nibble(s) with i0 >= i1 (first at group index {first}, "
                         f"i0={int(i0[tuple(first)])}, i1={int(i1[tuple(first)])}): not a valid 2:4 index pair")


def decompress_24(values: Tensor, meta: Tensor) -> Tensor:
    """The dense tensor ``[..., K]`` that ``compress_24`` compressed (its exact inverse).

    A nibble whose indices are not ``i0 < i1`` (not produced by ``compress_24``) raises
    ``ValueError`` (``check_meta_24``); so do mismatched shapes. ``meta`` must be uint8
    (else ``TypeError``).
    """
    k = _check_compressed(values, meta)
    groups = k // 4
    check_meta_24(meta, k)
    i0, i1 = _unpack_meta(meta, groups)
    out = values.new_zeros(*values.shape[:-1], groups, 4)
    v = values.reshape(*values.shape[:-1], groups, 2)
    out.scatter_(-1, torch.stack([i0, i1], dim=-1), v)
    return out.reshape(*values.shape[:-1], k)
