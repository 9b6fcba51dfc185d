"""Tests for sparsekit.structured and sparsekit.graph: channel groups, shrinking, heads, cost."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsekit as sk
from sparsekit import structured as S
from sparsekit.graph import channel_groups, trace

X = torch.randn(16, 40, generator=torch.Generator().manual_seed(0))


def _randomize_bn(model: nn.Module, seed: int = 0, positive_beta: bool = False) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g).abs() if positive_beta
                             else torch.randn(m.num_features, generator=g))
    return model.eval()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- graph

def test_channel_groups_of_book_models() -> None:
    cnn = {tuple(g.sources): g for g in channel_groups(sk.models.CNN1d(), X)}
    assert cnn[("conv3",)].norms == ["bn3"]
    assert [(c.module, c.inner) for c in cnn[("conv3",)].consumers] == [("fc", 4)]  # through Flatten
    assert cnn[("fc",)].blocked == "its channels reach the model output"
    res = channel_groups(sk.models.ResCNN1d(blocks=2), X)
    tied = [g for g in res if len(g.sources) > 1]
    assert len(tied) == 1
    assert tied[0].sources == ["stem", "blocks.0.conv2", "blocks.1.conv2"]
    assert sorted(c.module for c in tied[0].consumers) == ["blocks.0.conv1", "blocks.1.conv1", "fc"]
    tr = {tuple(g.sources): g for g in channel_groups(sk.models.TinyTransformer(), X)}
    assert tr[("layers.0.fc1",)].prunable
    assert "view" in tr[("layers.0.attn.q",)].blocked


class _Branchy(nn.Module):
    """Python control flow on a shape: plain ``fx.symbolic_trace`` cannot trace this."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.Linear(4 * 38, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.fc(torch.flatten(F.relu(self.bn(self.conv(x))), 1))


def test_trace_follows_control_flow_and_keeps_mode() -> None:
    model = _Branchy().train()
    before = _state(model)
    graph = trace(model, X)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats did not move
    assert any(n.op == "call_method" and n.target == "unsqueeze" for n in graph.nodes)  # the 2-D branch
    assert S.shrink_channels(model, 0.5, X).conv.out_channels == 2
    with pytest.raises(TypeError, match="example_input"):
        trace(model, [X])
    with pytest.raises(TypeError, match="model"):
        trace("cnn", X)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- importance

def test_l1_and_random_importance() -> None:
    model = sk.models.CNN1d()
    imp = S.l1_importance(model)
    assert list(imp) == ["conv1", "conv2", "conv3", "fc"]
    assert torch.allclose(imp["conv2"], model.conv2.weight.abs().sum((1, 2)))
    r1, r2 = S.random_importance(model, 3), S.random_importance(model, 3)
    assert all(torch.equal(r1[k], r2[k]) for k in r1)
    assert not torch.equal(r1["conv1"], S.random_importance(model, 4)["conv1"])


def test_bn_importance_and_penalty() -> None:
    model = _randomize_bn(sk.models.CNN1d())
    imp = S.bn_importance(model, X)
    assert list(imp) == ["conv1", "conv2", "conv3"]  # fc has no BatchNorm after it
    assert torch.equal(imp["conv2"], model.bn2.weight.abs())
    expected = sum(m.weight.abs().sum() for m in (model.bn1, model.bn2, model.bn3))
    assert torch.isclose(S.bn_l1_penalty(model), expected)
    with pytest.raises(ValueError, match="BatchNorm"):
        S.bn_l1_penalty(sk.models.MLP())


def test_slimming_loss_adds_the_penalty() -> None:
    model = _randomize_bn(sk.models.CNN1d())
    logits, y = torch.randn(4, 10), torch.tensor([0, 1, 2, 3])
    loss = S.slimming_loss(model, 0.1)(logits, y)
    assert torch.isclose(loss, F.cross_entropy(logits, y) + 0.1 * S.bn_l1_penalty(model))
    loss.backward()
    assert torch.allclose(model.bn1.weight.grad, 0.1 * model.bn1.weight.sign())
    summed = S.slimming_loss(model, 0.1)(logits, y, reduction="sum")  # what sk.train.evaluate passes
    assert torch.isclose(summed, F.cross_entropy(logits, y, reduction="sum") + 0.1 * S.bn_l1_penalty(model))
    with pytest.raises(ValueError, match="lam"):
        S.slimming_loss(model, -1.0)
    with pytest.raises(ValueError, match="BatchNorm"):
        S.slimming_loss(sk.models.MLP(), 0.1)


