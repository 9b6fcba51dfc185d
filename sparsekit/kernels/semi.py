"""PyTorch's semi-structured (2:4) sparsity on Sparse Tensor Cores, with honest capability checks.

``torch.sparse.to_sparse_semi_structured`` turns a 2:4-sparse fp16/bf16 CUDA weight into
a tensor whose matmuls run on the Sparse Tensor Cores of Ampere and later GPUs (compute
capability >= 8.0; Mishra et al. 2021). A T4 (sm_75, Colab's free GPU) has tensor cores
but no *sparse* ones, and a CPU has neither: there the adapter leaves the model dense and
says why instead of failing deep inside a CUDA kernel.

Pitfall worth a check: the conversion does **not** verify that the weight is 2:4; in a
group with three or four nonzeros it keeps two and silently drops the rest. So
``to_semi_structured`` refuses weights that ``sk.is_nm`` rejects.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ..nm import is_nm

MIN_CAPABILITY = (8, 0)
# Minimum weight shape for torch's CUTLASS backend (rows, cols multiples of these);
# read from torch when it exposes them.
_FALLBACK_MIN_SHAPE = {torch.float16: (32, 64), torch.bfloat16: (32, 64)}


def semi_structured_status(device: torch.device | str | int | None = None) -> tuple[bool, str]:
    """``(available, reason)``: can ``to_sparse_semi_structured`` run here, and if not, why."""
    if not torch.cuda.is_available():
        return False, "no CUDA GPU: semi-structured sparsity needs an NVIDIA GPU with compute capability >= 8.0"
    dev = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    if dev.type != "cuda":
        return False, f"device {dev} is not a CUDA device"
    cap = torch.cuda.get_device_capability(dev)
    name = torch.cuda.get_device_name(dev)
    if cap < MIN_CAPABILITY:
        return False, (f"{name} has compute capability {cap[0]}.{cap[1]}; Sparse Tensor Cores need "
                       f">= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} (Ampere or later; a T4 is 7.5)")
    return True, f"{name} (compute capability {cap[0]}.{cap[1]}) has Sparse Tensor Cores"


def sparse_tensor_cores_available(device: torch.device | str | int | None = None) -> bool:
    """True if a CUDA GPU with compute capability >= 8.0 is available (torch >= 2.4 always has the API)."""
    return semi_structured_status(device)[0]


def min_weight_shape(dtype: torch.dtype) -> tuple[int, int]:
    """``(rows, cols)``: a semi-structured weight's dims must be multiples of these."""
    try:
        from torch.sparse import SparseSemiStructuredTensorCUTLASS as Cutlass

        cfg = Cutlass._DTYPE_SHAPE_CONSTRAINTS[dtype]
        return int(cfg.sparse_min_rows), int(cfg.sparse_min_cols)
    except (ImportError, AttributeError, KeyError):
        if dtype not in _FALLBACK_MIN_SHAPE:
            raise ValueError(f"dtype must be float16 or bfloat16, got {dtype}") from None
        return _FALLBACK_MIN_SHAPE[dtype]


@dataclass
class SemiStructuredReport:
    """What ``to_semi_structured`` did: swapped layers, skipped layers with reasons."""

    available: bool
    reason: str
    swapped: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _check_linear(name: str, layer: nn.Linear) -> str | None:
    """Why ``layer`` cannot be converted, or None if it can."""
    w = layer.weight
    if w.dtype not in (torch.float16, torch.bfloat16):
        return f"dtype {w.dtype} (semi-structured needs float16 or bfloat16)"
    if w.device.type != "cuda":
        return f"weight on {w.device}, not a CUDA device"
    rows, cols = min_weight_shape(w.dtype)
    if w.shape[0] % rows or w.shape[1] % cols:
        return f"shape {tuple(w.shape)}: rows must be a multiple of {rows} and columns of {cols}"
    if not is_nm(w.detach(), 2, 4):
        return "weight is not 2:4 sparse (prune it first, e.g. sk.nm.apply_nm + sk.remove_masks)"
    return None


def to_semi_structured(model: nn.Module, *, strict: bool = False) -> SemiStructuredReport:
    """Swap every eligible ``nn.Linear`` weight for ``to_sparse_semi_structured(weight)``.

    Eligible: a plain (unmasked: call ``sk.remove_masks`` first) fp16/bf16 CUDA weight that
    is 2:4 sparse and whose shape meets torch's minimums. Others are skipped with a reason
    (``strict=True``: ``ValueError`` instead). Without Sparse Tensor Cores (no GPU, or
    compute capability < 8.0 such as a T4) nothing is swapped: the model stays dense and
    correct, a ``UserWarning`` says why, and the report's ``available`` is False.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    available, reason = semi_structured_status()
    report = SemiStructuredReport(available, reason)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not available:
        warnings.warn(f"to_semi_structured: keeping the model dense: {reason}", UserWarning, stacklevel=2)
        report.skipped = {n: reason for n in layers}
        return report
    for name, layer in layers.items():
        if torch.nn.utils.parametrize.is_parametrized(layer, "weight"):
            why: str | None = "weight is parametrized (masked): call sk.remove_masks(model) first"
        else:
            why = _check_linear(name, layer)
        if why is not None:
            if strict:
                raise ValueError(f"layer {name!r} cannot be semi-structured: {why}")
            report.skipped[name] = why
            continue
        layer.weight = nn.Parameter(torch.sparse.to_sparse_semi_structured(layer.weight.detach()),
                                    requires_grad=False)
        report.swapped.append(name)
    return report
