"""Issue 15: the channel patterns of torchvision's families, each on a small model of our own.

Every test prunes with the default call and checks the shrunk model against the
zero-channel model (``cut_removed_inputs``: the original with every weight that reads a
removed channel zeroed) at two input sizes, plus the exact shapes that must result.
``test_cut_removed_inputs_is_the_hand_zeroed_model`` checks that reference itself
against zeroing by hand.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit as sk
from sparsekit import structured as S

SIZES = (12, 17)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _x(size: int, channels: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _check_exact(model: nn.Module, small: nn.Module) -> None:
    """The shrunk model equals the zero-channel model at both input sizes, and is smaller."""
    for size in SIZES:
        x = _x(size)
        ref = S.cut_removed_inputs(model, small.channel_plan, x)
        with torch.no_grad():
            want, got = ref(x), small(x)
            assert (want - model(x)).abs().max() > 1e-3  # the removed channels mattered
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert S.cost(small, _x(SIZES[0])).flops < S.cost(model, _x(SIZES[0])).flops


class _InvertedResidual(nn.Module):
    """MobileNetV2's block: expand 1x1, depthwise 3x3, project 1x1, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 8, 3, padding=1), _bn(8)
        self.expand, self.bn1 = nn.Conv2d(8, 16, 1), _bn(16)
        self.dw, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=16), _bn(16)
        self.project, self.bn3 = nn.Conv2d(16, 8, 1), _bn(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem_bn(self.stem(x)))
        h = F.relu6(self.bn1(self.expand(x)))
        h = F.relu6(self.bn2(self.dw(h)))
        x = x + self.bn3(self.project(h))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_depthwise_convolution_joins_its_input_group() -> None:
    model = _randomize(_InvertedResidual())
    groups = {tuple(g.sources): g for g in S.channel_groups(model, _x(12))}
    assert groups[("expand",)].members == ["dw"] and groups[("expand",)].norms == ["bn1", "bn2"]
    small = S.shrink_channels(model, 0.5, _x(12))
    assert small.channel_plan.skipped == {}
    assert (small.dw.in_channels, small.dw.out_channels, small.dw.groups) == (8, 8, 8)
    assert small.dw.weight.shape == (8, 1, 3, 3) and small.project.in_channels == 8
    assert small.stem.out_channels == small.project.out_channels == small.fc.in_features == 4
    _check_exact(model, small)