def test_slimming_hook_is_a_proximal_step() -> None:
    model = sk.models.CNN1d()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.linspace(-0.2, 0.2, 32))
    S.slimming_hook(lam=1.0, lr=0.1)(1, model)
    w = model.bn1.weight.detach()
    assert int((w == 0).sum()) == 16  # |gamma| <= 0.1 became exactly 0
    assert torch.allclose(w[-1], torch.tensor(0.1))
    with pytest.raises(ValueError, match="lam"):
        S.slimming_hook(lam=-1.0, lr=0.1)


def test_taylor_importance_matches_hand_computation() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).train()
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    before = _state(model)
    imp = S.taylor_importance(model, x, y, batch_size=8)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    loss = F.cross_entropy(model(x), y)
    gw, gb = torch.autograd.grad(loss, [model[0].weight, model[0].bias])
    hand = ((gw * model[0].weight).sum(1) + gb * model[0].bias) ** 2
    assert torch.allclose(imp["0"], hand.detach(), atol=1e-7)
    with pytest.raises(ValueError, match="batch_size"):
        S.taylor_importance(model, x, y, batch_size=0)
    with pytest.raises(ValueError, match="equally long"):
        S.taylor_importance(model, x, y[:3])


# --------------------------------------------------------------------------- shrinking

def test_shrink_channels_returns_smaller_copy_and_leaves_original() -> None:
    model = _randomize_bn(sk.models.CNN1d())
    before = _state(model)
    small = S.shrink_channels(model, 0.5, X)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (small.conv1.out_channels, small.conv2.in_channels, small.bn2.num_features) == (16, 16, 16)
    assert small.fc.in_features == 16 * 4 and small.fc.out_features == 10
    assert S.cost(small, X).params < S.cost(model, X).params
    assert small(X).shape == (16, 10)


def test_exact_through_batchnorm_with_zero_filters() -> None:
    """All-zero filters -> constant after BN + ReLU -> folded into fc's bias: same function."""
    model = _randomize_bn(sk.models.CNN1d(), positive_beta=True)
    with torch.no_grad():
        model.conv3.weight[::2] = 0.0  # 16 constant channels, each relu(bn(bias)) != 0 mostly
    small = S.shrink_channels(model, 0.5, X, layers=["conv3"])
    assert small.conv3.out_channels == 16
    assert torch.equal(small.conv3.weight, model.conv3.weight[1::2])  # exactly the zero filters went
    with torch.no_grad():
        diff = (model(X) - small(X)).abs().max().item()
        naive = copy.deepcopy(small)
        naive.fc.bias.copy_(model.fc.bias)  # dropping without folding is wrong
        assert (model(X) - naive(X)).abs().max().item() > 1e-2
    assert diff <= 1e-5


def test_exact_with_zero_gamma_and_bn_score() -> None:
    model = _randomize_bn(sk.models.CNN1d(), positive_beta=True)
    with torch.no_grad():
        model.bn3.weight[:8] = 0.0
    small = S.shrink_channels(model, 0.25, X, layers=["conv3"], score="bn")
    assert small.conv3.out_channels == 24
    with torch.no_grad():
        assert (model(X) - small(X)).abs().max().item() <= 1e-5


def test_folding_into_zero_padded_conv_warns() -> None:
    model = _randomize_bn(sk.models.CNN1d(), positive_beta=True)
    with torch.no_grad():
        model.conv1.weight[:16] = 0.0
    with pytest.warns(UserWarning, match="zero-pads"):
        S.shrink_channels(model, 0.5, X, layers=["conv1"])


