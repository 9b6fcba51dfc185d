"""Structured pruning: remove whole channels, filters and attention heads.

Unstructured pruning zeroes single weights; the tensor keeps its shape, and a dense
kernel does the same work as before. Structured pruning removes a whole output channel
of a layer (a row of a Linear weight, a filter of a Conv) and everything that only
existed to compute or consume it, so what is left is a **smaller dense model** that
runs faster on any hardware. The pipeline steps, one module each:

* *score* (:mod:`~sparsekit.structured.importance`; one score per output channel,
  larger = keep): ``l1_importance`` (Li et al. 2017), ``bn_importance`` (network
  slimming, Liu et al. 2017, trained with ``slimming_loss`` or ``slimming_hook``),
  ``taylor_importance`` (Molchanov et al. 2019), ``random_importance``;
* *select* and *finalize = shrink* (:mod:`~sparsekit.structured.shrink`):
  ``shrink_channels`` plans which channels go and returns a new, physically smaller
  model, leaving the original untouched. The channel dependencies (BatchNorm, the next
  layer's input, residual groups) come from the model's ``torch.fx`` graph
  (``channel_groups``, :mod:`sparsekit.graph`, after DepGraph, Fang et al. 2023);
* attention heads (:mod:`~sparsekit.structured.heads`): score with ``head_importance``
  (Michel et al. 2019) or ``head_magnitude``, select with ``select_heads``, finalize
  with ``shrink_heads`` (a new, smaller model), step by step with ``prune_heads_iteratively``;
  ``torch.nn.MultiheadAttention`` too;
* the plan (:class:`~sparsekit.structured.shrink.ChannelPlan`: removed channels per layer,
  skipped groups and why) travels with the shrunk model: ``save_shrunk`` / ``load_shrunk``
  rebuild it from a fresh model (``torch.load(..., weights_only=True)``), and
  ``cut_removed_inputs`` gives the zero-channel reference it must equal;
* what it saves: :func:`~sparsekit.report.cost` counts parameters and FLOPs
  (``FlopCounterMode``, the same count as :func:`sparsekit.report.cost_report`).

Every name is importable from here (``sk.structured.shrink_channels``).
"""

from __future__ import annotations

from ..report import Cost, cost
from .heads import (
    ShrunkMultiheadAttention,
    attention_layers,
    head_importance,
    head_magnitude,
    mha_layers,
    prune_heads_iteratively,
    select_heads,
    shrink_heads,
)
from .importance import (
    LossFn,
    bn_importance,
    bn_l1_penalty,
    gate_gradients,
    l1_importance,
    random_importance,
    slimming_hook,
    slimming_loss,
    taylor_importance,
)
from .shrink import (
    CHANNEL_SCORES,
    ChannelPlan,
    apply_plan,
    channel_groups,
    cut_removed_inputs,
    load_shrunk,
    save_shrunk,
    shrink_channels,
)

__all__ = [
    "CHANNEL_SCORES", "ChannelPlan", "Cost", "LossFn", "ShrunkMultiheadAttention", "apply_plan", "attention_layers",
    "bn_importance", "bn_l1_penalty", "channel_groups", "cost", "cut_removed_inputs", "gate_gradients",
    "head_importance", "head_magnitude", "l1_importance", "load_shrunk", "mha_layers", "prune_heads_iteratively",
    "random_importance", "save_shrunk", "select_heads", "shrink_channels", "shrink_heads", "slimming_hook",
    "slimming_loss", "taylor_importance",
]
