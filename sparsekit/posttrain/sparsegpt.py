"""SparseGPT (Frantar & Alistarh 2023, Algorithm 1): prune a layer and repair the rest.

The layer-wise problem ``min ||W X^T - W' X^T||^2`` with ``W'`` zero outside a mask has, for
one removed weight ``w_q`` of a row, the optimal brain surgeon solution (Hassibi & Stork
1993): ``delta = -(w_q / [H^-1]_qq) H^-1_{:,q}`` with ``H = X^T X``, at a loss increase of
``w_q^2 / [H^-1]_qq``. Recomputing ``H^-1`` for every row and every removed weight is too
costly, so SparseGPT processes the columns left to right: a column, once decided, is frozen,
and its error is spread over the columns to its right only. All rows then share the same
sequence of inverses ``(H_{F,F})^-1`` for the trailing sets ``F = {j, j+1, ...}``, and the
row ``j`` of the upper Cholesky factor ``U`` of ``H^-1`` holds exactly the first row of
``(H_{F,F})^-1`` divided by ``sqrt`` of its first entry (Sec. 3.2, "Cholesky trick"). The
mask is chosen block by block of ``blocksize`` columns from ``w^2 / U_jj^2``, the OBS
saliency, using the weights as updated so far (Sec. 3.3, adaptive mask selection).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _validate
from ..nm import nm_mask
from .wanda import check_nm_pattern, check_weight


def check_hessian(hessian: object, columns: int) -> Tensor:
    """A finite, symmetric ``[in, in]`` matrix (``ValueError`` naming what is wrong)."""
    if not isinstance(hessian, Tensor):
        raise TypeError(f"hessian must be a Tensor, got {type(hessian).__name__}")
    if hessian.shape != (columns, columns):
        raise ValueError(f"hessian must have shape [in, in] = ({columns}, {columns}), got {tuple(hessian.shape)}")
    h = hessian.detach().to(torch.float64)
    if not bool(torch.isfinite(h).all()):
        raise ValueError("hessian holds NaN or infinite values")
    scale = float(h.abs().max()) if h.numel() else 0.0
    asym = float((h - h.T).abs().max()) if h.numel() else 0.0
    if asym > 1e-6 * max(scale, 1e-300):
        raise ValueError(f"hessian must be symmetric (H = sum x^T x), got max |H - H^T| = {asym:.3g} "
                         f"for max |H| = {scale:.3g}")
    return h


def inverse_hessian_factor(hessian: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor ``U`` of ``(H + damp * mean(diag H) * I)^-1`` (``H`` float64, no dead columns)."""
    h = hessian.clone()
    h.diagonal().add_(damp * float(h.diagonal().mean()))
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        raise ValueError(f"hessian (+ damping {damp:g} * mean diagonal) is not positive definite: "
                         "use damp > 0 (the papers use 0.01) or more calibration data")
    return torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)


def _choose_block_mask(w_block: Tensor, d_block: Tensor, prune_count: int) -> Tensor:
    """True = pruned: the ``prune_count`` lowest saliencies ``w^2 / d^2`` of the block (row-major ties)."""
    pruned = torch.zeros_like(w_block, dtype=torch.bool)
    if prune_count:
        saliency = (w_block ** 2 / d_block.unsqueeze(0) ** 2).reshape(-1)
        pruned.view(-1)[torch.sort(saliency, stable=True).indices[:prune_count]] = True
    return pruned


def sparsegpt(weight: Tensor, hessian: Tensor, sparsity: float = 0.5, *, nm: tuple[int, int] | None = None,
              blocksize: int = 128, damp: float = 0.01, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(new_weight, mask)``: SparseGPT's mask and OBS-updated weights for one ``[out, in]`` layer.

    ``hessian`` is ``H = sum x^T x`` over the calibration tokens (``CalibrationStats.gram``);
    ``damp * mean(diag H)`` is added to its diagonal. Unstructured: exactly
    ``round(sparsity * out * in)`` entries are pruned, chosen per block of ``blocksize``
    columns over all rows. ``nm=(n, m)``: the ``n`` largest saliencies of every ``m``
    consecutive inputs of a row are kept, chosen when the first column of the group is
    reached (exact N:M; ``sparsity`` is then unused). ``new_weight`` is exactly 0 where
    ``mask`` is False and has ``weight``'s dtype; input features that were never active
    (``H_jj = 0``) are zeroed. The arguments are not modified. Computed in float64.

    ``mask`` (bool ``[out, in]``, True = kept): prune exactly there instead of choosing, and only
    apply the OBS update (e.g. to Wanda's or magnitude's mask; ``sparsity`` and ``nm`` unused).
    """
    weight = check_weight(weight)
    rows, columns = weight.shape
    h = check_hessian(hessian, columns).to(weight.device)
    sparsity = _validate.fraction(sparsity, "sparsity")
    pattern = None if nm is None else check_nm_pattern(nm, columns)
    blocksize = _validate.positive_int(blocksize, "blocksize")
    if pattern is not None and blocksize % pattern[1]:
        raise ValueError(f"blocksize must be a multiple of m={pattern[1]} for N:M, got {blocksize}")
    damp = _validate.real(damp, "damp", low=0.0)
    if mask is not None:
        if nm is not None:
            raise ValueError("pass either mask= (a fixed mask) or nm= (a pattern to choose), not both")
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a bool Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool or mask.shape != weight.shape:
            raise ValueError(f"mask must be bool with the weight's shape {tuple(weight.shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")

    w = weight.detach().to(torch.float64).clone()
    h = h.clone()
    dead = h.diagonal() == 0  # inputs that are always 0: their weights do nothing
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = inverse_hessian_factor(h, damp)

    fixed = mask is not None
    pruned = ~mask.to(w.device) if fixed else torch.zeros(rows, columns, dtype=torch.bool, device=w.device)
    total = int(pruned.sum()) if fixed else round(sparsity * rows * columns)
    for start in range(0, columns, blocksize):
        end = min(start + blocksize, columns)
        w_block, u_block = w[:, start:end].clone(), u[start:end, start:end]
        err_block = torch.zeros_like(w_block)
        if not fixed and pattern is None:  # this block's share keeps the running count exact
            share = round(sparsity * rows * end) - int(pruned.sum())
            pruned[:, start:end] = _choose_block_mask(w_block, u_block.diagonal(), share)
        for i in range(end - start):
            col = start + i
            if not fixed and pattern is not None and col % pattern[1] == 0:
                n, m = pattern
                saliency = w_block[:, i:i + m] ** 2 / u_block.diagonal()[i:i + m].unsqueeze(0) ** 2
                pruned[:, col:col + m] = ~nm_mask(saliency, n, m)
            q = torch.where(pruned[:, col], 0.0, w_block[:, i])
            err = (w_block[:, i] - q) / u_block[i, i]
            w_block[:, i:] -= err.unsqueeze(1) * u_block[i, i:].unsqueeze(0)  # OBS update of the block
            w_block[:, i] = q
            err_block[:, i] = err
        w[:, start:end] = w_block
        w[:, end:] -= err_block @ u[start:end, end:]  # the block's errors reach the columns to its right
    if pattern is None:
        assert int(pruned.sum()) == total
    kept = ~pruned
    w[pruned] = 0.0
    return w.to(weight.dtype), kept