def _zero_consumer_columns(model: nn.Module, frac: float, groups_pruned: list) -> nn.Module:
    """The original with the removed channels' input columns zeroed in every consumer.

    Removed = the ``round(frac * C)`` channels of lowest summed L1 filter norm (ties: higher index).
    """
    ref = copy.deepcopy(model)
    l1 = S.l1_importance(model)
    for g in groups_pruned:
        imp = sum(l1[s] for s in g.sources)
        order = sorted(range(g.channels), key=lambda i: (-float(imp[i]), i))
        removed = order[g.channels - round(frac * g.channels):]
        for c in g.consumers:
            layer = ref.get_submodule(c.module)
            with torch.no_grad():
                if isinstance(layer, nn.Linear):
                    w = layer.weight.view(layer.weight.shape[0], -1, c.inner)
                    w[:, removed] = 0.0
                else:
                    layer.weight[:, removed] = 0.0
    return ref


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(["mlp", "cnn", "rescnn"]), frac=st.floats(0.0, 0.9), seed=st.integers(0, 50))
def test_pruning_equals_zeroing_the_consumer_inputs(name: str, frac: float, seed: int) -> None:
    """Property: removing channels == keeping them but cutting every edge that reads them."""
    torch.manual_seed(seed)
    model = _randomize_bn(sk.models.build(name), seed)
    small = S.shrink_channels(model, frac, X)
    pruned = [g for g in channel_groups(model, X) if g.prunable]
    ref = _zero_consumer_columns(model, frac, pruned)
    with torch.no_grad():
        assert torch.allclose(ref(X), small(X), atol=1e-5)
    for g in pruned:
        assert small.get_submodule(g.sources[0]).weight.shape[0] == g.channels - round(frac * g.channels)


def test_residual_group_pruned_together_by_summed_importance() -> None:
    model = _randomize_bn(sk.models.ResCNN1d(channels=8, blocks=2))
    members = ["stem", "blocks.0.conv2", "blocks.1.conv2"]
    # The stem alone would keep channels 0-3; the summed score keeps 4-7.
    scores = {"stem": torch.tensor([9.0, 9, 9, 9, 0, 0, 0, 0]),
              "blocks.0.conv2": torch.tensor([0.0, 0, 0, 0, 5, 5, 5, 5]),
              "blocks.1.conv2": torch.tensor([0.0, 0, 0, 0, 5, 5, 5, 5])}
    small = S.shrink_channels(model, 0.5, X, layers=["stem"], score=scores)
    for name in members:
        assert torch.equal(small.get_submodule(name).weight, model.get_submodule(name).weight[4:])
    assert small.blocks[0].conv1.in_channels == small.blocks[1].conv1.in_channels == small.fc.in_features == 4
    assert small.blocks[0].conv1.out_channels == 8  # not in the group: untouched
    assert small(X).shape == (16, 10)
    with pytest.raises(ValueError, match="share one sparsity"):
        S.shrink_channels(model, {"stem": 0.5, "blocks.0.conv2": 0.25}, X)


def test_residual_group_exact_when_removed_channels_are_zero() -> None:
    model = _randomize_bn(sk.models.ResCNN1d(channels=8, blocks=2))
    with torch.no_grad():
        for name in ["stem", "blocks.0.conv2", "blocks.1.conv2"]:
            model.get_submodule(name).weight[6:] = 0.0
        for bn in [model.stem_bn, model.blocks[0].bn2, model.blocks[1].bn2]:
            bn.running_mean[6:] = 0.0
            bn.bias[6:] = -1.0  # relu(bn(0)) == 0 along the whole residual stream
    small = S.shrink_channels(model, 0.25, X, layers=["blocks.1.conv2"])
    assert small.stem.out_channels == 6
    with torch.no_grad():
        assert (model(X) - small(X)).abs().max().item() <= 1e-5


