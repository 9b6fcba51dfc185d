"""Tests for sparsekit.permutation: channel permutations for N:M sparsity (Pool & Yu 2021)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit as sk
from sparsekit import permutation

# ---------------------------------------------------------------- permutations


def test_search_permutation_improves_kept_magnitude():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    perm = permutation.search_permutation(w)
    assert torch.equal(perm.sort().values, torch.arange(32))
    assert permutation.kept_magnitude(w[:, perm]) > permutation.kept_magnitude(w)


def test_search_permutation_finds_obvious_optimum():
    # columns 0,1 and 2,3 each hold one big pair; one group must take two big columns each
    w = torch.zeros(1, 8)
    w[0, [0, 1, 2, 3]] = 10.0
    before = permutation.kept_magnitude(w)
    perm = permutation.search_permutation(w)
    assert before == 20.0 and permutation.kept_magnitude(w[:, perm]) == 40.0


def test_permute_for_nm_preserves_function():
    sk.seed_everything(0)
    model = sk.models.MLP(8, (16, 12), 4)
    x = torch.randn(5, 8)
    before = model(x)
    result = permutation.permute_for_nm(model, [("0", "2"), ("2", "4")])
    assert torch.allclose(model(x), before, atol=1e-5)
    for kept_before, kept_after in result.values():
        assert kept_after >= kept_before


def test_permute_channels_with_batchnorm_and_masks():
    sk.seed_everything(0)
    cnn = sk.models.CNN1d((8, 8, 8)).eval()
    cnn.bn1.running_mean.normal_()
    cnn.bn1.running_var.uniform_(0.5, 2.0)
    sk.nm.apply_nm(cnn)
    x = torch.randn(3, 40)
    before = cnn(x)
    perm = torch.randperm(8)
    permutation.permute_channels(cnn.conv1, cnn.conv2, perm, [cnn.bn1])
    assert torch.allclose(cnn(x), before, atol=1e-5)
    assert sk.get_masks(cnn)["conv2.weight"].shape == (8, 8, 5)


def test_permutation_bad_input():
    lin1, lin2 = nn.Linear(4, 8), nn.Linear(8, 4)
    with pytest.raises(ValueError, match="permutation"):
        permutation.permute_channels(lin1, lin2, torch.tensor([0, 0, 1, 2, 3, 4, 5, 6]))
    with pytest.raises(TypeError, match="integer"):
        permutation.permute_channels(lin1, lin2, torch.arange(8.0))
    with pytest.raises(ValueError, match="output channels"):
        permutation.permute_channels(lin2, lin2, torch.arange(8))
    with pytest.raises(TypeError, match="Linear or Conv"):
        permutation.permute_channels(nn.ReLU(), lin2, torch.arange(8))
    with pytest.raises(ValueError, match="2-D"):
        permutation.search_permutation(torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="multiple"):
        permutation.search_permutation(torch.randn(2, 6))
    with pytest.raises(ValueError, match="no module"):
        permutation.permute_for_nm(sk.models.MLP(8, (8,), 4), [("0", "9")])
