"""Tests for sparsekit.at_init: at_init_masks, iterative SynFlow, layer collapse helpers."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsekit as sk
from sparsekit import at_init


def _batch(n: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 40, generator=g), torch.randint(0, 10, (n,), generator=g)


def _pruned(masks: dict[str, torch.Tensor]) -> int:
    return sum(int((~m).sum()) for m in masks.values())


def _small_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return sk.models.MLP(40, (32, 32), 10)


# --- schedules --------------------------------------------------------------------------


def test_compression_to_sparsity() -> None:
    assert at_init.compression_to_sparsity(1) == 0.0
    assert at_init.compression_to_sparsity(10) == pytest.approx(0.9)
    assert at_init.compression_to_sparsity(10**3) == pytest.approx(0.999)
    for bad in [0.5, math.inf, math.nan, -2]:
        with pytest.raises(ValueError, match="compression"):
            at_init.compression_to_sparsity(bad)
    with pytest.raises(TypeError, match="compression"):
        at_init.compression_to_sparsity("10")  # type: ignore[arg-type]


def test_one_shot_equals_select_of_the_score() -> None:
    model = _small_mlp()
    x, y = _batch()
    for method, s in [
        ("magnitude", sk.scores.magnitude(model)),
        ("random", sk.scores.random(model, 7)),
        ("snip", sk.scores.snip(model, x, y)),
        ("grasp", sk.scores.grasp(model, x, y)),
        ("synflow", sk.scores.synflow(model, x)),
    ]:
        got = sk.at_init_masks(model, method, 0.8, inputs=x, targets=y, seed=7, rounds=1)
        want = sk.select_masks(s, 0.8)
        assert all(torch.equal(got[k], want[k]) for k in want), method


def test_synflow_defaults_to_100_rounds_and_iterating_changes_the_masks() -> None:
    model = _small_mlp()
    x, _ = _batch()
    default = sk.at_init_masks(model, "synflow", 0.99, inputs=x)
    explicit = sk.at_init_masks(model, "synflow", 0.99, inputs=x, rounds=100)
    one_shot = sk.at_init_masks(model, "synflow", 0.99, inputs=x, rounds=1)
    assert all(torch.equal(default[k], explicit[k]) for k in default)
    assert any(not torch.equal(default[k], one_shot[k]) for k in default)
    assert at_init.DEFAULT_ROUNDS["synflow"] == 100


def test_iterative_synflow_avoids_the_collapse_of_one_shot_synflow() -> None:
    # Tanaka et al. 2020: one-shot SynFlow on an MLP whose layers have different sizes
    # empties a layer at high compression; the iterative version keeps every layer.
    torch.manual_seed(0)
    model = sk.models.MLP(40, (64, 64), 10)
    x, _ = _batch()
    s = at_init.compression_to_sparsity(300)
    assert sk.layer_collapse(sk.at_init_masks(model, "synflow", s, inputs=x, rounds=1))
    assert not sk.layer_collapse(sk.at_init_masks(model, "synflow", s, inputs=x, rounds=100))


# --- at_init_masks ----------------------------------------------------------------------


@pytest.mark.parametrize("method", at_init.METHODS)
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_at_init_masks_exact_count_and_model_untouched(method: str, name: str) -> None:
    torch.manual_seed(0)
    model = sk.models.build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _batch()
    masks = sk.at_init_masks(model, method, 0.9, inputs=x, targets=y, rounds=3 if method == "synflow" else None)
    weights = sk.prunable_weights(model)
    assert list(masks) == list(weights)
    assert all(masks[k].dtype == torch.bool and masks[k].shape == w.shape for k, w in weights.items())
    total = sum(w.numel() for w in weights.values())
    assert _pruned(masks) == round(0.9 * total)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not sk.get_masks(model)


def test_pruning_path_prefixes_equal_shorter_runs_and_are_nested() -> None:
    torch.manual_seed(0)
    model = sk.models.CNN1d(channels=(8, 8, 8))
    x, y = _batch()
    sched = sk.select.geometric_schedule(0.99, 6)
    for method in ["synflow", "snip"]:
        path = at_init.pruning_path(model, method, 0.99, rounds=6, inputs=x, targets=y)
        assert len(path) == 6
        for k in [0, 2, 5]:
            short = sk.at_init_masks(model, method, sched[k], rounds=k + 1, inputs=x, targets=y)
            assert all(torch.equal(short[n], path[k][n]) for n in short), (method, k)
        for a, b in zip(path, path[1:]):
            assert all(bool((b[n] <= a[n]).all()) for n in a)  # pruned entries stay pruned


def test_existing_masks_are_kept_and_counted() -> None:
    model = _small_mlp()
    x, y = _batch()
    old = sk.select_masks(sk.scores.random(model, 3), 0.5)
    sk.apply_masks(model, old)
    total = sum(m.numel() for m in old.values())
    for method in at_init.METHODS:
        new = sk.at_init_masks(model, method, 0.8, inputs=x, targets=y, rounds=2)
        assert _pruned(new) == round(0.8 * total), method
        assert all(bool((new[k] <= old[k]).all()) for k in old), method
    with pytest.raises(ValueError, match="sparsity can only grow"):
        sk.at_init_masks(model, "magnitude", 0.2)


def test_layer_scope() -> None:
    model = _small_mlp()
    masks = sk.at_init_masks(model, "magnitude", 0.75, scope="layer")
    assert all(_pruned({k: m}) == round(0.75 * m.numel()) for k, m in masks.items())


def test_at_init_masks_bad_input() -> None:
    model = _small_mlp()
    x, y = _batch()
    with pytest.raises(ValueError, match="method must be one of"):
        sk.at_init_masks(model, "movement", 0.5)
    with pytest.raises(ValueError, match="sparsity"):
        sk.at_init_masks(model, "magnitude", 1.0)
    with pytest.raises(ValueError, match="rounds"):
        sk.at_init_masks(model, "magnitude", 0.5, rounds=0)
    with pytest.raises(ValueError, match="scope"):
        sk.at_init_masks(model, "magnitude", 0.5, scope="row")
    with pytest.raises(ValueError, match="needs inputs"):
        sk.at_init_masks(model, "snip", 0.5)
    with pytest.raises(ValueError, match="needs targets"):
        sk.at_init_masks(model, "grasp", 0.5, inputs=x)
    with pytest.raises(TypeError, match="model"):
        sk.at_init_masks("mlp", "magnitude", 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method"):
        at_init.score(model, "obd")


# --- layer collapse and per-layer fractions ----------------------------------------------


def test_collapse_helpers_on_hand_masks() -> None:
    masks = {"a": torch.tensor([True, False, False, False]), "b": torch.zeros(2, 3, dtype=torch.bool)}
    assert at_init.remaining_fraction(masks) == {"a": 0.25, "b": 0.0}
    assert at_init.collapsed_layers(masks) == ["b"]
    assert sk.layer_collapse(masks) is True
    masks["b"][1, 2] = True
    assert sk.layer_collapse(masks) is False and at_init.collapsed_layers(masks) == []


def test_collapse_helpers_bad_input() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        sk.layer_collapse({})
    with pytest.raises(TypeError, match="bool"):
        sk.layer_collapse({"a": torch.ones(3)})
    with pytest.raises(ValueError, match="empty"):
        at_init.remaining_fraction({"a": torch.ones(0, dtype=torch.bool)})


def test_critical_compression_by_hand() -> None:
    # Ranks of each layer's best score: a -> 1 (0.9), b -> 3 (0.5 behind 0.9, 0.8).
    s = {"a": torch.tensor([0.9, 0.8, 0.1]), "b": torch.tensor([0.5, 0.2, 0.3])}
    assert at_init.critical_compression(s) == 6 / 3
    with pytest.raises(TypeError, match="float"):
        at_init.critical_compression({"a": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="NaN"):
        at_init.critical_compression({"a": torch.tensor([float("nan")])})


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4), seed=st.integers(0, 10_000))
def test_critical_compression_is_where_global_selection_first_collapses(sizes: list[int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    s = {f"l{i}": torch.rand(n, generator=g) for i, n in enumerate(sizes)}  # no ties
    total = sum(sizes)
    crit = at_init.critical_compression(s)
    keep = round(total / crit)  # the fewest kept entries that leave every layer alive
    assert not sk.layer_collapse(sk.select_masks(s, 1 - keep / total))
    if keep > 1:
        assert sk.layer_collapse(sk.select_masks(s, 1 - (keep - 1) / total))





def test_lazy_top_level_names() -> None:
    assert sk.at_init_masks is at_init.at_init_masks
    assert sk.layer_collapse is at_init.layer_collapse


# --- issue 12: pure and named so; one masks= argument for every criterion --------------


def test_at_init_masks_is_pure_and_the_old_name_is_gone() -> None:
    assert not hasattr(at_init, "prune_at_init") and "prune_at_init" not in sk.__all__
    assert "at_init_masks" in sk.__all__
    model = _small_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sk.at_init_masks(model, "magnitude", 0.5)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("method", at_init.METHODS)
def test_score_passes_masks_to_every_criterion(method: str) -> None:
    """Each criterion scores the model as if ``masks`` were applied: pruned entries score 0.
    (``random`` ignored ``masks`` before.)"""
    model = _small_mlp()
    x, y = _batch()
    masks = sk.select_masks(sk.scores.random(model, 3), 0.5)
    got = at_init.score(model, method, inputs=x, targets=y, seed=7, masks=masks)
    masked = _small_mlp()
    sk.apply_masks(masked, masks)
    ref = at_init.score(masked, method, inputs=x, targets=y, seed=7)
    for name, m in masks.items():
        assert bool((got[name][~m] == 0).all()), name
        assert torch.allclose(got[name], ref[name], rtol=1e-5, atol=1e-9), name


# --- issue 14: the other two sanity checks of Frankle et al. 2021 ---------------------------


def test_inverted_masks_keeps_each_layers_count_and_its_lowest_scores() -> None:
    scores = {"a": torch.tensor([[0.5, -1.0, 3.0], [2.0, 0.0, 1.0]]), "b": torch.tensor([4.0, 1.0, 1.0, -2.0])}
    masks = {"a": torch.tensor([[True, False, True], [True, False, False]]),
             "b": torch.tensor([True, False, False, False])}
    got = at_init.inverted_masks(scores, masks)
    # a keeps 3: its lowest scores are -1.0, 0.0, 0.5; b keeps 1: -2.0.
    assert torch.equal(got["a"], torch.tensor([[True, True, False], [False, True, False]]))
    assert torch.equal(got["b"], torch.tensor([False, False, False, True]))
    # ties go to the lower index; an empty layer stays empty, a full one stays full
    tied = at_init.inverted_masks({"t": torch.ones(5), "e": torch.ones(2), "f": torch.ones(3)},
                                  {"t": torch.tensor([True, True, False, False, False]),
                                   "e": torch.zeros(2, dtype=torch.bool), "f": torch.ones(3, dtype=torch.bool)})
    assert tied["t"].tolist() == [True, True, False, False, False]
    assert tied["e"].tolist() == [False, False] and tied["f"].tolist() == [True, True, True]


def test_inverted_masks_is_select_masks_on_negated_scores_layer_by_layer() -> None:
    model = _small_mlp()
    x, y = _batch()
    s = sk.scores.snip(model, x, y)
    masks = sk.select_masks(s, 0.9)
    got = at_init.inverted_masks(s, masks)
    for name, m in masks.items():
        pruned = int((~m).sum())
        want = sk.select_masks({name: -s[name]}, pruned / m.numel(), scope="layer")[name]
        assert int(got[name].sum()) == int(m.sum()), name
        assert torch.equal(got[name], want), name
        # every kept score is <= every pruned one: the lowest were kept
        assert float(s[name][got[name]].max()) <= float(s[name][~got[name]].min()), name


def test_inverted_masks_bad_input() -> None:
    s = {"a": torch.zeros(4)}
    m = {"a": torch.ones(4, dtype=torch.bool)}
    with pytest.raises(ValueError, match="same keys"):
        at_init.inverted_masks(s, {"b": torch.ones(4, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        at_init.inverted_masks(s, {"a": torch.ones(5, dtype=torch.bool)})
    with pytest.raises(TypeError, match="bool"):
        at_init.inverted_masks(s, {"a": torch.ones(4)})
    with pytest.raises(TypeError, match="float"):
        at_init.inverted_masks({"a": torch.zeros(4, dtype=torch.long)}, m)
    with pytest.raises(ValueError, match="NaN"):
        at_init.inverted_masks({"a": torch.tensor([0.0, math.nan, 0.0, 0.0])}, m)
    with pytest.raises(ValueError, match="non-empty"):
        at_init.inverted_masks({}, m)


def test_reinitialized_default_is_a_fresh_build_under_that_seed_and_leaves_the_model() -> None:
    for name in ["mlp", "cnn"]:
        model = sk.models.build(name)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        new = at_init.reinitialized(model, 5)
        torch.manual_seed(5)
        fresh = sk.models.build(name)
        assert new is not model
        assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in new.state_dict().items()), name
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), name
        other = at_init.reinitialized(model, 6)
        assert not torch.equal(other.state_dict()[next(iter(before))], new.state_dict()[next(iter(before))])


def test_reinitialized_kaiming_normal_draws_he_weights_and_zero_biases() -> None:
    model = sk.models.MLP(40, (400, 400), 10)
    new = at_init.reinitialized(model, 3, "kaiming_normal")
    torch.manual_seed(3)
    for layer in [m for m in new.modules() if isinstance(m, nn.Linear)]:
        want = torch.empty_like(layer.weight).normal_(0.0, math.sqrt(2.0 / layer.in_features))
        assert torch.allclose(layer.weight, want, rtol=1e-6, atol=1e-7)  # the same draws, in module order
        assert bool((layer.bias == 0).all())
    w = new[2].weight.detach()
    assert abs(float(w.std()) - math.sqrt(2 / 400)) < 0.02 * math.sqrt(2 / 400)
    cnn = at_init.reinitialized(sk.models.build("cnn"), 0, "kaiming_normal")
    bn = [m for m in cnn.modules() if isinstance(m, nn.BatchNorm1d)]
    assert bn and all(bool((m.weight == 1).all()) and bool((m.running_var == 1).all()) for m in bn)


def test_reinitialized_bad_input() -> None:
    model = _small_mlp()
    with pytest.raises(ValueError, match="init"):
        at_init.reinitialized(model, 0, "xavier")
    with pytest.raises(TypeError, match="model"):
        at_init.reinitialized("mlp", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        at_init.reinitialized(model, -1)
    with pytest.raises(TypeError, match="seed"):
        at_init.reinitialized(model, 1.5)  # type: ignore[arg-type]
    sk.apply_masks(model, sk.select_masks(sk.scores.magnitude(model), 0.5))
    with pytest.raises(ValueError, match="masks"):
        at_init.reinitialized(model, 0)
