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


# --------------------------------------------------------------------------- network slimming

def _tiny_splits(n: int = 48, seed: int = 0) -> sk.data.Splits:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 40, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return sk.data.Splits(x, y, x[:16], y[:16], x[:16], y[:16])


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return sk.models.CNN1d(channels=(4, 4, 4))


def test_fit_slimming_is_sgd_plus_a_proximal_step_on_every_gamma():
    splits = _tiny_splits()
    recipe = sk.recipes.RECIPES["cnn"].but(optimizer="sgd", lr=0.1, batch_size=16, max_epochs=1, patience=1)
    lam = 4.0  # lr * lam = 0.4 per step: after 3 steps every untouched gamma of 1 is at 0
    model, oracle = _small_cnn(), _small_cnn()
    batchnorm.fit_slimming(model, splits, recipe, lam, seed=3, progress=False)
    # oracle: the same batches, SGD + momentum 0.9, then gamma <- sign * max(|gamma| - lr * lam, 0)
    opt = torch.optim.SGD(oracle.parameters(), lr=0.1, momentum=0.9)
    oracle.train()
    for x, y in sk.data.loader(splits.x_train, splits.y_train, 16, shuffle=True, seed=3):
        opt.zero_grad()
        F.cross_entropy(oracle(x), y).backward()
        opt.step()
        with torch.no_grad():
            for bn in (oracle.bn1, oracle.bn2, oracle.bn3):
                bn.weight.copy_(bn.weight.sign() * (bn.weight.abs() - 0.1 * lam).clamp_min(0))
    for (k, a), b in zip(model.state_dict().items(), oracle.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    assert any((bn.weight == 0).any() for bn in (model.bn1, model.bn2, model.bn3))  # lam large: exact zeros
    # the hook is gone afterwards: a plain SGD step on the model leaves a zero gamma's sign alone
    plain = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.bn1.weight.detach().clone()
    model.bn1.weight.grad = -torch.ones_like(before)
    plain.step()
    torch.testing.assert_close(model.bn1.weight.detach(), before + 0.1)


def test_fit_slimming_with_zero_lam_is_recipes_fit():
    splits = _tiny_splits()
    recipe = sk.recipes.RECIPES["cnn"].but(optimizer="sgd", lr=0.05, batch_size=16, max_epochs=3, patience=2)
    a, b = _small_cnn(), _small_cnn()
    fa = batchnorm.fit_slimming(a, splits, recipe, 0.0, seed=1, progress=False)
    fb = sk.recipes.fit(b, splits, recipe, seed=1, progress=False)
    assert fa.best_epoch == fb.best_epoch and fa.epochs_run == fb.epochs_run
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_fit_slimming_bad_input():
    splits, recipe = _tiny_splits(), sk.recipes.RECIPES["cnn"]
    with pytest.raises(ValueError, match="lam"):
        batchnorm.fit_slimming(_small_cnn(), splits, recipe, -1.0)
    with pytest.raises(ValueError, match="BatchNorm"):
        batchnorm.fit_slimming(sk.models.MLP(), splits, sk.recipes.RECIPES["mlp"], 1e-3)
    with pytest.raises(TypeError, match="Recipe"):
        batchnorm.fit_slimming(_small_cnn(), splits, "cnn", 1e-3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="nn.Module"):
        batchnorm.fit_slimming("cnn", splits, recipe, 1e-3)  # type: ignore[arg-type]


def test_slimming_scores_guard_the_largest_gammas_of_each_layer():
    model = _small_cnn().eval()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([0.1, -0.3, 0.2, 0.0]))
        model.bn2.weight.copy_(torch.tensor([2.0, 1.0, 3.0, 4.0]))
        model.bn3.weight.copy_(torch.tensor([0.5, 0.5, 0.0, 0.0]))
    x = torch.randn(8, 40)
    one = batchnorm.slimming_scores(model, x)
    assert sorted(one) == ["conv1", "conv2", "conv3"]
    inf = float("inf")
    assert one["conv1"].tolist() == pytest.approx([0.1, inf, 0.2, 0.0])
    assert one["conv2"].tolist() == pytest.approx([2.0, 1.0, 3.0, inf])
    assert one["conv3"].tolist() == [inf, 0.5, 0.0, 0.0]  # tie: the lower index is guarded
    two = batchnorm.slimming_scores(model, x, min_keep=2)
    assert two["conv1"].tolist() == pytest.approx([0.1, inf, inf, 0.0])
    # one global threshold removing 9 of 12 channels keeps exactly the guarded channel per layer
    small = sk.structured.shrink_channels(model, 0.75, x, score=one, layers=["conv1", "conv2", "conv3"],
                                          scope="global")
    assert [small.conv1.out_channels, small.conv2.out_channels, small.conv3.out_channels] == [1, 1, 1]
    with pytest.raises(ValueError, match="min_keep"):
        batchnorm.slimming_scores(model, x, min_keep=5)
    with pytest.raises(ValueError, match="min_keep"):
        batchnorm.slimming_scores(model, x, min_keep=0)


def test_taylor_bn_importance_is_the_gate_after_batchnorm():
    model = _small_cnn()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2, model.bn3):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    model.train()
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(20, 40, generator=gen), torch.randint(0, 10, (20,), generator=gen)
    before = copy.deepcopy(model.state_dict())
    scores = batchnorm.taylor_bn_importance(model, x, y, x[:4], batch_size=8)  # batches 8, 8, 4
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    hand = {n: torch.zeros(4) for n in ("conv1", "conv2", "conv3")}
    for i in (0, 8, 16):  # dL/dg_c = gamma_c dL/dgamma_c + beta_c dL/dbeta_c, squared per batch, mean
        bns = (model.bn1, model.bn2, model.bn3)
        params = [p for bn in bns for p in (bn.weight, bn.bias)]
        grads = torch.autograd.grad(F.cross_entropy(model(x[i:i + 8]), y[i:i + 8]), params)
        for k, (name, bn) in enumerate(zip(hand, bns)):
            g = bn.weight.detach() * grads[2 * k] + bn.bias.detach() * grads[2 * k + 1]
            hand[name] += g ** 2 / 3
    assert sorted(scores) == sorted(hand)
    for name in hand:
        torch.testing.assert_close(scores[name], hand[name], rtol=1e-4, atol=1e-9)
    plain = sk.structured.taylor_importance(model, x, y, batch_size=8)  # the gate before BatchNorm differs
    assert not torch.allclose(plain["conv1"], scores["conv1"])
    with pytest.raises(ValueError, match="BatchNorm"):
        batchnorm.taylor_bn_importance(sk.models.MLP(), x, y, x[:4])
    with pytest.raises(TypeError, match="loss_fn"):
        batchnorm.taylor_bn_importance(model, x, y, x[:4], loss_fn=3)