def test_global_scope() -> None:
    model = _randomize_bn(sk.models.CNN1d())
    with torch.no_grad():
        model.bn2.weight.mul_(1e-4)  # conv2's channels all look unimportant globally
    small = S.shrink_channels(model, 0.25, X, score="bn", scope="global")
    total = sum(small.get_submodule(n).out_channels for n in ("conv1", "conv2", "conv3"))
    assert total == 96 - 24
    assert small.conv2.out_channels == 32 - 24
    # Global scope never empties a layer: conv2 stops at one channel, the rest comes from the others.
    # (Before: "removing 32 of 32 channels of 'conv2' ... would remove every channel".)
    small = S.shrink_channels(model, 0.4, X, score="bn", scope="global")
    assert small.conv2.out_channels == 1
    assert sum(small.get_submodule(n).out_channels for n in ("conv1", "conv2", "conv3")) == 96 - round(0.4 * 96)
    # max_fraction caps each group (Torch-Pruning's max_pruning_ratio); the total stays exact.
    small = S.shrink_channels(model, 0.4, X, score="bn", scope="global", max_fraction=0.5)
    assert small.conv2.out_channels == 16
    assert sum(small.get_submodule(n).out_channels for n in ("conv1", "conv2", "conv3")) == 96 - round(0.4 * 96)
    with pytest.raises(ValueError, match="max_fraction=0.1"):
        S.shrink_channels(model, 0.4, X, score="bn", scope="global", max_fraction=0.1)
    with pytest.raises(ValueError, match="max_fraction"):
        S.shrink_channels(model, 0.4, X, scope="global", max_fraction=1.5)


def test_masked_model_is_baked_in_the_copy() -> None:
    model = sk.models.CNN1d()
    sk.apply_masks(model, sk.select_masks(sk.scores.magnitude(model), 0.5))
    small = S.shrink_channels(model, 0.5, X)
    assert sk.get_masks(model) and not sk.get_masks(small)
    assert model(X).shape == small(X).shape


def test_conv2d_and_flatten_method() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6)
            self.fc = nn.Linear(6 * 4 * 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.max_pool2d(torch.relu(self.b1(self.c1(x))), 1)
            return self.fc(x.view(x.shape[0], -1))

    net = Net().eval()
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        net.c1.weight[:3] = 0.0
        net.c1.bias[:3] = 0.5
    small = S.shrink_channels(net, 0.5, x)
    assert small.c1.out_channels == 3 and small.fc.in_features == 48
    with torch.no_grad():
        assert (net(x) - small(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"sparsity": 1.0}, ValueError, r"\[0, 1\)"),
    ({"sparsity": -0.1}, ValueError, r"\[0, 1\)"),
    ({"sparsity": "half"}, TypeError, "sparsity"),
    ({"sparsity": True}, TypeError, "sparsity"),
    ({"sparsity": 0.99}, ValueError, "every channel"),
    ({"sparsity": 0.5, "layers": ["conv9"]}, ValueError, "conv9"),
    ({"sparsity": 0.5, "layers": ["fc"]}, ValueError, "model output"),
    ({"sparsity": 0.5, "layers": "conv1"}, TypeError, "layers"),
    ({"sparsity": 0.5, "score": "l7"}, ValueError, "score"),
    ({"sparsity": 0.5, "scope": "world"}, ValueError, "scope"),
    ({"sparsity": 0.5, "score": {"conv1": torch.ones(3)}, "layers": ["conv1"]}, ValueError, "3 entries"),
    ({"sparsity": 0.5, "score": {"conv1": torch.ones(32)}, "layers": ["conv2"]}, ValueError, "no entry"),
])
def test_shrink_channels_bad_input(kwargs: dict, error: type, match: str) -> None:
    sparsity = kwargs.pop("sparsity")
    with pytest.raises(error, match=match):
        S.shrink_channels(sk.models.CNN1d(), sparsity, X, **kwargs)


def test_unsupported_pattern_names_the_module() -> None:
    with pytest.raises(ValueError, match="'embed'.*add.*'pos'"):
        S.shrink_channels(sk.models.TinyTransformer(), 0.5, X, strict=True)
    # the default call skips what it cannot prune and says why
    skipped = S.shrink_channels(sk.models.TinyTransformer(), 0.5, X).channel_plan.skipped
    assert list(skipped) == ["'embed'+'layers.0.attn.out'+'layers.0.fc2'+'layers.1.attn.out'+'layers.1.fc2'",
                             "'layers.0.attn.q'", "'layers.0.attn.k'", "'layers.0.attn.v'",
                             "'layers.1.attn.q'", "'layers.1.attn.k'", "'layers.1.attn.v'"]
    assert "get_attr 'pos'" in skipped[next(iter(skipped))]
    with pytest.raises(TypeError, match="strict"):
        S.shrink_channels(sk.models.TinyTransformer(), 0.5, X, strict=1)
    with pytest.raises(TypeError, match="model"):
        S.shrink_channels("cnn", 0.5, X)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bn"):
        S.shrink_channels(sk.models.MLP(), 0.5, X, score="bn")
    # the Transformer's MLP hidden units are a prunable group
    small = S.shrink_channels(sk.models.TinyTransformer(), 0.5, X, layers=["layers.0.fc1"])
    assert small.layers[0].fc1.out_features == 64 and small.layers[0].fc2.in_features == 64


