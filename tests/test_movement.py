"""Tests for sparsekit.movement (Sanh et al. 2020) and sparsekit.pretrained."""

from __future__ import annotations

import copy
import json
import shutil
import unittest.mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsekit as sk
from sparsekit import movement as mv
from sparsekit import pretrained as pt


def tiny_layer() -> nn.Linear:
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, -3.0]]))
    return layer


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return sk.models.MLP(8, (16,), 3)


def how(method: str, sparsity: float = 0.5) -> dict:
    """What sets the sparsity: the schedule's ``final_sparsity``, or soft movement's ``tau`` and ``lam``."""
    if method == "soft_movement":
        return {"tau": 0.3, "lam": 0.1}
    return {"final_sparsity": sparsity}


def toy_loader(n: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return sk.data.loader(x, y, batch_size=16, shuffle=True, seed=seed)


# --- the movement score by hand ---------------------------------------------------------


def test_accumulate_movement_by_hand():
    # L = w . x with x = (1, 1): dL/dW = (1, 1), so S = -alpha * (1, 1) * (2, -3) = (-2a, 3a).
    layer = tiny_layer()
    layer(torch.tensor([[1.0, 1.0]])).sum().backward()
    s = mv.accumulate_movement(None, layer, alpha=0.5)
    assert torch.equal(s["weight"], torch.tensor([[-1.0, 1.5]]))
    # a second step adds to the first
    s2 = mv.accumulate_movement(s, layer, alpha=0.5)
    assert torch.equal(s2["weight"], torch.tensor([[-2.0, 3.0]]))
    # the negative weight that is pushed further from zero (gradient > 0 when w < 0
    # means descent makes it *more* negative) gets the higher score
    assert s["weight"][0, 1] > s["weight"][0, 0]


def test_accumulate_movement_does_not_touch_model():
    layer = tiny_layer()
    layer(torch.ones(1, 2)).sum().backward()
    before = layer.weight.detach().clone()
    mv.accumulate_movement(None, layer)
    assert torch.equal(layer.weight, before)


def test_accumulate_movement_bad_input():
    layer = tiny_layer()
    with pytest.raises(ValueError, match="no gradient"):
        mv.accumulate_movement(None, layer)
    layer(torch.ones(1, 2)).sum().backward()
    with pytest.raises(ValueError, match="alpha"):
        mv.accumulate_movement(None, layer, alpha=0.0)
    with pytest.raises(ValueError, match="alpha"):
        mv.accumulate_movement(None, layer, alpha=float("nan"))
    with pytest.raises(ValueError, match="shape"):
        mv.accumulate_movement({"weight": torch.zeros(2, 1)}, layer)
    with pytest.raises(ValueError, match="unknown"):
        mv.accumulate_movement(None, layer, names=["nope.weight"])
    with pytest.raises(TypeError, match="names"):
        mv.accumulate_movement(None, layer, names="weight")


# --- ScoreMask: straight-through gradient ---------------------------------------------------


def test_straight_through_gradient_reaches_every_score():
    layer = tiny_layer()
    (scores,) = mv.attach_scores(layer).values()
    with torch.no_grad():
        scores.copy_(torch.tensor([[1.0, 0.0]]))
    mv.update_hard(layer, 0.5)  # prunes the -3 weight (lower score)
    assert torch.equal(layer.weight.detach(), torch.tensor([[2.0, 0.0]]))
    x = torch.tensor([[1.0, 4.0]])
    layer(x).sum().backward()
    # dL/dW' = x; dL/dS = x * W for kept AND pruned entries (Eq. 2)
    assert torch.equal(scores.grad, torch.tensor([[2.0, -12.0]]))
    # the weight itself gets dL/dW' * M: nothing at the pruned entry
    original = layer.parametrizations.weight.original
    assert torch.equal(original.grad, torch.tensor([[1.0, 0.0]]))


def test_sgd_on_scores_is_the_movement_score():
    # with nothing pruned, one SGD step of size alpha on S equals Eq. (3) on a dense copy
    torch.manual_seed(0)
    dense = nn.Linear(5, 3)
    masked = copy.deepcopy(dense)
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    F.cross_entropy(dense(x), y).backward()
    expected = mv.accumulate_movement(None, dense, alpha=0.1)["weight"]
    scores = mv.attach_scores(masked)["weight"]
    F.cross_entropy(masked(x), y).backward()
    torch.optim.SGD([scores], lr=0.1).step()
    torch.testing.assert_close(scores.detach(), expected, rtol=0, atol=1e-7)


def test_score_mask_forward_value_is_exact():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    w = layer.weight.detach().clone()
    scores = mv.attach_scores(layer)["weight"]
    with torch.no_grad():
        scores.copy_(torch.randn(4, 6) * 1e-3)
    mv.update_hard(layer, 0.5)
    mask = sk.get_masks(layer)["weight"]
    assert torch.equal(layer.weight.detach(), w * mask)
    assert sk.sparsity(layer) == 0.5


# --- hard and soft masks ---------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 9), sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 1000))
def test_update_hard_exact_top_v_per_matrix(rows, cols, sparsity, seed):
    model = nn.Sequential(nn.Linear(cols, rows), nn.Linear(rows, cols))
    scores = mv.attach_scores(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in scores.values():
            s.copy_(torch.randint(-3, 4, s.shape, generator=gen).float())  # many ties
    mv.update_hard(model, sparsity)
    for name, mask in sk.get_masks(model).items():
        s = scores[name].detach()
        n = s.numel()
        assert int((~mask).sum()) == round(sparsity * n)
        if mask.any() and (~mask).any():
            assert s[mask].min() >= s[~mask].max()
        # same choice (tie-breaking included) as the common per-layer selection
        assert torch.equal(mask, sk.select_masks({name: s}, sparsity, scope="layer")[name])


def test_update_hard_can_revive_a_pruned_weight():
    layer = tiny_layer()
    scores = mv.attach_scores(layer)["weight"]
    with torch.no_grad():
        scores.copy_(torch.tensor([[1.0, 0.0]]))
    mv.update_hard(layer, 0.5)
    assert sk.get_masks(layer)["weight"].tolist() == [[True, False]]
    with torch.no_grad():
        scores.copy_(torch.tensor([[0.0, 1.0]]))
    mv.update_hard(layer, 0.5)
    assert sk.get_masks(layer)["weight"].tolist() == [[False, True]]


def test_update_soft_fixed_tau():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    scores = mv.attach_scores(model)
    with torch.no_grad():
        scores["0.weight"].copy_(torch.tensor([[-2.0, 0.0, 2.0], [1.0, -1.0, 0.5]]))
        scores["1.weight"].copy_(torch.tensor([[-3.0, -0.1], [0.1, 3.0]]))
    assert mv.update_soft(model, tau=0.5) == 0.5
    masks = sk.get_masks(model)
    # sigma(S) > 0.5 exactly where S > 0 (sigma(0) = 0.5 is not kept)
    assert masks["0.weight"].tolist() == [[False, False, True], [True, False, True]]
    assert masks["1.weight"].tolist() == [[False, False], [True, True]]


def model_with_scores(seed: int, draw) -> tuple[nn.Module, dict]:
    """A two-layer model with movement scores drawn by ``draw(shape, generator)``."""
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    scores = mv.attach_scores(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in scores.values():
            s.copy_(draw(s.shape, gen))
    return model, scores


@settings(max_examples=30, deadline=None)
@given(tau=st.floats(0.01, 0.99), seed=st.integers(0, 1000))
def test_update_soft_is_sigmoid_above_tau(tau, seed):
    model, scores = model_with_scores(seed, lambda shape, gen: 3 * torch.randn(shape, generator=gen))
    mv.update_soft(model, tau=tau)
    for name, mask in sk.get_masks(model).items():
        assert torch.equal(mask, torch.sigmoid(scores[name].detach()) > tau)


def test_update_global_is_global_and_exact():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    scores = mv.attach_scores(model)
    with torch.no_grad():
        scores["0.weight"].copy_(torch.arange(16.0).view(4, 4))  # all higher than layer 1
        scores["1.weight"].copy_(-1.0 - torch.arange(16.0).view(4, 4))
    tau = mv.update_global(model, 0.5)
    masks = sk.get_masks(model)
    assert masks["0.weight"].all() and not masks["1.weight"].any()  # layers differ
    assert tau == pytest.approx(torch.sigmoid(torch.tensor(-1.0)).item())  # largest pruned
    assert mv.update_global(model, 0.0) == 0.0 and all(m.all() for m in sk.get_masks(model).values())


@settings(max_examples=30, deadline=None)
@given(sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 1000))
def test_update_global_equals_global_select_masks(sparsity, seed):
    many_ties = lambda shape, gen: torch.randint(-3, 4, shape, generator=gen).float()  # noqa: E731
    model, scores = model_with_scores(seed, many_ties)
    mv.update_global(model, sparsity)
    expected = sk.select_masks({n: s.detach() for n, s in scores.items()}, sparsity, scope="global")
    assert all(torch.equal(sk.get_masks(model)[n], expected[n]) for n in expected)


def test_soft_penalty_value_and_gradient():
    layer = tiny_layer()
    scores = mv.attach_scores(layer, init=0.0)["weight"]
    pen = mv.soft_penalty(layer)
    assert pen.item() == 1.0  # sum of sigma(0) over two scores (Sanh et al.: R = sum sigma(S))
    pen.backward()
    # d/dS sum sigmoid(S) = sigmoid(0) (1 - sigmoid(0)) = 0.25 per score
    assert torch.equal(scores.grad, torch.full((1, 2), 0.25))


def test_soft_penalty_gradient_matches_autograd_oracle_on_two_layers():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    scores = mv.attach_scores(model)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for s in scores.values():
            s.copy_(torch.randn(s.shape, generator=gen))
    lam = 0.7
    (lam * mv.soft_penalty(model)).backward()
    for name, s in scores.items():
        leaf = s.detach().clone().requires_grad_(True)
        (lam * torch.sigmoid(leaf).sum()).backward()  # the oracle: autograd on a plain tensor
        sig = torch.sigmoid(s.detach())
        assert torch.allclose(s.grad, leaf.grad, rtol=0, atol=1e-7), name
        assert torch.allclose(s.grad, lam * sig * (1 - sig), rtol=0, atol=1e-7), name  # closed form


def test_soft_movement_loss_is_cross_entropy_plus_lambda_times_penalty(monkeypatch):
    """The driver's training loss is CE + lam * sum sigma(S) (Sanh et al., Sec. 4); evaluation sums are CE alone."""
    seen: dict = {}
    original_train, original_freeze = mv.train, mv.freeze_masks

    def spy_train(model, loader, **kwargs):
        seen["loss_fn"] = kwargs["loss_fn"]
        return original_train(model, loader, **kwargs)

    def spy_freeze(model):
        seen["scores"] = [s.detach().clone() for s in mv.score_parameters(model).values()]
        return original_freeze(model)

    monkeypatch.setattr(mv, "train", spy_train)
    monkeypatch.setattr(mv, "freeze_masks", spy_freeze)
    mv.apply_gradual_pruning(mlp(), toy_loader(), method="soft_movement", tau=0.3, lam=0.25, steps=2,
                             names=["0.weight"], progress=False)
    loss_fn = seen["loss_fn"]
    logits, y = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0])
    assert loss_fn(logits, y, reduction="sum").item() == F.cross_entropy(logits, y, reduction="sum").item()
    penalty = sum(torch.sigmoid(s).sum() for s in seen["scores"])  # the run's final scores (16 x 8)
    assert loss_fn(logits, y).item() == pytest.approx((F.cross_entropy(logits, y) + 0.25 * penalty).item(), abs=1e-6)


