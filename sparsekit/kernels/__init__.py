"""GPU code for 2:4 sparsity: Triton kernels, PyTorch's semi-structured adapter, capability checks.

* ``prune_compress_24`` — one Triton pass: prune a 2-D weight to 2:4 by magnitude and
  write the compressed format of ``sparsekit.compress_24``, bit for bit.
* ``sparse24_linear`` — ``x @ W.T + bias`` that reads only the compressed weight
  (``values``, ``meta``) and decompresses it in registers; autotuned on a GPU, with
  split-K for small batches.
* ``to_semi_structured`` — swap a model's Linear weights for
  ``torch.sparse.to_sparse_semi_structured`` tensors (Sparse Tensor Cores, sm_80+).
* ``sparse_tensor_cores_available`` — can this machine run 2:4 on tensor cores?
* ``kernels_unavailable_reason`` — why the Triton kernels cannot run here (``None`` if they can).

Triton is imported lazily, on the first kernel call, so ``import sparsekit`` (and this
package) never imports it. On a machine without CUDA the kernels run under Triton's CPU
interpreter, which must be switched on *before* Triton is first imported::

    import os, torch
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
"""

from __future__ import annotations

from .semi import (
    SemiStructuredReport,
    semi_structured_status,
    sparse_tensor_cores_available,
    to_semi_structured,
)
from .triton24 import (
    interpreting,
    kernels_unavailable_reason,
    prune_compress_24,
    sparse24_linear,
    triton_available,
)

__all__ = [
    "prune_compress_24", "sparse24_linear", "to_semi_structured", "SemiStructuredReport",
    "semi_structured_status", "sparse_tensor_cores_available", "interpreting", "triton_available",
    "kernels_unavailable_reason",
]