# --------------------------------------------------------------------------- heads

def test_shrink_heads_equals_masking_heads() -> None:
    torch.manual_seed(0)
    model = sk.models.TinyTransformer(num_heads=4).eval()
    small = S.shrink_heads(model, {0: [1, 3], 1: [0, 1, 2, 3]})
    masks = [torch.tensor([1.0, 0, 1, 0]), torch.zeros(4)]
    with torch.no_grad():
        assert torch.allclose(model(X, head_masks=masks), small(X), atol=1e-6)
    a0, a1 = small.layers[0].attn, small.layers[1].attn
    assert (a0.num_heads, a0.q.out_features, a0.out.in_features) == (2, 32, 32)
    assert (a1.num_heads, a1.v.weight.shape) == (0, (0, 64))
    assert model.layers[0].attn.num_heads == 4  # original untouched
    cd, cs = S.cost(model, X), S.cost(small, X)
    assert cd.params - cs.params == 6 * 3 * (16 * 64 + 16) + 6 * 16 * 64


def test_shrink_heads_bad_input() -> None:
    model = sk.models.TinyTransformer(num_heads=4)
    for bad in ({2: [0]}, {0: [4]}, {0: [1, 1]}, {-1: [0]}):
        with pytest.raises(ValueError, match="heads_to_prune"):
            S.shrink_heads(model, bad)
    with pytest.raises(TypeError, match="mapping"):
        S.shrink_heads(model, [0, 1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="MultiHeadSelfAttention"):
        S.shrink_heads(sk.models.MLP(), {0: [0]})


def test_head_importance_is_mean_abs_gate_gradient() -> None:
    torch.manual_seed(0)
    model = sk.models.TinyTransformer(num_heads=4).train()
    y = torch.randint(0, 10, (16,))
    before = _state(model)
    imp = S.head_importance(model, X, y, batch_size=5, normalize=False)  # chunks of 5, 5, 5, 1
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()
    hand = torch.zeros(2, 4)  # Michel et al. Eq. 2: |dL(x)/d xi_h| per example, then the mean
    batch_mean = torch.zeros(2, 4)  # |d mean-batch-loss / d xi_h|: what Eq. 2 is NOT
    for i in range(16):
        masks = [torch.ones(4, requires_grad=True) for _ in range(2)]
        g = torch.autograd.grad(F.cross_entropy(model(X[i:i + 1], head_masks=masks), y[i:i + 1]), masks)
        hand += torch.stack(g).abs() / 16
    for i in (0, 8):
        masks = [torch.ones(4, requires_grad=True) for _ in range(2)]
        g = torch.autograd.grad(F.cross_entropy(model(X[i:i + 8], head_masks=masks), y[i:i + 8]), masks)
        batch_mean += torch.stack(g).abs() / 2
    assert torch.allclose(torch.stack(imp), hand, atol=1e-6)
    assert not torch.allclose(hand, batch_mean, atol=1e-3)  # the oracle tells the two apart
    normed = S.head_importance(model, X, y, batch_size=8)
    assert all(torch.isclose(s.norm(), torch.tensor(1.0)) for s in normed)
    assert [len(s) for s in S.head_magnitude(model)] == [4, 4]
    emptied = S.shrink_heads(model, {1: [0, 1, 2, 3]})  # a layer with no heads left still scores
    assert [len(s) for s in S.head_magnitude(emptied)] == [4, 0]
    assert [len(s) for s in S.head_importance(emptied, X, y)] == [4, 0]


def test_select_heads() -> None:
    imp = [torch.tensor([0.5, 0.1, 0.9]), torch.tensor([0.1, 0.8, 0.2])]
    assert S.select_heads(imp, 3) == {0: [1], 1: [0, 2]}
    assert S.select_heads(imp, 0) == {}
    with pytest.raises(ValueError, match="num_to_prune"):
        S.select_heads(imp, 7)


def test_prune_heads_iteratively_rescores_the_smaller_model_at_every_step() -> None:
    torch.manual_seed(0)
    model = sk.models.TinyTransformer(num_heads=4).eval()  # 2 layers x 4 heads
    y = torch.randint(0, 10, (16,))
    seen: list[list[int]] = []

    def score(m: nn.Module) -> list[torch.Tensor]:
        seen.append([a.num_heads for a in S.attention_layers(m)])
        return S.head_importance(m, X, y)

    path = list(S.prune_heads_iteratively(model, score, heads_per_step=3))
    assert [k for k, _ in path] == [0, 3, 6]  # 8 -> 5 -> 2 heads; one more step would leave none
    assert path[0][1] is model
    assert len(seen) == 2 and seen[0] == [4, 4] and sum(seen[1]) == 5  # each step scores the current model
    # oracle: the same steps by hand with select_heads and shrink_heads
    by_hand = model
    for (_, step_model), expected_left in zip(path[1:], (5, 2)):
        by_hand = S.shrink_heads(by_hand, S.select_heads(S.head_importance(by_hand, X, y), 3))
        assert sum(a.num_heads for a in S.attention_layers(step_model)) == expected_left
        with torch.no_grad():
            assert torch.equal(step_model(X), by_hand(X))
    assert [a.num_heads for a in S.attention_layers(model)] == [4, 4]  # the original is untouched
    assert [k for k, _ in S.prune_heads_iteratively(model, S.head_magnitude, 2, min_heads=4)] == [0, 2, 4]


def test_prune_heads_iteratively_bad_input() -> None:
    model = sk.models.TinyTransformer(num_heads=4)
    with pytest.raises(TypeError, match="score"):
        next(S.prune_heads_iteratively(model, "magnitude"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="heads_per_step"):
        next(S.prune_heads_iteratively(model, S.head_magnitude, 0))
    with pytest.raises(ValueError, match="min_heads"):
        next(S.prune_heads_iteratively(model, S.head_magnitude, 1, min_heads=-1))
    with pytest.raises(ValueError, match="MultiHeadSelfAttention"):
        next(S.prune_heads_iteratively(sk.models.MLP(), S.head_magnitude))
    mha = nn.Sequential(nn.MultiheadAttention(16, 4))
    with pytest.raises(TypeError, match="once"):
        next(S.prune_heads_iteratively(mha, S.head_magnitude))


# --------------------------------------------------------------------------- cost

def test_cost_counts_linear_conv_and_attention() -> None:
    mlp = sk.models.MLP(40, (256, 256), 10)
    c = S.cost(mlp, X)
    assert c.flops == 2 * 16 * (40 * 256 + 256 * 256 + 256 * 10)
    assert c.params == sk.models.count_parameters(mlp)
    tr = sk.models.TinyTransformer(d_model=64, num_heads=4, num_layers=2)
    linear = sum(2 * 16 * 10 * m.weight.numel() for n, m in tr.named_modules()
                 if isinstance(m, nn.Linear) and n != "head") + 2 * 16 * tr.head.weight.numel()
    assert S.cost(tr, X).flops - linear == 2 * 2 * 2 * 16 * 4 * 10 * 10 * 16  # layers * (QK^T, AV) * b h t t d
    assert S.cost is sk.report.cost  # one FLOP counter for the chapter and the report
    with pytest.raises(TypeError, match="model"):
        S.cost(None, X)  # type: ignore[arg-type]


def test_random_importance_seed_must_be_an_int():
    model = sk.models.CNN1d(channels=(4, 4, 4))
    with pytest.raises(TypeError, match="seed must be an int"):
        S.random_importance(model, None)
    a, b = S.random_importance(model, 3), S.random_importance(model, 3)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_package_modules_name_their_pipeline_steps() -> None:
    from sparsekit.structured import heads, importance, shrink
    assert "score" in S.__doc__ and "select" in S.__doc__ and "finalize = shrink" in S.__doc__
    for module, step in ((importance, "*score*"), (shrink, "*finalize*"), (heads, "*finalize*")):
        assert step in module.__doc__.splitlines()[0]
    assert S.shrink_channels is shrink.shrink_channels and S.shrink_heads is heads.shrink_heads
    assert not hasattr(S, "prune_channels") and not hasattr(S, "prune_heads")


# --------------------------------------------------------------------------- modes and devices

def _frozen_bn_cnn() -> nn.Module:
    """A training-mode CNN whose first BatchNorm the user froze (``bn.eval()``)."""
    model = sk.models.CNN1d(channels=(8, 8, 8)).train()
    model.bn1.eval()
    return model


def _modes(model: nn.Module) -> dict[str, bool]:
    return {n: m.training for n, m in model.named_modules()}


def test_frozen_batchnorm_stays_frozen() -> None:
    model = _frozen_bn_cnn()
    before = _modes(model)
    assert before["bn1"] is False and before[""] is True
    y = torch.randint(0, 10, (16,))
    S.channel_groups(model, X)
    assert _modes(model) == before
    S.bn_importance(model, X)
    assert _modes(model) == before
    S.taylor_importance(model, X, y, batch_size=8)
    assert _modes(model) == before
    small = S.shrink_channels(model, 0.5, X)
    assert _modes(model) == before and _modes(small) == before
    S.cost(model, X)
    assert _modes(model) == before
    tr = sk.models.TinyTransformer(num_heads=4).train()
    tr.layers[0].ln1.eval()
    tr_before = _modes(tr)
    S.head_importance(tr, X, y, batch_size=8)
    assert _modes(tr) == tr_before


def test_importance_inside_no_grad() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 4), nn.ReLU(), nn.Linear(4, 10))
    tr = sk.models.TinyTransformer(num_heads=4)
    y = torch.randint(0, 10, (16,))
    plain, heads = S.taylor_importance(model, X, y), S.head_importance(tr, X, y)
    with torch.no_grad():
        quiet, quiet_heads = S.taylor_importance(model, X, y), S.head_importance(tr, X, y)
    assert all(torch.equal(plain[k], quiet[k]) for k in plain)
    assert all(torch.equal(a, b) for a, b in zip(heads, quiet_heads, strict=True))


