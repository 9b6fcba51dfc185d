"""N:M fine-grained structured sparsity and the 2:4 compressed format (reference, pure torch).

An N:M pattern keeps at most ``n`` nonzeros in every group of ``m`` consecutive weights
along the *input* dimension (the last dim of a Linear weight; for a convolution the
flattened ``in_channels x kernel`` dim). With 2:4, NVIDIA's Sparse Tensor Cores (Ampere
and later) skip the zeros: the weight is stored as its kept values (half the entries) plus
2-bit indices (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks").

This module holds, top to bottom:

1. masks: ``nm_mask``, ``is_nm``, and model-level ``nm_masks`` / ``apply_nm``;
2. the 2:4 format: ``compress_24`` / ``decompress_24``;
3. training: the straight-through estimator and SR-STE (Zhou et al. 2021) as a
   parametrization (``apply_ste``, ``finalize_ste``) and mask-flip counting;
4. channel permutations (Pool & Yu 2021): ``search_permutation``,
   ``permute_channels``, ``permute_for_nm``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import _validate
from .masking import (
    _detach_injected_class,
    _prunable_modules,
    _stored_weight,
    _weight_name,
    apply_masks,
    find_parametrization,
)

__all__ = [
    "nm_mask", "is_nm", "group_view", "nm_masks", "apply_nm", "compress_24", "decompress_24",
    "NMSTE", "apply_ste", "finalize_ste", "ste_masks", "mask_flips", "FlipCounter",
    "kept_magnitude", "search_permutation", "permute_channels", "permute_for_nm",
]


# --------------------------------------------------------------------------------------
# 1. Masks
# --------------------------------------------------------------------------------------

def _check_nm(n: int, m: int) -> None:
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
    _check_nm(n, m)
    g = _groups(w.detach(), m)
    if g.is_floating_point() and bool(torch.isnan(g).any()):
        count = int(torch.isnan(g).sum())
        raise ValueError(f"w contains {count} NaN value(s); N:M masks need comparable scores "
                         "(replace NaN first, e.g. torch.nan_to_num(w, nan=0.0) to prune them)")
    return (_rank_in_group(g.abs()) < n).reshape(w.shape)


def is_nm(w: Tensor, n: int = 2, m: int = 4) -> bool:
    """True if every group of ``m`` consecutive entries (last dim) has at most ``n`` nonzeros."""
    _check_tensor(w)
    _check_nm(n, m)
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
    _check_nm(n, m)
    weights = _named_weights(model)
    if scores is not None:
        if not isinstance(scores, Mapping):
            raise TypeError(f"scores must be a mapping weight name -> Tensor or None, got {type(scores).__name__}")
        missing = [k for k, w in weights.items()  # a layer that is left out needs no score
                   if k not in scores and (strict or group_view(w).shape[-1] % m == 0)]
        unknown = [k for k in scores if k not in weights]
        if missing or unknown:
            raise ValueError(f"scores must have one entry per prunable weight ({', '.join(weights)}); "
                             f"missing {missing}, unknown {unknown}")
        for name, score in scores.items():
            if not isinstance(score, Tensor):
                raise TypeError(f"scores[{name!r}] must be a Tensor, got {type(score).__name__}")
    masks: dict[str, Tensor] = {}
    for name, weight in weights.items():
        score = weight.detach().abs() if scores is None else scores[name].detach()
        if score.shape != weight.shape:
            raise ValueError(f"scores[{name!r}] has shape {tuple(score.shape)}, weight has {tuple(weight.shape)}")
        flat = group_view(score)
        if flat.shape[-1] % m:
            if strict:
                raise ValueError(f"{name}: input dim {flat.shape[-1]} is not a multiple of m={m}")
            continue
        masks[name] = nm_mask(flat, n, m).reshape(weight.shape)  # ranked in the scores' own dtype
    return masks


def _named_weights(model: nn.Module) -> dict[str, Tensor]:
    return {_weight_name(k): _stored_weight(mod) for k, mod in _prunable_modules(model).items()}


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


def decompress_24(values: Tensor, meta: Tensor) -> Tensor:
    """The dense tensor ``[..., K]`` that ``compress_24`` compressed (its exact inverse).

    A nibble whose indices are not ``i0 < i1`` (not produced by ``compress_24``) raises
    ``ValueError``; so do mismatched shapes. ``meta`` must be uint8 (else ``TypeError``).
    """
    k = _check_compressed(values, meta)
    groups = k // 4
    i0, i1 = _unpack_meta(meta, groups)
    if bool((i0 >= i1).any()):
        raise ValueError("meta holds a nibble with i0 >= i1: not a valid 2:4 index pair")
    out = values.new_zeros(*values.shape[:-1], groups, 4)
    v = values.reshape(*values.shape[:-1], groups, 2)
    out.scatter_(-1, torch.stack([i0, i1], dim=-1), v)
    return out.reshape(*values.shape[:-1], k)


# --------------------------------------------------------------------------------------
# 3. Training: STE and SR-STE, mask flips
# --------------------------------------------------------------------------------------

class _SRSTEFunction(torch.autograd.Function):
    """Forward ``w * mask``; backward ``g + lam * (~mask) * w`` (Zhou et al. 2021, Eq. 6).

    With ``lam = 0`` this is the plain straight-through estimator (Bengio et al. 2013):
    the gradient of the sparse weight is passed to every dense weight, pruned or not.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, mask: Tensor, lam: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight, mask)
        ctx.lam = lam
        return weight * mask

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        weight, mask = ctx.saved_tensors
        if ctx.lam:
            grad = grad + ctx.lam * weight * (~mask)
        return grad, None, None