def test_lambda_zero_gives_no_pruning_pressure():
    """With lam = 0 the scores only feel the task loss: on a model whose task gradient is zero the scores
    stay at 0, sigma(0) = 0.5 > tau, and nothing is pruned; with lam > 0 the same run prunes everything."""
    def run(lam: float) -> tuple[float, torch.Tensor]:
        model = nn.Sequential(nn.Linear(8, 3))
        with torch.no_grad():
            model[0].weight.zero_()  # dL/dS = dL/dW' * W = 0 and lr = 0 keeps W = 0: no movement signal
        res = mv.apply_gradual_pruning(model, toy_loader(), method="soft_movement", tau=0.4, lam=lam, steps=12,
                                       lr=0.0, score_lr=0.1, optimizer=torch.optim.SGD, progress=False)
        return res.sparsity, res.masks["0.weight"]

    sp0, m0 = run(0.0)
    assert sp0 == 0.0 and m0.all()
    sp1, _ = run(2.0)  # S ~ -12 * 0.1 * 2 * 0.24 = -0.58 after 12 steps: sigma(S) < 0.4
    assert sp1 == 1.0


def test_higher_lambda_is_sparser_deterministic_tiny_case():
    """Plain SGD on scores with zero task gradient: S_t = S_{t-1} - lr * lam * s(1 - s), identical for every
    score, so the run prunes all or nothing; the number of steps to cross tau falls as lam grows."""
    def first_pruned_step(lam: float) -> int:
        s, t = 0.0, 0
        tau_logit = float(torch.logit(torch.tensor(0.45)))
        while s > tau_logit:
            sig = 1 / (1 + float(torch.exp(torch.tensor(-s))))
            s -= 0.1 * lam * sig * (1 - sig)
            t += 1
        return t

    sparsities = []
    for lam in (0.5, 2.0, 8.0):
        steps_needed = first_pruned_step(lam)
        model = nn.Sequential(nn.Linear(8, 3))
        with torch.no_grad():
            model[0].weight.zero_()
        res = mv.apply_gradual_pruning(model, toy_loader(), method="soft_movement", tau=0.45, lam=lam, steps=6,
                                       lr=0.0, score_lr=0.1, optimizer=torch.optim.SGD, progress=False)
        sparsities.append(res.sparsity)
        assert res.sparsity == (1.0 if steps_needed <= 6 else 0.0), (lam, steps_needed)
    assert sparsities == [0.0, 1.0, 1.0]


