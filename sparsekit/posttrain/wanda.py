"""Wanda (Sun et al. 2024): prune by ``|W_ij| * ||X_j||_2`` within each output row.

Why this score: the layer-wise loss ``||W X^T - W' X^T||^2`` of removing one weight
``W_ij`` alone is ``W_ij^2 ||X_j||^2`` if the input features were uncorrelated, i.e. the
diagonal of ``H = X^T X`` (Sun et al., Sec. 3, and the OBS saliency ``w^2 / [H^-1]_jj``
with a diagonal ``H``). Its square root is the score. Sun et al. compare weights per
output row (their Table 9: per-row beats per-layer) and do not update the kept weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _validate
from ..nm import check_nm, nm_mask


def check_weight(weight: object, name: str = "weight") -> Tensor:
    """A 2-D floating-point ``[out, in]`` weight (``TypeError`` / ``ValueError`` otherwise)."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"{name} must be 2-D [out, in] (a Linear weight), got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {weight.dtype}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(f"{name} holds NaN or infinite values")
    return weight


def check_nm_pattern(nm: object, columns: int) -> tuple[int, int]:
    """``nm = (n, m)`` with ``1 <= n <= m`` and ``m`` dividing the number of input ``columns``."""
    if not isinstance(nm, (tuple, list)) or len(nm) != 2:
        raise ValueError(f"nm must be a pair (n, m), got {nm!r}")
    n, m = nm
    check_nm(n, m)
    if columns % m:
        raise ValueError(f"nm=({n}, {m}): m must divide the number of inputs, got {columns} inputs")
    return int(n), int(m)


def row_mask(scores: Tensor, sparsity: float) -> Tensor:
    """True except at the ``round(sparsity * in)`` lowest scores of every row (ties: lower index first)."""
    pruned = round(sparsity * scores.shape[1])
    mask = torch.ones_like(scores, dtype=torch.bool)
    if pruned:
        order = torch.sort(scores, dim=1, stable=True).indices[:, :pruned]
        mask.scatter_(1, order, False)
    return mask


def _masked_by(scores: Tensor, sparsity: float, nm: tuple[int, int] | None) -> Tensor:
    if nm is not None:
        return nm_mask(scores, *nm)
    return row_mask(scores, sparsity)


def wanda_mask(weight: Tensor, input_norm: Tensor, sparsity: float = 0.5, *,
               nm: tuple[int, int] | None = None) -> Tensor:
    """Wanda's mask (Sun et al. 2024, Eq. 1): keep the largest ``|W_ij| * input_norm_j`` per row.

    ``weight`` is ``[out, in]``, ``input_norm`` is ``[in]`` (``||X_j||_2 = sqrt(H_jj)``, see
    ``CalibrationStats.input_norm``). Exactly ``round(sparsity * in)`` entries of every row
    are False (ties: the lower index is pruned first). ``nm=(n, m)``: keep the ``n``
    largest scores in every ``m`` consecutive inputs instead (``sparsity`` is then unused).
    """
    weight = check_weight(weight)
    if not isinstance(input_norm, Tensor):
        raise TypeError(f"input_norm must be a Tensor, got {type(input_norm).__name__}")
    if input_norm.shape != (weight.shape[1],):
        raise ValueError(f"input_norm must have shape [in] = ({weight.shape[1]},) for a weight of shape "
                         f"{tuple(weight.shape)}, got {tuple(input_norm.shape)}")
    if not bool(torch.isfinite(input_norm).all()) or bool((input_norm < 0).any()):
        raise ValueError("input_norm must be finite and >= 0 (an L2 norm per input feature)")
    sparsity = _validate.fraction(sparsity, "sparsity")
    pattern = None if nm is None else check_nm_pattern(nm, weight.shape[1])
    scores = weight.detach().abs().double() * input_norm.detach().to(weight.device, torch.float64)
    return _masked_by(scores, sparsity, pattern)


def row_magnitude_mask(weight: Tensor, sparsity: float = 0.5, *, nm: tuple[int, int] | None = None) -> Tensor:
    """Magnitude pruning per output row, the baseline of both papers: ``wanda_mask`` with
    every ``input_norm`` equal (keep the largest ``|W_ij|`` of each row, or N:M)."""
    weight = check_weight(weight)
    return wanda_mask(weight, torch.ones(weight.shape[1], dtype=torch.float64), sparsity, nm=nm)