class NMSTE(nn.Module):
    """Parametrization for training N:M-sparse from scratch with a *dynamic* mask.

    Every forward pass recomputes the N:M mask from the current dense weight ``W`` and
    returns ``W * mask``; the backward pass is straight-through, plus SR-STE's
    "sparse-refined" decay ``lam * (~mask) * W`` on the pruned weights (Zhou et al. 2021,
    Eq. 6: ``W <- W - lr * (g(W~) + lam_W * (~E) * W)``). ``lam = 0`` is plain STE.

    The current mask is kept in the bool buffer ``mask``; ``flips`` counts how many of its
    entries changed between consecutive training-mode forward passes.
    """

    mask: Tensor
    flips: Tensor

    def __init__(self, shape: Sequence[int], n: int = 2, m: int = 4, lam: float = 0.0) -> None:
        super().__init__()
        _check_nm(n, m)
        lam = _validate.real(lam, "lam", low=0.0)
        self.n, self.m, self.lam = n, m, float(lam)
        self.register_buffer("mask", torch.ones(tuple(shape), dtype=torch.bool))
        self.register_buffer("flips", torch.zeros((), dtype=torch.long))
        self._initialised = False

    def current_mask(self, weight: Tensor) -> Tensor:
        """The N:M mask of ``weight`` along its input dim."""
        return nm_mask(group_view(weight).detach(), self.n, self.m).reshape(weight.shape)

    def forward(self, weight: Tensor) -> Tensor:
        mask = self.current_mask(weight)
        if self.training:
            if self._initialised:
                self.flips += (mask != self.mask).sum()
            self._initialised = True
        self.mask.copy_(mask)
        return _SRSTEFunction.apply(weight, mask, self.lam)

    def extra_repr(self) -> str:
        return f"n={self.n}, m={self.m}, lam={self.lam}"


def _ste_of(module: nn.Module) -> NMSTE | None:
    return find_parametrization(module, NMSTE)  # type: ignore[return-value]


