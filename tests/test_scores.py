"""Tests for the pruning-at-init scores (SNIP, GraSP, SynFlow) in sparsekit.scores.

Each score is checked against a hand computation on a tiny network, against a plain
autograd reference on the book's models (BatchNorm included), for side effects on the
model, for masked models, and for bad input.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsekit as sk
from sparsekit import scores

torch.set_default_dtype(torch.float32)


def _sequential(*sizes: int, bias: bool = False, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _batch(n: int = 16, d: int = 40, classes: int = 10, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def _snapshot(model: nn.Module) -> tuple[dict, dict, list]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    flags = [(n, p.requires_grad, p.grad) for n, p in model.named_parameters()]
    return state, modes, flags


def _assert_unchanged(model: nn.Module, snap: tuple[dict, dict, list]) -> None:
    state, modes, flags = snap
    now = model.state_dict()
    assert set(now) == set(state)
    for k, v in state.items():
        assert now[k].dtype == v.dtype and torch.equal(now[k], v), k
    assert {name: m.training for name, m in model.named_modules()} == modes
    for (n, rg, g), (n2, p) in zip(flags, model.named_parameters()):
        assert n == n2 and p.requires_grad == rg and p.grad is None and g is None


# --- hand computations ----------------------------------------------------------------


def test_snip_single_linear_quadratic_loss_by_hand() -> None:
    # L = sum_b ||W x_b - t_b||^2  ->  g = 2 sum_b (W x_b - t_b) x_b^T
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    t = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    w = lin.weight.detach()
    g = 2 * (x @ w.T - t).T @ x
    out = scores.snip(lin, x, t, loss_fn=lambda o, y: ((o - y) ** 2).sum())
    assert torch.allclose(out["weight"], (g * w).abs())
    # The numbers themselves: residuals [-3, 5.5] and [-4, 2], so g = [[2, -16], [7, 24]].
    assert torch.equal(out["weight"], torch.tensor([[2.0, 32.0], [3.5, 72.0]]))


def test_snip_two_layer_cross_entropy_by_hand() -> None:
    net = _sequential(5, 4, 3, seed=3)
    x, y = _batch(7, 5, 3)
    w1, w2 = net[0].weight.detach(), net[2].weight.detach()
    pre = x @ w1.T
    h = pre.clamp(min=0)
    p = torch.softmax(h @ w2.T, dim=1)
    delta = (p - F.one_hot(y, 3).float()) / len(y)  # dL/dlogits for the mean loss
    g2 = delta.T @ h
    g1 = ((delta @ w2) * (pre > 0)).T @ x
    out = scores.snip(net, x, y)
    assert torch.allclose(out["0.weight"], (g1 * w1).abs(), atol=1e-6)
    assert torch.allclose(out["2.weight"], (g2 * w2).abs(), atol=1e-6)


def test_grasp_single_linear_quadratic_loss_by_hand() -> None:
    # L = 1/2 sum_b ||W x_b - t_b||^2: g = sum_b r_b x_b^T, H V = sum_b (V x_b) x_b^T.
    torch.manual_seed(0)
    lin = nn.Linear(3, 2, bias=False).double()
    x, t = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    w = lin.weight.detach()
    g = (x @ w.T - t).T @ x
    hg = (x @ g.T).T @ x
    out = scores.grasp(lin, x, t, loss_fn=lambda o, y: 0.5 * ((o - y) ** 2).sum())
    assert torch.allclose(out["weight"], w * hg)


def test_grasp_matches_finite_difference_hessian_gradient_product() -> None:
    net = _sequential(6, 5, 4, seed=2).double()
    x, y = _batch(9, 6, 4)
    x = x.double()

    def grads(shift: float, direction: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        m = copy.deepcopy(net)
        with torch.no_grad():
            for n, p in sk.prunable_weights(m).items():
                p += shift * direction[n]
        loss = F.cross_entropy(m(x), y)
        ws = sk.prunable_weights(m)
        return dict(zip(ws, torch.autograd.grad(loss, list(ws.values()))))

    g = grads(0.0, {n: torch.zeros_like(p) for n, p in sk.prunable_weights(net).items()})
    eps = 1e-5
    plus, minus = grads(eps, g), grads(-eps, g)
    out = scores.grasp(net, x, y)
    for n, w in sk.prunable_weights(net).items():
        hg = (plus[n] - minus[n]) / (2 * eps)
        assert torch.allclose(out[n], w.detach() * hg, rtol=1e-4, atol=1e-9), n


def test_synflow_two_layer_by_hand() -> None:
    net = _sequential(3, 4, 2, seed=5)
    w1, w2 = net[0].weight.detach().double().abs(), net[2].weight.detach().double().abs()
    out = scores.synflow(net, torch.randn(8, 3))
    # R = 1^T |W2| |W1| 1: dR/d|W1|_ij = colsum(|W2|)_i, dR/d|W2|_ki = (|W1| 1)_i.
    assert torch.allclose(out["0.weight"], w2.sum(0)[:, None] * w1)
    assert torch.allclose(out["2.weight"], w2 * w1.sum(1)[None, :])
    assert out["0.weight"].dtype == torch.float64


def test_synflow_with_biases_by_hand() -> None:
    net = _sequential(3, 4, 2, bias=True, seed=6)
    w1, b1 = net[0].weight.detach().double().abs(), net[0].bias.detach().double().abs()
    w2 = net[2].weight.detach().double().abs()
    out = scores.synflow(net, torch.zeros(1, 3))
    # R = 1^T (|W2| (|W1| 1 + |b1|) + |b2|).
    assert torch.allclose(out["0.weight"], w2.sum(0)[:, None] * w1)
    assert torch.allclose(out["2.weight"], w2 * (w1.sum(1) + b1)[None, :])


def _conservation_check(net: nn.Module, example: torch.Tensor) -> None:
    out = scores.synflow(net, example)
    sums = torch.stack([s.sum() for s in out.values()])
    state = {k: v.double().abs() for k, v in net.state_dict().items()}
    r = torch.func.functional_call(net.eval(), state, (torch.ones_like(example[:1], dtype=torch.float64),)).sum()
    # Every layer's scores sum to R (Tanaka et al. 2020, Theorem 2).
    assert torch.allclose(sums, r.expand_as(sums), rtol=1e-10)


def test_synflow_conservation_law_mlp() -> None:
    _conservation_check(_sequential(40, 32, 16, 10, seed=0), torch.randn(4, 40))


def test_synflow_conservation_law_bias_free_conv() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(1, 4, 3, bias=False), nn.ReLU(), nn.Conv1d(4, 6, 3, bias=False), nn.ReLU(),
                        nn.Flatten(), nn.Linear(6 * 6, 3, bias=False))
    _conservation_check(net, torch.randn(2, 1, 10))


def test_synflow_neuronwise_conservation() -> None:
    # Theorem 1: for each hidden neuron, incoming scores sum to outgoing scores.
    net = _sequential(5, 7, 6, 3, seed=4)
    out = scores.synflow(net, torch.randn(1, 5))
    assert torch.allclose(out["0.weight"].sum(1), out["2.weight"].sum(0))
    assert torch.allclose(out["2.weight"].sum(1), out["4.weight"].sum(0))


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=2, max_size=5), seed=st.integers(0, 10_000))
def test_synflow_conservation_property(sizes: list[int], seed: int) -> None:
    net = _sequential(*sizes, seed=seed)
    out = scores.synflow(net, torch.randn(1, sizes[0]))
    sums = torch.stack([s.sum() for s in out.values()])
    assert torch.allclose(sums, sums[0].expand_as(sums), rtol=1e-10)
    assert all(bool((s >= 0).all()) for s in out.values())


def test_synflow_is_data_free_and_ignores_input_values() -> None:
    net = sk.models.CNN1d()
    a = scores.synflow(net, torch.randn(5, 40))
    b = scores.synflow(net, 100 * torch.randn(1, 40))
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- the book's models: reference autograd, shapes, side effects ----------------------


def _reference_snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    m = copy.deepcopy(model)
    ws = sk.prunable_weights(m)
    grads = torch.autograd.grad(F.cross_entropy(m(x), y), list(ws.values()))
    return {n: (g * w).abs().detach() for (n, w), g in zip(ws.items(), grads)}


def _reference_grasp(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    m = copy.deepcopy(model)
    ws = sk.prunable_weights(m)
    g = torch.autograd.grad(F.cross_entropy(m(x), y), list(ws.values()), create_graph=True)
    z = sum((gi * gi.detach()).sum() for gi in g)
    hg = torch.autograd.grad(z, list(ws.values()))
    return {n: (w * h).detach() for (n, w), h in zip(ws.items(), hg)}


@pytest.mark.parametrize("name", ["mlp", "cnn", "rescnn"])
@pytest.mark.parametrize("train_mode", [True, False])
def test_snip_and_grasp_match_plain_autograd(name: str, train_mode: bool) -> None:
    torch.manual_seed(0)
    model = sk.models.build(name).train(train_mode)
    x, y = _batch(32)
    for fn, ref in [(scores.snip, _reference_snip), (scores.grasp, _reference_grasp)]:
        got, want = fn(model, x, y), ref(model, x, y)
        assert list(got) == list(want)
        for k in want:
            assert torch.allclose(got[k], want[k], rtol=1e-4, atol=1e-7), (fn.__name__, k)


def test_batchnorm_train_and_eval_modes_give_different_snip() -> None:
    # In train mode BatchNorm normalises with the batch's statistics, in eval mode with
    # the running ones: the scores must follow the model's mode, not force one.
    torch.manual_seed(0)
    model = sk.models.CNN1d()
    x, y = _batch(32)
    a = scores.snip(model.train(), x, y)
    b = scores.snip(model.eval(), x, y)
    assert not torch.allclose(a["conv2.weight"], b["conv2.weight"])


@pytest.mark.parametrize("name", ["mlp", "cnn", "rescnn", "transformer"])
@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
def test_keys_shapes_dtypes_and_no_side_effects(name: str, method: str) -> None:
    torch.manual_seed(0)
    model = sk.models.build(name)
    model.train()
    if name == "cnn":
        model.bn2.eval()  # mixed modes must be restored module by module
    snap = _snapshot(model)
    x, y = _batch(16)
    out = scores.synflow(model, x) if method == "synflow" else getattr(scores, method)(model, x, y)
    weights = sk.prunable_weights(model)
    assert list(out) == list(weights)
    for k, w in weights.items():
        assert out[k].shape == w.shape and out[k].is_floating_point() and not out[k].requires_grad
        assert torch.isfinite(out[k]).all()
    _assert_unchanged(model, snap)


def _plain_masks_and_masked_copy() -> tuple[torch.nn.Module, dict[str, torch.Tensor], torch.nn.Module]:
    """A CNN, random 70 % masks for it, and a deep copy with those masks applied."""
    torch.manual_seed(0)
    plain = sk.models.CNN1d()
    masks = sk.select_masks(sk.scores.random(plain, 0), 0.7)
    masked = copy.deepcopy(plain)
    sk.apply_masks(masked, masks)
    return plain, masks, masked


def test_masked_model_scores_effective_weights_and_stays_unchanged() -> None:
    plain, masks, masked = _plain_masks_and_masked_copy()
    snap = _snapshot(masked)
    x, y = _batch(32)
    for method in ["snip", "grasp", "synflow"]:
        fn = getattr(scores, method)
        args = (x,) if method == "synflow" else (x, y)
        on_masked = fn(masked, *args)
        via_argument = fn(plain, *args, masks=masks)
        for k in masks:
            assert torch.allclose(on_masked[k], via_argument[k], rtol=1e-5, atol=1e-9), (method, k)
            assert bool((on_masked[k][~masks[k]] == 0).all()), (method, k)
    _assert_unchanged(masked, snap)
    # SNIP and SynFlow of a masked network equal those of the network with zeros baked in.
    zeroed = copy.deepcopy(plain)
    with torch.no_grad():
        for k, w in sk.prunable_weights(zeroed).items():
            w.mul_(masks[k])
    for method, args in [("snip", (x, y)), ("synflow", (x,))]:
        a, b = getattr(scores, method)(masked, *args), getattr(scores, method)(zeroed, *args)
        assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-9) for k in a), method


def test_masks_argument_intersects_with_existing_masks() -> None:
    torch.manual_seed(0)
    model = sk.models.MLP()
    first = sk.select_masks(sk.scores.random(model, 1), 0.5)
    second = sk.select_masks(sk.scores.random(model, 2), 0.5)
    sk.apply_masks(model, first)
    out = scores.synflow(model, torch.randn(1, 40), masks=second)
    for k in first:
        assert bool((out[k][~(first[k] & second[k])] == 0).all())
        assert bool((out[k][first[k] & second[k]] > 0).any())


# --- bad input ------------------------------------------------------------------------


def test_bad_inputs_raise_with_clear_messages() -> None:
    model = sk.models.MLP()
    x, y = _batch(8)
    with pytest.raises(TypeError, match="inputs"):
        scores.snip(model, x.tolist(), y)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="targets"):
        scores.grasp(model, x, y.tolist())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="targets"):
        scores.snip(model, x, y[:3])
    with pytest.raises(ValueError, match="non-empty"):
        scores.snip(model, x[:0], y[:0])
    with pytest.raises(TypeError, match="loss_fn"):
        scores.snip(model, x, y, loss_fn="ce")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scalar"):
        scores.grasp(model, x, y, loss_fn=lambda o, t: F.cross_entropy(o, t, reduction="none"))
    with pytest.raises(TypeError, match="example_input"):
        scores.synflow(model, [1.0] * 40)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="example_input"):
        scores.synflow(model, torch.empty(0, 40))
    with pytest.raises(ValueError, match="no Linear"):
        scores.synflow(nn.Sequential(nn.ReLU()), x)
    with pytest.raises(ValueError, match="unknown weight name 'fc.weight'"):
        scores.snip(model, x, y, masks={"fc.weight": torch.ones(10, 256, dtype=torch.bool)})
    with pytest.raises(TypeError, match="bool"):
        scores.synflow(model, x, masks={"4.weight": torch.ones(10, 256)})
    with pytest.raises(ValueError, match="shape"):
        scores.synflow(model, x, masks={"4.weight": torch.ones(256, 10, dtype=torch.bool)})
    with pytest.raises(TypeError, match="masks must be a mapping"):
        scores.synflow(model, x, masks=[1])  # type: ignore[arg-type]


# --- issue 12: scores under no_grad / inference_mode ----------------------------------


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_scores_work_inside_no_grad_and_inference_mode(context):
    torch.manual_seed(0)
    model = sk.models.CNN1d(channels=(4, 4, 4)).train()
    x, y = torch.randn(8, 40), torch.randint(0, 10, (8,))
    ref = {"snip": scores.snip(model, x, y), "grasp": scores.grasp(model, x, y), "synflow": scores.synflow(model, x)}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with context():
        xi, yi = x.clone(), y.clone()  # inference tensors under inference_mode
        got = {"snip": scores.snip(model, xi, yi), "grasp": scores.grasp(model, xi, yi),
               "synflow": scores.synflow(model, xi)}
    for kind in ref:
        for name in ref[kind]:
            assert torch.equal(got[kind][name], ref[kind][name]), (kind, name)
            assert not got[kind][name].is_inference()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


# --- issue 12: the same masks= argument on all five score functions ---------------------

_ALL_FIVE = ["magnitude", "random", "snip", "grasp", "synflow"]


def _call(method: str, model: nn.Module, **kwargs):
    x, y = _batch(16)
    args = {"magnitude": (), "random": (5,), "snip": (x, y), "grasp": (x, y), "synflow": (x,)}[method]
    return getattr(scores, method)(model, *args, **kwargs)


@pytest.mark.parametrize("method", _ALL_FIVE)
def test_masks_is_the_same_keyword_only_argument_everywhere(method: str) -> None:
    import inspect

    param = inspect.signature(getattr(scores, method)).parameters["masks"]
    assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is None


@pytest.mark.parametrize("method", _ALL_FIVE)
def test_masks_argument_scores_as_if_applied(method: str) -> None:
    """``fn(plain, masks=m)`` equals ``fn(model with m applied)``; pruned entries score exactly 0;
    the model is unchanged. (``magnitude`` and ``random`` had no ``masks`` before.)"""
    plain, masks, masked = _plain_masks_and_masked_copy()
    snap = _snapshot(plain)
    via_argument = _call(method, plain, masks=masks)
    _assert_unchanged(plain, snap)
    on_masked = _call(method, masked)
    unmasked = _call(method, plain)
    for k, m in masks.items():
        assert torch.allclose(via_argument[k], on_masked[k], rtol=1e-5, atol=1e-9), k
        assert bool((via_argument[k][~m] == 0).all()) and bool((on_masked[k][~m] == 0).all()), k
    if method in ("magnitude", "random"):  # scores that do not depend on the rest of the network
        for k, m in masks.items():
            assert torch.equal(via_argument[k][m], unmasked[k][m]), k


@pytest.mark.parametrize("method", _ALL_FIVE)
def test_masks_argument_intersects_with_the_models_own(method: str) -> None:
    torch.manual_seed(0)
    model = sk.models.MLP()
    first = sk.select_masks(sk.scores.random(model, 1), 0.5)
    second = sk.select_masks(sk.scores.random(model, 2), 0.5)
    sk.apply_masks(model, first)
    out = _call(method, model, masks=second)
    for k in first:
        kept = first[k] & second[k]
        assert bool((out[k][~kept] == 0).all()), k
        assert bool((out[k][kept] != 0).any()), k


@pytest.mark.parametrize("method", _ALL_FIVE)
def test_bad_masks_are_refused_alike(method: str) -> None:
    model = sk.models.MLP()
    with pytest.raises(ValueError, match="masks has unknown weight name 'fc.weight'; allowed names: 0.weight"):
        _call(method, model, masks={"fc.weight": torch.ones(10, 256, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"masks\['4.weight'\] must be a bool tensor, got torch.float32"):
        _call(method, model, masks={"4.weight": torch.ones(10, 256)})
    with pytest.raises(ValueError, match=r"masks\['4.weight'\] has shape \(256, 10\), the weight has shape"):
        _call(method, model, masks={"4.weight": torch.ones(256, 10, dtype=torch.bool)})
    with pytest.raises(TypeError, match="masks must be a mapping name -> bool tensor or None, got list"):
        _call(method, model, masks=[1])
