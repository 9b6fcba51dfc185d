"""Training N:M masks with a straight-through estimator: the *train* step.

In score -> select -> mask -> train -> finalize, N:M sparsity can be learned rather than
fixed once: the mask is recomputed from the dense weight at every forward pass (*select*
inside *train*), the backward pass is straight-through (Bengio et al. 2013) with SR-STE's
sparse-refined decay on the pruned weights (Zhou et al. 2021, Eq. 6), and
``sparsekit.finalize.freeze_masks`` freezes the last masks as ordinary sparsekit masks
(*finalize*; ``NMSTE.current_mask`` is what it reads).

This module holds, top to bottom: the SR-STE autograd function, the ``NMSTE``
parametrization, ``apply_ste`` / ``ste_masks``, and the mask-flip
count that Zhou et al. use to measure training stability (``mask_flips``,
``FlipCounter``). The N:M masks themselves are ``sparsekit.nm``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import _validate
from .masking import (
    find_parametrization,
    prunable_modules,
    stored_weight,
    weight_name,
)
from .nm import check_nm, group_view, nm_mask

__all__ = ["NMSTE", "apply_ste", "ste_masks", "mask_flips", "FlipCounter"]


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

    The mask of the last forward pass is kept in the bool buffer ``mask``; ``flips``
    counts how many of its entries changed between consecutive training-mode forward
    passes. ``current_mask()`` is the mask the next forward pass applies (that of the
    weight as it is now); it needs the layer, which ``apply_ste`` records.
    """

    mask: Tensor
    flips: Tensor

    def __init__(self, shape: Sequence[int], n: int = 2, m: int = 4, lam: float = 0.0) -> None:
        super().__init__()
        check_nm(n, m)
        lam = _validate.real(lam, "lam", low=0.0)
        self.n, self.m, self.lam = n, m, float(lam)
        self.register_buffer("mask", torch.ones(tuple(shape), dtype=torch.bool))
        self.register_buffer("flips", torch.zeros((), dtype=torch.long))
        self._initialised = False
        # The layer whose weight this parametrizes (set by ``apply_ste``). Kept out of the
        # module tree (not a submodule); ``copy.deepcopy`` of the model maps it to the copy.
        self.__dict__["_layer"] = None

    def _mask_of(self, weight: Tensor) -> Tensor:
        """The N:M mask of ``weight`` along its input dim (``nm.group_view``)."""
        return nm_mask(group_view(weight).detach(), self.n, self.m).reshape(weight.shape)

    @torch.no_grad()
    def current_mask(self) -> Tensor:
        """The bool N:M mask this parametrization applies now (a new tensor).

        It is the mask of the weight as the next forward pass receives it: the stored
        original, passed through the parametrizations registered before this one (e.g. a
        ``WeightMask``). Not the buffer ``mask``, which is the last forward pass's and lags
        one optimizer step behind. ``ValueError`` if it was not registered by ``apply_ste``.
        """
        layer = self.__dict__["_layer"]
        if layer is None or find_parametrization(layer, NMSTE) is not self:
            raise ValueError("this NMSTE is not registered on a layer by nm_training.apply_ste; "
                             "its current mask is unknown (the buffer 'mask' holds the last forward pass's)")
        plist = layer.parametrizations["weight"]
        weight = plist.original
        for p in plist:
            if p is self:
                break
            weight = p(weight)
        return self._mask_of(weight)

    def forward(self, weight: Tensor) -> Tensor:
        mask = self._mask_of(weight)
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
    check_nm(n, m)
    done = []
    for name, module in prunable_modules(model).items():
        if _ste_of(module) is not None:
            raise ValueError(f"{weight_name(name)} already has an N:M STE parametrization")
        weight = stored_weight(module)
        if group_view(weight).shape[-1] % m:
            continue
        ste = NMSTE(weight.shape, n, m, lam)
        parametrize.register_parametrization(module, "weight", ste, unsafe=True)
        ste.__dict__["_layer"] = module
        done.append(weight_name(name))
    return done


def ste_masks(model: nn.Module) -> dict[str, Tensor]:
    """``{weight name: current N:M mask}`` of every STE-parametrized weight (``NMSTE.current_mask``)."""
    out = {}
    for name, module in prunable_modules(model).items():
        p = _ste_of(module)
        if p is not None:
            out[weight_name(name)] = p.current_mask()
    return out


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
