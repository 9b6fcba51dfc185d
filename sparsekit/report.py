"""Cost accounting: what a sparse model stores and computes, layer by layer.

For each prunable layer: shape, parameters, nonzeros, sparsity; multiply-accumulate
FLOPs as dense and as *effective* (only nonzero weights), for one example input; and
the bytes needed to store the weight as dense, CSR (values + int64 column indices +
row pointers, as ``torch.sparse_csr`` stores it), and bitmask (one bit per entry +
the nonzero values).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .masking import _prunable_modules, _weight_name


@dataclass(frozen=True)
class LayerCost:
    """Costs of one layer's weight; FLOPs count a multiply-add as 2."""

    name: str
    shape: tuple[int, ...]
    params: int
    nonzeros: int
    dense_flops: int
    effective_flops: int
    dense_bytes: int
    csr_bytes: int
    bitmask_bytes: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params


def storage_bytes(weight: Tensor, index_bytes: int = 8) -> dict[str, int]:
    """Bytes of ``weight`` (viewed as rows x columns) as dense, CSR and bitmask."""
    w = weight.detach()
    w = w.reshape(w.shape[0], math.prod(w.shape[1:])) if w.dim() > 1 else w.reshape(1, w.numel())
    rows, _ = w.shape
    nnz = int((w != 0).sum())
    elem = w.element_size()
    return {
        "dense": w.numel() * elem,
        "csr": nnz * (elem + index_bytes) + (rows + 1) * index_bytes,
        "bitmask": (w.numel() + 7) // 8 + nnz * elem,
    }


Hook = Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]


@torch.no_grad()
def forward_with_hooks(model: nn.Module, example_input: Tensor, hooks: Sequence[tuple[nn.Module, Hook]]) -> None:
    """One eval-mode forward pass of ``example_input`` with temporary forward hooks.

    The hooks are removed and the model's train/eval mode restored afterwards, even if
    the forward pass raises. The way every counter here observes shapes.
    """
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


@torch.no_grad()
def cost_report(model: nn.Module, example_input: Tensor) -> list[LayerCost]:
    """One :class:`LayerCost` per Linear/Conv layer for a forward pass on ``example_input``.

    FLOPs are per *batch* of ``example_input``: a Linear or Conv layer does one
    multiply-add per weight per output position (``2 * weight.numel() * positions``).
    """
    modules = _prunable_modules(model)
    positions: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            # Linear: every leading dim is a position; Conv: batch x output spatial size.
            out_features = output.shape[-1] if isinstance(module, nn.Linear) else output.shape[1]
            positions[name] = output.numel() // out_features if out_features else 0  # a fully shrunk layer
        return record

    forward_with_hooks(model, example_input, [(m, hook(n)) for n, m in modules.items()])
    rows = []
    for name, module in modules.items():
        w = module.weight.detach()
        n_pos = positions.get(name, 0)
        nnz = int((w != 0).sum())
        b = storage_bytes(w)
        rows.append(LayerCost(
            name=_weight_name(name), shape=tuple(w.shape), params=w.numel(), nonzeros=nnz,
            dense_flops=2 * w.numel() * n_pos, effective_flops=2 * nnz * n_pos,
            dense_bytes=b["dense"], csr_bytes=b["csr"], bitmask_bytes=b["bitmask"],
        ))
    return rows


def totals(rows: list[LayerCost]) -> dict[str, float]:
    """Model totals of a :func:`cost_report`."""
    params = sum(r.params for r in rows)
    nnz = sum(r.nonzeros for r in rows)
    return {
        "params": params, "nonzeros": nnz, "sparsity": 1.0 - nnz / params if params else 0.0,
        "dense_flops": sum(r.dense_flops for r in rows),
        "effective_flops": sum(r.effective_flops for r in rows),
        "dense_bytes": sum(r.dense_bytes for r in rows),
        "csr_bytes": sum(r.csr_bytes for r in rows),
        "bitmask_bytes": sum(r.bitmask_bytes for r in rows),
    }


def format_report(rows: list[LayerCost]) -> str:
    """A plain-text table of a :func:`cost_report` with a totals line."""
    head = f"{'layer':<22}{'shape':>16}{'params':>9}{'nonzero':>9}{'sparsity':>9}" \
           f"{'MFLOPs':>9}{'eff.MFLOPs':>11}{'dense kB':>9}{'CSR kB':>8}{'bitmask kB':>11}"
    lines = [head, "-" * len(head)]

    def line(name: str, shape: str, p: float, nz: float, fd: float, fe: float, bd: float, bc: float, bb: float) -> str:
        sp = 1 - nz / p if p else 0.0
        return (f"{name:<22}{shape:>16}{p:>9,.0f}{nz:>9,.0f}{sp:>9.1%}{fd / 1e6:>9.2f}{fe / 1e6:>11.2f}"
                f"{bd / 1e3:>9.1f}{bc / 1e3:>8.1f}{bb / 1e3:>11.1f}")

    for r in rows:
        lines.append(line(r.name, "x".join(map(str, r.shape)), r.params, r.nonzeros, r.dense_flops,
                          r.effective_flops, r.dense_bytes, r.csr_bytes, r.bitmask_bytes))
    t = totals(rows)
    lines.append("-" * len(head))
    lines.append(line("total", "", t["params"], t["nonzeros"], t["dense_flops"], t["effective_flops"],
                      t["dense_bytes"], t["csr_bytes"], t["bitmask_bytes"]))
    return "\n".join(lines)
