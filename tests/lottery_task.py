"""A small learnable task shared by the lottery and connectivity tests."""

from __future__ import annotations

import torch

import sparsekit as sk
from sparsekit.data import Splits


def splits(n_train: int = 256, n_val: int = 64, n_test: int = 128, seed: int = 0) -> Splits:
    """A small learnable synthetic task: the class is the argmax of 10 fixed projections."""
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(40, 10, generator=gen)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 40, generator=gen)
        return x, (x @ proj).argmax(dim=1)

    (xt, yt), (xv, yv), (xs, ys) = make(n_train), make(n_val), make(n_test)
    return Splits(xt, yt, xv, yv, xs, ys)


def mlp() -> torch.nn.Module:
    return sk.models.MLP(40, (32, 32), 10)


def frozen(model: torch.nn.Module) -> torch.optim.Optimizer:
    """An optimizer that never moves a weight: trained state == starting state."""
    return torch.optim.SGD(model.parameters(), lr=0.0)
