"""Import torchvision's classification models on a CPU-only torch (tests and benchmarks only).

The only torchvision built for torch 2.13.0 that the package index serves is 0.28.0, a
CUDA build. On CPU torch its compiled ops (``torchvision._C``) do not load, and
``import torchvision`` then fails in ``torchvision/_meta_registrations.py`` while it
registers fake kernels for ops that do not exist (``torchvision::nms``: "operator
torchvision::nms does not exist"). Classification models never call those ops, so when
the plain import fails we put an empty stand-in for that one module in ``sys.modules``
and import again: the detection ops then stay unregistered (calling them fails loudly),
and the models work. Nothing here is used by ``sparsekit``.
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch
from torch import nn


def import_torchvision() -> ModuleType | None:
    """``torchvision``, or None when it cannot be imported even with the workaround."""
    try:
        import torchvision
        return torchvision
    except ImportError:
        return None
    except RuntimeError as err:
        if "does not exist" not in str(err):
            return None
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the failed import left a half-initialised package behind
    sys.modules["torchvision._meta_registrations"] = ModuleType("torchvision._meta_registrations")
    try:
        import torchvision
    except (ImportError, RuntimeError):
        return None
    return torchvision


def randomized_model(tv: ModuleType, name: str, generator: torch.Generator | None = None,
                     **kwargs: object) -> nn.Module:
    """``tv.models.<name>(**kwargs)`` from seed 0, in eval mode, with BatchNorm statistics and affine
    parameters drawn at random from ``generator`` (default: seeded 0) -- a fresh model's are 0 / 1,
    which would hide BatchNorm folding errors."""
    torch.manual_seed(0)
    model = getattr(tv.models, name)(**kwargs)
    g = torch.Generator().manual_seed(0) if generator is None else generator
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()