def apply_ste(model: nn.Module, n: int = 2, m: int = 4, lam: float = 0.0) -> list[str]:
    """Register ``NMSTE`` on every Linear / Conv weight whose input dim is a multiple of ``m``.

    ``lam = 0``: straight-through estimator; ``lam > 0``: SR-STE (Zhou et al. 2021 use
    ``lam = 2e-4`` with SGD). Returns the weight names that were made N:M.
    """
    _check_nm(n, m)
    done = []
    for name, module in _prunable_modules(model).items():
        if _ste_of(module) is not None:
            raise ValueError(f"{_weight_name(name)} already has an N:M STE parametrization")
        weight = _stored_weight(module)
        if group_view(weight).shape[-1] % m:
            continue
        parametrize.register_parametrization(module, "weight", NMSTE(weight.shape, n, m, lam), unsafe=True)
        done.append(_weight_name(name))
    return done


def ste_masks(model: nn.Module) -> dict[str, Tensor]:
    """``{weight name: current N:M mask}`` of every STE-parametrized weight (copies)."""
    out = {}
    for name, module in _prunable_modules(model).items():
        p = _ste_of(module)
        if p is not None:
            out[_weight_name(name)] = p.current_mask(module.parametrizations["weight"].original).clone()
    return out


def finalize_ste(model: nn.Module) -> dict[str, Tensor]:
    """Freeze the STE masks: remove ``NMSTE`` and hold the final masks with ``apply_masks``.

    The dense weights come back, then the N:M mask of their final values is applied as an
    ordinary sparsekit mask (so fine-tuning keeps the pattern). Returns those masks.
    """
    masks = ste_masks(model)
    for module in _prunable_modules(model).values():
        if _ste_of(module) is not None:
            _detach_injected_class(module)
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    apply_masks(model, masks)
    return masks


def mask_flips(before: Mapping[str, Tensor], after: Mapping[str, Tensor]) -> int:
    """Number of mask entries that differ between two mask dicts (same keys and shapes).

    Zhou et al. 2021 (Sec. 4) track this "flip number" as a measure of training stability.
    """
    if set(before) != set(after):
        raise ValueError(f"mask dicts have different keys: {sorted(before)} vs {sorted(after)}")
    total = 0
    for k in before:
        if before[k].shape != after[k].shape:
            raise ValueError(f"masks[{k!r}] shapes differ: {tuple(before[k].shape)} vs {tuple(after[k].shape)}")
        total += int((before[k] != after[k]).sum())
    return total


class FlipCounter:
    """A ``step_hook`` for ``sk.train.train`` that records N:M mask flips per ``every`` steps.

    ``counter = FlipCounter(every=len(train_loader))``; after training ``counter.flips[i]``
    is the number of mask entries that changed during the i-th interval.
    """

    def __init__(self, every: int = 1) -> None:
        every = _validate.positive_int(every, "every")
        self.every = every
        self.flips: list[int] = []
        self._last: dict[str, Tensor] | None = None

    def __call__(self, step: int, model: nn.Module) -> None:
        if step % self.every and self._last is not None:
            return
        masks = ste_masks(model)
        if self._last is not None:
            self.flips.append(mask_flips(self._last, masks))
        self._last = masks

    def start(self, model: nn.Module) -> FlipCounter:
        """Record the masks before training (so the first interval is counted); returns self."""
        self._last = ste_masks(model)
        return self


# --------------------------------------------------------------------------------------
# 4. Channel permutations (Pool & Yu 2021)
# --------------------------------------------------------------------------------------

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
    _check_tensor(weight, "weight")
    _check_nm(n, m)
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
    out_ch = _stored_weight(producer).shape[0]
    in_ch = _stored_weight(consumer).shape[1]
    if out_ch != in_ch:
        raise ValueError(f"producer has {out_ch} output channels but consumer has {in_ch} input channels")
    perm = _check_perm(perm, in_ch).to(_stored_weight(consumer).device)
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
    stored = _stored_weight(module)
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
        weight = _stored_weight(consumer)
        if weight.dim() != 2:
            raise ValueError(f"consumer {cons_name!r} must be a Linear layer for the search")
        before = kept_magnitude(weight, n, m)
        perm = search_permutation(weight, n, m, **search_kwargs)
        permute_channels(modules[prod_name], consumer, perm, [modules[b] for b in between_names])
        out[_weight_name(cons_name)] = (before, kept_magnitude(_stored_weight(consumer), n, m))
    return out