def test_higher_lambda_is_sparser_on_a_real_task():
    def run(lam: float) -> float:
        model = mlp()
        res = mv.apply_gradual_pruning(model, toy_loader(), method="soft_movement", steps=40, lam=lam, tau=0.3,
                                       score_lr=0.05, progress=False)
        return res.sparsity

    sps = [run(lam) for lam in (0.0, 0.003, 0.03)]
    assert sps[0] < sps[1] < sps[2], sps  # (lam = 0 still prunes some: the task loss alone moves scores)


def test_bad_input_scores():
    layer = tiny_layer()
    with pytest.raises(ValueError, match="attach_scores"):
        mv.update_hard(layer, 0.5)
    with pytest.raises(ValueError, match="attach_scores"):
        mv.soft_penalty(layer)
    with pytest.raises(ValueError, match="init"):
        mv.attach_scores(layer, init=float("inf"))
    mv.attach_scores(layer)
    with pytest.raises(ValueError, match="already masked"):
        mv.attach_scores(layer)
    with pytest.raises(ValueError, match="sparsity"):
        mv.update_hard(layer, 1.0)
    with pytest.raises(TypeError, match="tau"):
        mv.update_soft(layer)
    with pytest.raises(TypeError, match="sparsity"):
        mv.update_soft(layer, tau=0.5, sparsity=0.5)
    for bad in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="tau"):
            mv.update_soft(layer, tau=bad)
    with pytest.raises(ValueError, match="sparsity"):
        mv.update_global(layer, 1.0)
    with pytest.raises(ValueError, match="sparsity"):
        mv.update_global(layer, -0.1)
    with pytest.raises(ValueError, match="attach_scores"):
        mv.update_global(tiny_layer(), 0.5)
    with pytest.raises(ValueError, match="attach_scores"):
        mv.update_soft(tiny_layer(), tau=0.5)


