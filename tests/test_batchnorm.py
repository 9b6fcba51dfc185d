"""Tests for sparsekit.batchnorm: BatchNorm recalibration against independent oracles."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit as sk
from sparsekit import batchnorm


def _mlp() -> nn.Sequential:
    """Linear -> Dropout -> BN -> ReLU -> Linear -> BN, in float64 (exact comparisons)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.5), nn.BatchNorm1d(5), nn.ReLU(),
                          nn.Linear(5, 4), nn.BatchNorm1d(4)).double()
    with torch.no_grad():  # stale statistics and non-trivial affine parameters
        for bn in (model[2], model[5]):
            bn.running_mean.uniform_(-3, 3)
            bn.running_var.uniform_(2, 5)
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    return model


def _batches(sizes=(7, 3, 5), features=6, seed=1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, features, generator=gen, dtype=torch.float64) * 2 + 1,
             torch.randint(0, 4, (n,), generator=gen)) for n in sizes]


def _mlp_oracle(model: nn.Sequential, batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per BatchNorm: exact mean and unbiased variance of its inputs, computed by hand:
    Dropout is the identity (eval), each BatchNorm normalises with its batch's own mean and
    biased variance (train mode)."""
    lin1, bn1, lin2 = model[0], model[2], model[4]
    h1s, h2s = [], []
    with torch.no_grad():
        for x, _ in batches:
            h1 = F.linear(x, lin1.weight, lin1.bias)
            z = (h1 - h1.mean(0)) / torch.sqrt(h1.var(0, unbiased=False) + bn1.eps) * bn1.weight + bn1.bias
            h2 = F.linear(torch.relu(z), lin2.weight, lin2.bias)
            h1s.append(h1)
            h2s.append(h2)
    return [(torch.cat(h).mean(0), torch.cat(h).var(0, unbiased=True)) for h in (h1s, h2s)]


def test_running_stats_equal_exact_pooled_statistics_of_bn_inputs():
    model = _mlp()
    batches = _batches()
    expected = _mlp_oracle(copy.deepcopy(model), batches)
    out = sk.recalibrate_batchnorm(model, batches)
    assert out is model
    for bn, (mean, var) in zip((model[2], model[5]), expected):
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-12, atol=1e-12)
        assert int(bn.num_batches_tracked) == 3


def test_conv_batchnorm_matches_hook_oracle_over_channels_and_positions():
    """BatchNorm1d on [N, C, L]: statistics over samples and positions, per channel; the
    oracle collects the inputs with its own hooks during the same pass."""
    sk.seed_everything(0)
    model = sk.models.CNN1d(channels=(4, 8, 8)).double()
    sk.nm.apply_nm(model)  # a pruned model, as in the chapter: masks are parametrizations
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, []).append(args[0]))
               for name, m in model.named_modules() if isinstance(m, nn.BatchNorm1d)]
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(n, 40, generator=gen, dtype=torch.float64) for n in (16, 9)]
    sk.recalibrate_batchnorm(model, xs)  # plain tensors are accepted too
    for h in handles:
        h.remove()
    assert set(seen) == {"bn1", "bn2", "bn3"}
    for name, inputs in seen.items():
        x = torch.cat(inputs).transpose(0, 1).reshape(inputs[0].shape[1], -1)  # [C, N * L]
        bn = getattr(model, name)
        torch.testing.assert_close(bn.running_mean, x.mean(1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bn.running_var, x.var(1, unbiased=True), rtol=1e-12, atol=1e-12)


def test_one_batch_agrees_with_torch_update_bn():
    model = _mlp()
    model[1].p = 0.0  # update_bn runs the whole model in train mode: make Dropout the identity
    reference = copy.deepcopy(model)
    batch = _batches(sizes=(11,))
    sk.recalibrate_batchnorm(model, batch)
    torch.optim.swa_utils.update_bn([x for x, _ in batch], reference)
    for a, b in zip((model[2], model[5]), (reference[2], reference[5])):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-12, atol=1e-12)


def test_num_batches_uses_the_first_batches_only():
    model, batches = _mlp(), _batches(sizes=(7, 3, 5, 6))
    expected = _mlp_oracle(copy.deepcopy(model), batches[:2])
    sk.recalibrate_batchnorm(model, iter(batches), num_batches=2)
    torch.testing.assert_close(model[5].running_var, expected[1][1], rtol=1e-12, atol=1e-12)
    assert int(model[2].num_batches_tracked) == 2


def test_parameters_flags_and_momentum_are_restored():
    model = _mlp()
    model.train()
    model[5].eval()  # a frozen BatchNorm inside a training model keeps its flag
    model[2].momentum = 0.3
    params = {k: v.clone() for k, v in model.named_parameters()}
    flags = [m.training for m in model.modules()]
    sk.recalibrate_batchnorm(model, _batches())
    assert [m.training for m in model.modules()] == flags
    assert model[2].momentum == 0.3 and model[5].momentum == 0.1
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k
    # and in eval mode, too
    model.eval()
    sk.recalibrate_batchnorm(model, _batches())
    assert not any(m.training for m in model.modules())


def test_recalibration_changes_eval_outputs_only_through_statistics():
    """Before: stale statistics; after: eval-mode BN1 output is standardised over the data."""
    model, batches = _mlp(), _batches(sizes=(50, 50))
    x = torch.cat([b[0] for b in batches])
    sk.recalibrate_batchnorm(model, batches)
    with torch.no_grad(), sk.train.eval_mode(model):
        z = (model[1](model[0](x)) - model[2].running_mean) / torch.sqrt(model[2].running_var + model[2].eps)
    torch.testing.assert_close(z.mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(z.var(0), torch.ones(5, dtype=torch.float64) / (1 + model[2].eps / model[2].running_var),
                               atol=1e-9, rtol=0)


def test_bad_input():
    stats = lambda m: [t.clone() for t in m.buffers()]  # noqa: E731
    with pytest.raises(ValueError, match="no BatchNorm"):
        sk.recalibrate_batchnorm(nn.Sequential(nn.Linear(3, 2), nn.Dropout()), [torch.randn(4, 3)])
    with pytest.raises(ValueError, match="no BatchNorm"):  # a BN without running statistics
        sk.recalibrate_batchnorm(nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)), [torch.randn(4, 3)])
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        sk.recalibrate_batchnorm("model", [torch.randn(4, 3)])
    model = _mlp()
    before = stats(model)
    with pytest.raises(ValueError, match="batches is empty"):
        sk.recalibrate_batchnorm(model, [])
    with pytest.raises(ValueError, match="num_batches must be a positive int, got 0"):
        sk.recalibrate_batchnorm(model, _batches(), num_batches=0)
    with pytest.raises(TypeError, match="num_batches"):
        sk.recalibrate_batchnorm(model, _batches(), num_batches=True)
    with pytest.raises(TypeError, match="batch 1 is str"):
        sk.recalibrate_batchnorm(model, [_batches()[0], "x"])
    # a failed call leaves the running statistics (and momentum) as they were
    assert all(torch.equal(a, b) for a, b in zip(stats(model), before))
    assert model[2].momentum == 0.1


def test_batchnorm_layers_lists_tracking_layers_in_order():
    model = sk.models.CNN1d()
    assert list(batchnorm.batchnorm_layers(model)) == ["bn1", "bn2", "bn3"]
    assert batchnorm.batchnorm_layers(sk.models.MLP(4, (8,), 2)) == {}
