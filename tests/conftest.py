"""Test configuration: run Triton kernels under the CPU interpreter when there is no GPU.

``TRITON_INTERPRET`` must be set before ``triton`` is first imported, so it is set here,
at collection time, and only when CUDA is absent (on a GPU the real kernels run).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