# --- finalize: back to the common pipeline --------------------------------------------------


def test_finalize_leaves_plain_masks():
    model = mlp()
    mv.attach_scores(model, ["0.weight"])
    with torch.no_grad():
        mv.score_parameters(model)["0.weight"].copy_(torch.randn(16, 8))
    mv.update_hard(model, 0.75)
    expected = sk.get_masks(model)["0.weight"]
    masks = sk.finalize.freeze_masks(model)
    assert torch.equal(masks["0.weight"], expected)
    assert mv.score_parameters(model) == {}
    assert not any("scores" in k for k in model.state_dict())
    fresh = mlp(1)
    sk.load_masked_state_dict(fresh, model.state_dict())
    assert torch.equal(sk.get_masks(fresh)["0.weight"], expected)
    assert sk.sparsity(model[0].weight) == 0.75


def test_finalize_on_deepcopy_leaves_original_working():
    model = mlp()
    mv.attach_scores(model)
    clone = copy.deepcopy(model)
    sk.finalize.freeze_masks(clone)
    x = torch.randn(2, 8)
    model(x)  # the original still has its scores and still runs
    assert set(mv.score_parameters(model)) == {"0.weight", "2.weight"}


def test_param_groups_split_scores():
    model = mlp()
    mv.attach_scores(model)
    groups = mv.param_groups(model, lr=1e-3, score_lr=1e-2)
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert ids[0].isdisjoint(ids[1])
    assert ids[1] == {id(p) for p in mv.score_parameters(model).values()}
    assert len(ids[0]) + len(ids[1]) == len(list(model.parameters()))