class _GroupedBlock(nn.Module):
    """RegNet-X's block: 1x1, grouped 3x3 (groups of 4 channels), 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 16, 1), _bn(16)
        self.b, self.bn_b = nn.Conv2d(16, 16, 3, padding=1, groups=4), _bn(16)
        self.c = nn.Conv2d(16, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn_a(self.a(x)))
        h = F.relu(self.bn_b(self.b(h)))
        return self.fc(self.c(h).mean((2, 3)))


def test_grouped_convolution_loses_the_same_number_per_group() -> None:
    model = _randomize(_GroupedBlock())
    groups = {tuple(g.sources): g for g in S.channel_groups(model, _x(12))}
    assert groups[("a",)].blocks == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    small = S.shrink_channels(model, 0.5, _x(12))
    assert (small.b.in_channels, small.b.out_channels, small.b.groups) == (8, 8, 4)
    assert small.b.weight.shape == (8, 2, 3, 3)
    for name in ("a", "b"):  # two of each group of four went
        gone = small.channel_plan.removed[name]
        assert torch.bincount(gone // 4, minlength=4).tolist() == [2, 2, 2, 2]
    _check_exact(model, small)


class _Dense(nn.Module):
    """DenseNet's concatenation (BatchNorm over it) and SqueezeNet's Fire (two expands concatenated)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Conv2d(8, 4, 3, padding=1)
        self.norm, self.layer2 = _bn(12), nn.Conv2d(12, 4, 3, padding=1)
        self.squeeze = nn.Conv2d(16, 6, 1)
        self.e1, self.e3 = nn.Conv2d(6, 5, 1), nn.Conv2d(6, 7, 3, padding=1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        f = torch.cat([x, F.relu(self.layer1(x))], 1)
        f = torch.cat([f, F.relu(self.layer2(F.relu(self.norm(f))))], 1)
        s = F.relu(self.squeeze(f))
        fire = torch.cat([F.relu(self.e1(s)), F.relu(self.e3(s))], dim=1)
        return self.fc(torch.amax(fire, dim=(2, 3)))


def test_concatenation_offsets() -> None:
    model = _randomize(_Dense())
    small = S.shrink_channels(model, 0.5, _x(12))
    assert small.channel_plan.skipped == {}
    assert (small.stem.out_channels, small.layer1.out_channels, small.layer2.out_channels) == (4, 2, 2)
    assert small.norm.num_features == 6 and small.layer2.in_channels == 6 and small.squeeze.in_channels == 8
    assert (small.e1.out_channels, small.e3.out_channels, small.fc.in_features) == (3, 3, 6)  # round(2.5), round(3.5)
    # the BatchNorm over the concatenation keeps the stem's and layer1's kept channels, in order
    r = small.channel_plan.removed
    keep = [c for c in range(8) if c not in r["stem"]] + [8 + c for c in range(4) if c not in r["layer1"]]
    assert torch.equal(small.norm.running_mean, model.norm.running_mean[keep])
    _check_exact(model, small)


class _Shuffle(nn.Module):
    """ShuffleNetV2's unit: chunk, branch, concatenate, channel shuffle (view, transpose, view)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(3, 8, 3, padding=1), _bn(8)
        self.b1 = nn.Conv2d(4, 4, 1)
        self.dw, self.dw_bn = nn.Conv2d(4, 4, 3, padding=1, groups=4), _bn(4)
        self.b2 = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 5)

    @staticmethod
    def shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
        b, c, h, w = x.size()
        x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous()
        return x.view(b, -1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x1, x2 = x.chunk(2, dim=1)
        x2 = F.relu(self.b2(self.dw_bn(self.dw(F.relu(self.b1(x2))))))
        x = self.shuffle(torch.cat((x1, x2), dim=1), 2)
        return self.fc(F.relu(self.head(x)).mean([2, 3]))


def test_channel_shuffle_and_chunk() -> None:
    model = _randomize(_Shuffle())
    small = S.shrink_channels(model, 0.5, _x(12))
    assert small.channel_plan.skipped == {}
    # the stem's two halves are tied position by position (chunk), the shuffle ties stem and b2
    assert small.stem.out_channels == 4 and small.b2.out_channels == 2 and small.head.in_channels == 4
    gone = small.channel_plan.removed["stem"]
    assert sorted((gone % 4).tolist()) == sorted(((gone[: len(gone) // 2]) % 4).tolist() * 2)
    _check_exact(model, small)


class _SE(nn.Module):
    """Squeeze-and-excitation (EfficientNet, MobileNetV3): a pooled branch gates the trunk."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), _bn(8)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.out = nn.Conv2d(8, 6, 1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.bn(self.conv(x)))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(h, 1)))))
        h = self.out(h * s)
        return self.fc(self.drop(h.mean((2, 3), keepdim=True).flatten(1)))


def test_squeeze_excitation_gate_joins_the_group() -> None:
    model = _randomize(_SE())
    groups = {tuple(g.sources): g for g in S.channel_groups(model, _x(12))}
    assert ("conv", "fc2") in groups and groups[("conv", "fc2")].channels == 8
    small = S.shrink_channels(model, 0.5, _x(12))
    assert small.conv.out_channels == small.fc2.out_channels == small.fc1.in_channels == 4
    assert torch.equal(small.channel_plan.removed["conv"], small.channel_plan.removed["fc2"])
    _check_exact(model, small)


class _EvalIdentity(nn.Module):
    """StochasticDepth-style: random in training, the identity in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return x * (torch.rand(x.shape[0], 1, 1, 1) > 0.1)


class _ChannelsLast(nn.Module):
    """ConvNeXt's MLP without its LayerNorm: permute to channels-last, Linear over channels, back."""

    def __init__(self, norm: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.norm = nn.LayerNorm(8) if norm else nn.Identity()
        self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 8)
        self.drop = _EvalIdentity()
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        h = self.norm(self.dw(x).permute(0, 2, 3, 1))
        h = self.down(F.gelu(self.up(h))).permute(0, 3, 1, 2)
        x = x + self.drop(h)
        return self.head(x.flatten(2).mean(-1))


def test_permute_linear_over_channels_eval_identities_and_mean_methods() -> None:
    model = _randomize(_ChannelsLast())
    small = S.shrink_channels(model, 0.5, _x(12))
    assert small.channel_plan.skipped == {}
    assert (small.stem.out_channels, small.dw.groups, small.up.in_features, small.up.out_features) == (4, 4, 4, 8)
    assert (small.down.in_features, small.down.out_features, small.head.in_features) == (8, 4, 4)
    _check_exact(model, small)


def test_layernorm_over_channels_is_refused_and_reported() -> None:
    model = _randomize(_ChannelsLast(norm=True))
    small = S.shrink_channels(model, 0.5, _x(12))
    (label, why), = small.channel_plan.skipped.items()
    assert label == "'stem'+'down'" and "'norm'" in why and "normalizes over them" in why
    assert small.stem.out_channels == 8 and small.up.out_features == 8  # only the MLP's hidden group went
    _check_exact(model, small)
    with pytest.raises(ValueError, match=r"cannot prune the output channels of 'stem': .*'norm'.*normalizes"):
        S.shrink_channels(model, 0.5, _x(12), strict=True)


def test_constant_sizes_are_refused() -> None:
    class ConstView(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8 * 10 * 10, 5)
            self.conv2, self.fc2 = nn.Conv2d(3, 8, 3), nn.Linear(4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.fc(self.conv(x).reshape(2, 800))        # 800 is a constant: cannot follow
            b = self.fc2(self.conv2(x)[:, :4].mean((2, 3)))  # a constant slice of the channels
            return a + b

    model = _randomize(ConstView())
    skipped = S.shrink_channels(model, 0.5, _x(12)).channel_plan.skipped
    assert "constant channel count" in skipped["'conv'"]
    assert "constant position" in skipped["'conv2'"]


def test_cut_removed_inputs_is_the_hand_zeroed_model() -> None:
    model = _randomize(_InvertedResidual())
    x = _x(12)
    small = S.shrink_channels(model, 0.5, x)
    hand = copy.deepcopy(model)
    r = small.channel_plan.removed
    with torch.no_grad():  # every weight that reads a removed channel, by hand
        hand.expand.weight[:, r["stem"]] = 0.0
        hand.fc.weight[:, r["stem"]] = 0.0
        hand.project.weight[:, r["expand"]] = 0.0
    ref = S.cut_removed_inputs(model, r, x)
    for a, b in zip(hand.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


def test_save_and_reload_with_weights_only(tmp_path) -> None:
    for build, x in [(lambda: sk.models.MLP(), torch.randn(4, 40)),
                     (lambda: sk.models.TinyTransformer(), torch.randn(4, 40)),
                     (lambda: sk.models.CNN1d(), torch.randn(4, 40)),
                     (lambda: sk.models.ResCNN1d(blocks=2), torch.randn(4, 40)),
                     (lambda: _SE(), _x(12)), (lambda: _Shuffle(), _x(12))]:
        torch.manual_seed(0)
        model = _randomize(build())
        small = S.shrink_channels(model, 0.5, x)
        S.save_shrunk(small, tmp_path / "small.pt")
        torch.manual_seed(1)
        back = S.load_shrunk(build().eval(), tmp_path / "small.pt", x)
        with torch.no_grad():
            assert torch.equal(back(x), small(x))
        assert {k: v.shape for k, v in back.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}
    with pytest.raises(ValueError, match="channel_plan"):
        S.save_shrunk(sk.models.CNN1d(), tmp_path / "x.pt")
    with pytest.raises(ValueError, match="'conv9'"):
        S.apply_plan(sk.models.CNN1d(), {"conv9": torch.tensor([0])}, torch.randn(4, 40))
    with pytest.raises(ValueError, match="has 32"):
        S.apply_plan(sk.models.CNN1d(), {"conv1": torch.tensor([32])}, torch.randn(4, 40))
    with pytest.raises(ValueError, match="tied unit"):
        S.apply_plan(sk.models.ResCNN1d(blocks=2), {"stem": torch.tensor([0])}, torch.randn(4, 40))
    with pytest.raises(TypeError, match="plan"):
        S.apply_plan(sk.models.CNN1d(), [1, 2], torch.randn(4, 40))
    torch.save({"a": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="save_shrunk"):
        S.load_shrunk(sk.models.CNN1d(), tmp_path / "other.pt", torch.randn(4, 40))


class _LayerScale(nn.Module):
    """ConvNeXt's block in full: depthwise conv, LayerNorm channels-last, MLP, per-channel layer_scale."""

    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.norm = nn.LayerNorm(8) if norm else nn.Identity()
        self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 8)
        self.layer_scale = nn.Parameter(torch.ones(8, 1, 1))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        h = self.down(F.gelu(self.up(self.norm(self.dw(x).permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        return self.head((x + self.layer_scale * h).mean((2, 3)))


def test_layer_scale_parameter_is_pruned_with_its_channels() -> None:
    model = _randomize(_LayerScale(norm=False))
    small = S.shrink_channels(model, 0.5, _x(12))
    assert small.channel_plan.skipped == {}
    keep = [c for c in range(8) if c not in small.channel_plan.removed["stem"]]
    assert torch.equal(small.layer_scale, model.layer_scale[keep])
    _check_exact(model, small)


def test_allow_inexact_prunes_through_layernorm_and_warns() -> None:
    model = _randomize(_LayerScale(norm=True))
    assert "'stem'+'down'" in S.shrink_channels(model, 0.5, _x(12)).channel_plan.skipped
    with pytest.warns(UserWarning, match=r"allow_inexact: channels normalized by LayerNorm \['norm'\]"):
        small = S.shrink_channels(model, 0.5, _x(12), allow_inexact=True)
    assert small.channel_plan.skipped == {}
    assert small.norm.normalized_shape == (4,) and small.norm.weight.shape == (4,)
    assert small.stem.out_channels == small.layer_scale.shape[0] == small.head.in_features == 4
    for size in SIZES:  # it runs at any size, and it is not the zero-channel model: the norm changed
        x = _x(size)
        ref = S.cut_removed_inputs(model, small.channel_plan, x)
        with torch.no_grad():
            assert (small(x) - ref(x)).abs().max() > 1e-3
    with pytest.raises(TypeError, match="allow_inexact"):
        S.shrink_channels(model, 0.5, _x(12), allow_inexact="yes")


def test_meta_device_shapes_give_the_same_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large examples take their shapes from a meta-device run: same plan, same shrunk model."""
    from sparsekit import graph

    model = _randomize(_Shuffle())
    real = S.shrink_channels(model, 0.5, _x(12))
    monkeypatch.setattr(graph, "META_ABOVE", 0)
    meta = S.shrink_channels(model, 0.5, _x(12))
    g = graph.trace(model, _x(12))
    devices = {n.meta["value"].device.type for n in g.nodes if isinstance(n.meta.get("value"), torch.Tensor)}
    assert devices == {"meta"}
    assert real.channel_plan.removed.keys() == meta.channel_plan.removed.keys()
    assert all(torch.equal(v, meta.channel_plan.removed[k]) for k, v in real.channel_plan.removed.items())
    with torch.no_grad():
        assert torch.equal(real(_x(17)), meta(_x(17)))