def test_head_importance_on_the_model_device() -> None:
    model = sk.models.TinyTransformer(num_heads=4).to("meta")  # any device but the CPU
    x, y = torch.empty(16, 40, device="meta"), torch.zeros(16, dtype=torch.long, device="meta")
    scores = S.head_importance(model, x, y, batch_size=8)
    assert [(s.device.type, tuple(s.shape)) for s in scores] == [("meta", (4,)), ("meta", (4,))]
    taylor = S.taylor_importance(model, x, y, batch_size=8)
    assert {s.device.type for s in taylor.values()} == {"meta"}


def test_gate_gradients_is_dL_dgate_per_batch() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(40, 3)
    gate = torch.ones(3, requires_grad=True)
    y = torch.randint(0, 3, (16,))
    out = S.gate_gradients(lin, [gate], lambda x: lin(x) * gate, X, y, batch_size=10)
    assert [n for _, n in out] == [10, 6]
    for (grads, _), sl in zip(out, (slice(0, 10), slice(10, 16)), strict=True):
        g = torch.ones(3, requires_grad=True)
        expect, = torch.autograd.grad(F.cross_entropy(lin(X[sl]) * g, y[sl]), [g])
        assert torch.equal(grads[0], expect)
    assert gate.grad is None and lin.weight.grad is None
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        S.gate_gradients(lin, [gate], lin, X, y, batch_size=0)
    with pytest.raises(ValueError, match="non-empty and equally long, got 16, 3"):
        S.gate_gradients(lin, [gate], lin, X, y[:3])


def test_random_importance_matches_its_seed_and_refuses_none() -> None:
    model = sk.models.CNN1d(channels=(4, 4, 4))
    for bad in (None, 1.5, True, "0"):
        with pytest.raises(TypeError, match=r"seed must be an int \(a seed\), got"):
            S.random_importance(model, bad)  # type: ignore[arg-type]
    assert not all(torch.equal(a, b) for a, b in zip(S.random_importance(model, 0).values(),
                                                     S.random_importance(model, 1).values(), strict=True))