# --- the schedule and the driver ---------------------------------------------------------------


def test_schedule_is_cubic_and_hits_target():
    sched = mv.Schedule(0.9, steps=100, warmup=0.1, cooldown=0.3)
    assert (sched.begin_step, sched.end_step) == (10, 70)
    assert sched(0) == 0.0 and sched(10) == 0.0
    assert sched(70) == 0.9 and sched(100) == 0.9
    assert sched(40) == pytest.approx(0.9 * (1 - 0.5**3))
    values = [sched(t) for t in range(101)]
    assert values == sorted(values)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"final_sparsity": 1.0, "steps": 10}, "final_sparsity"),
    ({"final_sparsity": 0.5, "steps": 1}, "steps"),
    ({"final_sparsity": 0.5, "steps": 10, "warmup": 0.6, "cooldown": 0.5}, "warmup"),
    ({"final_sparsity": 0.5, "steps": 2, "warmup": 0.4, "cooldown": 0.4}, "too few"),
])
def test_schedule_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mv.Schedule(**kwargs)


@pytest.mark.parametrize("method", [m for m in mv.METHODS if m != "soft_movement"])
@pytest.mark.parametrize("target", [0.9, 0.97])
def test_apply_gradual_pruning_hits_target_sparsity(method, target):
    model = mlp()
    names = ["0.weight", "2.weight"]
    res = mv.apply_gradual_pruning(model, toy_loader(), method=method, final_sparsity=target, steps=20,
                                   names=names, progress=False)
    total = sum(sk.prunable_weights(model)[n].numel() for n in names)
    expected_pruned = sum(round(target * sk.prunable_weights(model)[n].numel()) for n in names)
    if method == "global_movement":  # one global ranking: the total is exact
        expected_pruned = round(target * total)
    assert res.sparsity == expected_pruned / total
    assert sk.sparsity(model) == pytest.approx(res.sparsity)
    # the model ends in the common pipeline: plain bool masks, no scores
    assert mv.score_parameters(model) == {}
    assert set(sk.get_masks(model)) == set(names)
    if method != "global_movement":  # per-matrix methods: exact in each matrix
        for m in res.masks.values():
            assert int((~m).sum()) == round(target * m.numel())


def test_soft_movement_masks_are_sigmoid_above_tau_at_the_end():
    model = mlp()
    captured = {}
    original = mv.freeze_masks

    def spy(m):
        captured.update({n: s.detach().clone() for n, s in mv.score_parameters(m).items()})
        return original(m)

    with unittest.mock.patch.object(mv, "freeze_masks", spy):
        res = mv.apply_gradual_pruning(model, toy_loader(), method="soft_movement", tau=0.45, lam=0.01, steps=20,
                                       score_lr=0.05, progress=False)
    assert set(captured) == {"0.weight", "2.weight"}
    for n, s in captured.items():
        assert torch.equal(res.masks[n], torch.sigmoid(s) > 0.45), n
    assert 0.0 < res.sparsity < 1.0


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"method": "snip"}, ValueError, "method"),
    ({"method": "movement", "final_sparsity": 1.0}, ValueError, "final_sparsity"),
    ({"method": "movement", "names": ["nope.weight"]}, ValueError, "unknown"),
    ({"method": "magnitude", "tau": 0.5}, ValueError, "tau"),
    ({"method": "movement", "lam": 1.0}, ValueError, "lam"),
    ({"method": "soft_movement", "final_sparsity": None, "tau": 0.3, "lam": -1.0}, ValueError, "lam"),
    ({"method": "soft_movement", "final_sparsity": None, "tau": 2.0}, ValueError, "tau"),
    ({"method": "soft_movement", "final_sparsity": None}, ValueError, "needs tau"),
    ({"method": "soft_movement", "tau": 0.3}, ValueError, "final_sparsity is not used"),
    ({"method": "global_movement", "final_sparsity": None}, ValueError, "needs final_sparsity"),
    ({"method": "global_movement", "tau": 0.3}, ValueError, "tau"),
    ({"method": "global_movement", "lam": 0.1}, ValueError, "lam"),
    ({"method": "magnitude", "prune_every": 0}, ValueError, "prune_every"),
])
def test_apply_gradual_pruning_bad_input(kwargs, exc, match):
    args = {"final_sparsity": 0.5, "steps": 10, "progress": False} | kwargs
    with pytest.raises(exc, match=match):
        mv.apply_gradual_pruning(mlp(), toy_loader(), **args)


