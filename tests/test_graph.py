"""Tests for sparsekit.graph's tracing: public torch.fx only; data-dependent control flow refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import sparsekit as sk
from sparsekit import structured as S
from sparsekit.graph import channel_groups, trace

X = torch.randn(16, 40, generator=torch.Generator().manual_seed(0))


class _DataBranch(nn.Module):
    """``forward`` branches on tensor values: fx would record the example's branch only."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.other = nn.Linear(40, 8), nn.Linear(8, 2), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        if x.mean() > 0:
            return self.fc2(h)
        return self.other(h)  # traced along the first branch, this layer would keep 8 inputs


class _Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(40, 40)
        self.body = _DataBranch()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


class _RangeOverBatch(nn.Module):
    """Python needs an int where fx has a Proxy: ``range(x.shape[0])``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(40, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = [self.fc1(x[i]) for i in range(x.shape[0])]
        return self.fc2(torch.stack(rows))


class _Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _RangeOverBatch()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_data_dependent_branch_is_refused() -> None:
    # Before: traced along the example's branch (x.mean() > 0); the shrunk copy then failed on
    # inputs with x.mean() <= 0 ("mat1 and mat2 shapes cannot be multiplied").
    model = _DataBranch()
    with pytest.raises(ValueError, match=r"_DataBranch.forward branches on tensor values .*other branch"):
        trace(model, X.abs())
    with pytest.raises(ValueError, match=r"_DataBranch.forward branches on tensor values"):
        S.shrink_channels(model, 0.5, X.abs())
    with pytest.raises(ValueError, match=r"module 'body' \(_DataBranch\) branches on tensor values"):
        S.channel_groups(_Wrapper(), X.abs())


def test_untraceable_forward_is_a_named_value_error() -> None:
    # Before: TypeError: 'Proxy' object cannot be interpreted as an integer
    msg = r"cannot trace _RangeOverBatch.forward with torch.fx \(TypeError: 'Proxy' object cannot be interpreted"
    with pytest.raises(ValueError, match=msg):
        S.shrink_channels(_RangeOverBatch(), 0.5, X, layers=["fc1"])
    with pytest.raises(ValueError, match=r"cannot trace module 'inner' of _Outer with torch.fx"):
        trace(_Outer(), X)


def test_shape_branch_is_followed() -> None:
    class ShapeBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(40, 8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc1(x)
            if h.shape[-1] > 4 and x.dim() == 2:
                h = F.relu(h)
            return self.fc2(h)

    model = ShapeBranch().eval()
    graph = trace(model, X)
    assert [n.target for n in graph.nodes if n.op == "call_function"].count(F.relu) == 1
    small = S.shrink_channels(model, 0.5, X)
    assert small.fc1.out_features == 4 and small(X).shape == (16, 2)


def test_trace_uses_public_fx_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before: graph.py called torch.fx._symbolic_trace._maybe_revert_all_patches; without it, RecursionError.
    monkeypatch.delattr(fx._symbolic_trace, "_maybe_revert_all_patches", raising=False)
    graph = trace(sk.models.CNN1d(), X)
    values = {n.name: n.meta["value"] for n in graph.nodes}
    assert values["output"].shape == (16, 10)
    groups = [g.sources for g in channel_groups(sk.models.ResCNN1d(blocks=2), X)]
    assert groups == [["stem", "blocks.0.conv2", "blocks.1.conv2"], ["blocks.0.conv1"], ["blocks.1.conv1"], ["fc"]]
    assert S.shrink_channels(sk.models.CNN1d(), 0.5, X).conv1.out_channels == 16


def test_trace_counts_example_inputs() -> None:
    with pytest.raises(ValueError, match="example_input gives 2 inputs but MLP.forward takes 1"):
        trace(sk.models.MLP(), (X, X))


def test_shape_branch_that_skips_a_layer_is_refused() -> None:
    class BatchBranch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.single = nn.Linear(40, 8), nn.Linear(8, 2), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.fc1(x))
            return self.fc2(h) if x.shape[0] > 1 else self.single(h)

    msg = r"BatchBranch.forward \(on call_function 'gt'.*does not use \['single'\]"
    with pytest.raises(ValueError, match=msg):
        S.shrink_channels(BatchBranch(), 0.5, X)
