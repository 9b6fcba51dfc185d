"""sparsekit: the reference implementations behind *Sparse Networks, by hand*.

Every technique is a point in one pipeline::

    score  ->  select  ->  mask  ->  (train with the mask held)  ->  finalize

``scores`` rank weights, ``select_masks`` turns ranks into exact-count masks,
``apply_masks`` holds them through training (parametrizations), ``snapshot``/``rewind``
return a masked model to an earlier point, and ``finalize`` (with ``remove_masks``) ends
the training-time machinery. Chapter modules (``structured``, ``lottery``, ``movement``, ``execute``,
``nm``, ``kernels``, ``at_init``) build on these; they are imported on first use
(PEP 562), so ``import sparsekit`` stays fast and never imports Triton; ``viz`` too, so
it never imports matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import bench, data, models, recipes, report, scores, select, train
from .masking import (
    apply_masks,
    effective_weights,
    get_masks,
    load_masked_state_dict,
    prunable_weights,
    remove_masks,
    sparsity,
)
from .rewinding import rewind, snapshot
from .seeding import seed_everything, seeds
from .select import cubic_sparsity, imp_sparsity, select_masks

__version__ = "0.1.0"

# Chapter modules, ``synthetic`` and ``viz`` (matplotlib), imported on first attribute access.
_LAZY_MODULES = (
    "batchnorm", "book",
    "at_init", "connectivity", "execute", "finalize", "graph", "kernels", "lottery", "movement", "nm", "nm_training",
    "obd", "permutation", "posttrain", "pretrained", "structured", "synthetic", "unstructured", "viz",
)
# Top-level names that live in a chapter module: name -> module.
_LAZY_NAMES = {
    "nm_mask": "nm", "is_nm": "nm", "compress_24": "nm", "decompress_24": "nm",
    "at_init_masks": "at_init", "layer_collapse": "at_init",
    "recalibrate_batchnorm": "batchnorm",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    raise AttributeError(f"module 'sparsekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_MODULES) | set(_LAZY_NAMES))


__all__ = [
    "apply_masks", "bench", "cubic_sparsity", "data", "effective_weights", "get_masks",
    "imp_sparsity", "load_masked_state_dict", "models", "prunable_weights", "recipes", "remove_masks",
    "report", "rewind", "scores", "seed_everything", "seeds", "select", "select_masks", "snapshot", "sparsity",
    "train",
    *_LAZY_MODULES, *_LAZY_NAMES,
]