# --- the pre-trained model ---------------------------------------------------------------------


def test_pretrained_asset_hash_and_load():
    assert pt.ASSET.is_file()
    assert pt.ASSET.stat().st_size <= 5 * 2**20
    assert pt.file_sha256(pt.ASSET) == pt.SHA256
    model = pt.load_pretrained()
    assert isinstance(model, sk.models.TinyTransformer)
    state = torch.load(pt.ASSET, map_location="cpu", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_pretrained_head_seed():
    rng = torch.random.get_rng_state()
    a, b, c = pt.load_pretrained(head_seed=1), pt.load_pretrained(head_seed=1), pt.load_pretrained(head_seed=2)
    assert torch.equal(torch.random.get_rng_state(), rng)  # global RNG untouched
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)
    assert torch.equal(a.layers[0].fc1.weight, c.layers[0].fc1.weight)
    with pytest.raises(TypeError, match="head_seed"):
        pt.load_pretrained(head_seed=1.5)


def test_pretrained_tampered_file_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "weights.pt"
    shutil.copy(pt.ASSET, bad)
    with open(bad, "ab") as f:
        f.write(b"\0")
    monkeypatch.setattr(pt, "ASSET", bad)
    with pytest.raises(ValueError, match="SHA-256"):
        pt.load_pretrained()
    with pytest.raises(ValueError, match="not a file"):
        pt.load_pretrained(tmp_path / "missing.pt")


def test_pretrained_beats_random_init_at_masked_patch_modelling():
    # the shipped weights really are pre-trained: held-out masked-patch reconstruction with a
    # least-squares decoder is far better with them than with a fresh model
    torch.manual_seed(0)
    shipped = pt.reconstruction_error(pt.load_pretrained())
    untrained = pt.reconstruction_error(sk.models.TinyTransformer(**pt.CONFIG))
    assert shipped < 0.8 * untrained
    # deterministic masks; LAPACK's least squares may differ in the last bits between calls (MKL
    # picks its path by memory alignment), so "the same" is to 1e-9 relative
    assert pt.reconstruction_error(pt.load_pretrained(), seed=0) == pytest.approx(shipped, rel=1e-9)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="fit_samples"):
            pt.reconstruction_error(pt.load_pretrained(), fit_samples=bad)


def test_pretraining_is_deterministic_within_one_process_configuration():
    # Bit-for-bit equality holds for one CPU type and thread count, which is all this test
    # claims: it never compares with the shipped file's hash (another CPU takes other float
    # paths and gets other bits; see benchmarks/results/pretrained_cpu.md).
    a = pt.make_pretrained(steps=25, progress=False).state_dict()
    b = pt.make_pretrained(steps=25, progress=False).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = pt.make_pretrained(steps=25, seed=1, progress=False).state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_pretraining_script_runs_and_reaches_the_shipped_quality(tmp_path, capsys):
    # The whole recipe (1500 steps, one thread) as `python -m sparsekit.pretrained` runs it, written
    # elsewhere than the asset. What holds on any CPU is the quality, not the bits: the held-out
    # error is within 10 % of the shipped model's (measured on two float paths: see
    # benchmarks/results/pretrained_cpu.md) and far below an untrained encoder's (about 0.99).
    threads = torch.get_num_threads()
    try:
        pt.main(["--out", str(tmp_path / "w.pt"), "--json"])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["sha256"] == pt.file_sha256(tmp_path / "w.pt")
    shipped = pt.reconstruction_error(pt.load_pretrained())
    assert abs(result["reconstruction_error"] - shipped) < 0.1 * shipped
    assert result["reconstruction_error"] < 0.8
    reloaded = pt.load_pretrained(tmp_path / "w.pt", sha256=result["sha256"])
    assert pt.reconstruction_error(reloaded) == pytest.approx(result["reconstruction_error"], rel=1e-9)
    assert pt.file_sha256(pt.ASSET) == pt.SHA256  # the shipped asset was not touched


