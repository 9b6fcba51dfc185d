"""train.eval_mode, evaluate and accuracy restore every module's own mode."""

import pytest
import torch
from torch import nn

import sparsekit as sk


def test_eval_mode_restores_each_module_and_survives_errors() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    with pytest.raises(RuntimeError, match="boom"), sk.train.eval_mode(model):
        assert not any(m.training for m in model.modules())
        raise RuntimeError("boom")
    assert model.training and model[0].training and not model[1].training
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    sk.train.accuracy(model, x, y)
    sk.train.evaluate(model, sk.data.loader(x, y, batch_size=4))
    assert model.training and not model[1].training


def test_evaluate_restores_modes_when_the_model_raises() -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Linear(4, 4), Boom())
    model.train()
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    for call in (lambda: sk.train.accuracy(model, x, y), lambda: sk.train.evaluate(model, sk.data.loader(x, y))):
        with pytest.raises(RuntimeError, match="boom"):
            call()
        assert all(m.training for m in model.modules())