def test_masked_patch_loss_counts_hidden_tokens_only():
    model = sk.models.TinyTransformer(**pt.CONFIG)
    decoder = nn.Linear(pt.CONFIG["d_model"], pt.CONFIG["patch_size"])
    nn.init.zeros_(decoder.weight)
    nn.init.zeros_(decoder.bias)
    x = torch.randn(4, 40)
    gen = torch.Generator().manual_seed(3)
    loss = pt.masked_patch_loss(model, decoder, x, gen)
    gen = torch.Generator().manual_seed(3)
    hidden = torch.rand(4, 10, generator=gen) < pt.MASK_FRACTION
    expected = x.view(4, 10, 4)[hidden].pow(2).mean()
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="steps"):
        pt.make_pretrained(steps=0)


def test_accumulate_movement_missing_layer_is_a_named_error():
    model = sk.models.MLP(8, (8,), 4)
    F.cross_entropy(model(torch.randn(4, 8)), torch.tensor([0, 1, 2, 3])).backward()
    scores = mv.accumulate_movement(None, model)
    del scores["2.weight"]
    with pytest.raises(ValueError, match=r"scores has no entry for \['2.weight'\]"):
        mv.accumulate_movement(scores, model)
    assert set(mv.accumulate_movement(scores, model, names=["0.weight"])) == {"0.weight"}


# --- issue 12: apply_gradual_pruning (was prune_finetune) -------------------------------


def _state(model: nn.Module) -> tuple[dict, list, list]:
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [(n, None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()],
            [m.training for m in model.modules()])


def _assert_as_before(model: nn.Module, before: tuple[dict, list, list], params: list) -> None:
    state, grads, modes = before
    now = model.state_dict()
    assert list(now) == list(state)  # no parametrization left behind (keys as before)
    assert all(torch.equal(now[k], v) for k, v in state.items())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in grads]
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == modes
    assert all(a is b for a, b in zip(model.parameters(), params))  # same Parameter objects
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in model.modules())


def test_old_name_is_gone():
    assert not hasattr(mv, "prune_finetune")


@pytest.mark.parametrize("method", mv.METHODS)
def test_empty_loader_raises_before_anything_is_attached(method):
    """It used to attach the ScoreMasks first and fail inside train(), leaving them behind."""
    model = mlp()
    model[0].eval()  # a frozen layer must stay frozen
    before, params = _state(model), list(model.parameters())
    empty = sk.data.loader(torch.randn(0, 8), torch.zeros(0, dtype=torch.long), batch_size=4)
    with pytest.raises(ValueError, match="train_loader is empty: fine-tuning needs at least one batch"):
        mv.apply_gradual_pruning(model, empty, method=method, steps=10, progress=False, **how(method))
    _assert_as_before(model, before, params)


class _BadLoader:
    """Two good batches, then one the model cannot take: the run fails after pruning began."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn(4, 8, generator=gen), torch.tensor([0, 1, 2, 0])) for _ in range(2)]
        self.batches.append((torch.randn(4, 5), torch.tensor([0, 1, 2, 0])))

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


@pytest.mark.parametrize("method", mv.METHODS)
def test_error_mid_run_leaves_the_model_as_it_was(method):
    model = mlp()
    model.eval()
    before, params = _state(model), list(model.parameters())
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        mv.apply_gradual_pruning(model, _BadLoader(), method=method, steps=10, warmup=0.0, cooldown=0.5,
                                 progress=False, **how(method))
    _assert_as_before(model, before, params)


def test_error_keeps_masks_the_model_already_had():
    model = mlp()
    mask = torch.ones(16, 8, dtype=torch.bool)
    mask[:, 0] = False
    sk.apply_masks(model, {"0.weight": mask})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError):
        mv.apply_gradual_pruning(model, _BadLoader(), method="magnitude", final_sparsity=0.5, steps=10,
                                 warmup=0.0, cooldown=0.5, progress=False)
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(sk.get_masks(model)["0.weight"], mask) and list(sk.get_masks(model)) == ["0.weight"]


@pytest.mark.parametrize("method", mv.METHODS)
def test_optimizer_factory_gets_the_param_groups(method):
    seen = []

    def factory(groups):
        seen.append([(len(g["params"]), g["lr"]) for g in groups])
        return torch.optim.SGD(groups, momentum=0.9)

    model = mlp()
    mv.apply_gradual_pruning(model, toy_loader(), method=method, steps=4, lr=0.01,
                             score_lr=0.5, optimizer=factory, progress=False, **how(method))
    n_own = len(list(mlp().parameters()))
    if method in ("magnitude", "random"):
        assert seen == [[(n_own, 0.01)]]
    else:
        assert seen == [[(n_own, 0.01), (2, 0.5)]]  # the scores of 0.weight and 2.weight


def test_default_optimizer_is_adam_with_the_group_rates():
    a, b = mlp(), mlp()
    ra = mv.apply_gradual_pruning(a, toy_loader(), method="movement", final_sparsity=0.5, steps=6, progress=False)
    rb = mv.apply_gradual_pruning(b, toy_loader(), method="movement", final_sparsity=0.5, steps=6,
                                  optimizer=torch.optim.Adam, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert ra.history.train_loss == rb.history.train_loss


def test_optimizer_factory_is_checked():
    model = mlp()
    before, params = _state(model), list(model.parameters())
    with pytest.raises(TypeError, match="optimizer must be a callable param groups -> torch.optim.Optimizer"):
        mv.apply_gradual_pruning(model, toy_loader(), method="movement", final_sparsity=0.5, steps=4,
                                 optimizer="adam", progress=False)
    with pytest.raises(TypeError, match="optimizer must return a torch.optim.Optimizer, got list"):
        mv.apply_gradual_pruning(model, toy_loader(), method="movement", final_sparsity=0.5, steps=4,
                                 optimizer=lambda groups: groups, progress=False)
    _assert_as_before(model, before, params)


# --- issue 12: ScoreMask.current_mask -------------------------------------------------


def test_current_mask_is_the_mask_applied_and_finalize_uses_it(monkeypatch):
    model = mlp()
    mv.attach_scores(model, ["0.weight"])
    with torch.no_grad():
        mv.score_parameters(model)["0.weight"].copy_(torch.randn(16, 8, generator=torch.Generator().manual_seed(2)))
    mv.update_hard(model, 0.75)
    sm = sk.masking.find_parametrization(model[0], mv.ScoreMask)
    current = sm.current_mask()
    assert current.dtype == torch.bool and int((~current).sum()) == 96
    assert torch.equal(model[0].weight == 0, ~current)  # what the forward pass applies
    current[:] = True
    assert int((~sm.current_mask()).sum()) == 96  # a copy
    calls = []
    original = mv.ScoreMask.current_mask

    def spy(self):
        calls.append(self)
        return original(self)

    monkeypatch.setattr(mv.ScoreMask, "current_mask", spy)
    masks = sk.finalize.freeze_masks(model)
    assert calls == [sm] and int((~masks["0.weight"]).sum()) == 96


def test_schedule_uses_the_library_cubic_schedule(monkeypatch):
    calls = []

    def spy(step, final_sparsity, **kwargs):
        calls.append((step, kwargs["begin_step"], kwargs["end_step"]))
        return sk.cubic_sparsity(step, final_sparsity, **kwargs)

    monkeypatch.setattr(mv, "cubic_sparsity", spy)
    schedule = mv.Schedule(0.9, 100, warmup=0.1, cooldown=0.3)
    assert schedule(40) == sk.cubic_sparsity(40, 0.9, begin_step=10, end_step=70)
    assert calls == [(40, 10, 70)]
