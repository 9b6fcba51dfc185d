"""Tests for sparsekit.unstructured: one-shot, iterative and gradual magnitude pruning."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsekit as sk
from sparsekit import unstructured as un


def tiny_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return x, y, sk.data.loader(x, y, 16, shuffle=True, seed=seed)


def mlp(seed=0):
    torch.manual_seed(seed)
    return sk.models.MLP(8, (16, 16), 2)


TOTAL = 8 * 16 + 16 * 16 + 16 * 2  # prunable weights of mlp()


def assert_exactly_pruned(model, count):
    """Exactly ``count`` mask entries are False, and they are the model's only zeros."""
    masks = sk.get_masks(model)
    assert sum(int((~m).sum()) for m in masks.values()) == count
    assert sk.sparsity(model) == count / TOTAL


def test_prune_layer_scope_gives_exact_per_layer_counts_of_smallest_weights():
    model = mlp()
    before = {k: v.detach().clone() for k, v in sk.prunable_weights(model).items()}
    masks = un.apply_magnitude_pruning(model, 0.5, "layer")
    for name, w in before.items():
        assert int((~masks[name]).sum()) == round(0.5 * w.numel())
        # every pruned |w| <= every kept |w|
        assert w.abs()[~masks[name]].max() <= w.abs()[masks[name]].min()
    assert_exactly_pruned(model, 64 + 128 + 16)  # round(0.5 * numel) in each layer


def test_prune_global_uses_one_threshold():
    model = mlp()
    w = {k: v.detach().abs().clone() for k, v in sk.prunable_weights(model).items()}
    masks = un.apply_magnitude_pruning(model, 0.6, "global", min_keep=0.0)
    pruned = torch.cat([w[k][~m] for k, m in masks.items()])
    kept = torch.cat([w[k][m] for k, m in masks.items()])
    assert pruned.max() <= kept.min()
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.6 * sum(v.numel() for v in w.values()))


def test_min_keep_guard_prevents_layer_collapse():
    model = mlp()
    with torch.no_grad():
        sk.prunable_weights(model)["2.weight"].mul_(1e-3)  # the small layer global pruning empties
    unguarded = sk.select_masks(sk.scores.magnitude(model), 0.9, "global")
    assert unguarded["2.weight"].sum() == 0
    masks = un.apply_magnitude_pruning(model, 0.9, "global")  # default guard
    assert masks["2.weight"].sum() >= math.ceil(un.DEFAULT_MIN_KEEP * 256)
    with pytest.raises(ValueError):
        un.apply_magnitude_pruning(mlp(), 0.995, "global", min_keep=0.01)


def test_prune_with_random_scores_and_repeated_pruning_only_grows():
    model = mlp()
    m1 = un.apply_magnitude_pruning(model, 0.3, scores=sk.scores.random(model, 1))
    m2 = un.apply_magnitude_pruning(model, 0.6)
    for k in m1:
        assert not (m2[k] & ~m1[k]).any()  # nothing revived
    assert_exactly_pruned(model, round(0.6 * TOTAL))
    with pytest.raises(ValueError, match="sparsity can only grow"):
        un.apply_magnitude_pruning(model, 0.2)


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_prune_bad_sparsity(bad):
    with pytest.raises(ValueError, match="sparsity"):
        un.apply_magnitude_pruning(mlp(), bad)


def test_prune_bad_scope():
    with pytest.raises(ValueError, match="scope"):
        un.apply_magnitude_pruning(mlp(), 0.5, "row")


def test_fine_tune_holds_masks_and_requires_them():
    x, y, loader = tiny_data()
    model = mlp()
    masks = un.apply_magnitude_pruning(model, 0.8, "layer")
    un.fine_tune(model, loader, steps=5, lr=1e-2, progress=False)
    for name, w in sk.effective_weights(model).items():
        assert (w[~masks[name]] == 0).all()
    with pytest.raises(ValueError, match="no masks"):
        un.fine_tune(mlp(), loader, steps=1, progress=False)


def test_apply_iterative_pruning_reaches_final_sparsity_geometrically():
    _, _, loader = tiny_data()
    model = mlp()
    reached = un.apply_iterative_pruning(model, loader, 0.875, rounds=3, epochs_per_round=1, progress=False)
    assert reached == pytest.approx([0.5, 0.75, 0.875])
    assert_exactly_pruned(model, round(0.875 * TOTAL))
    with pytest.raises(ValueError, match="rounds"):
        un.apply_iterative_pruning(model, loader, 0.9, rounds=0, epochs_per_round=1)
    with pytest.raises(ValueError, match="epochs_per_round"):
        un.apply_iterative_pruning(model, loader, 0.9, rounds=1, epochs_per_round=0)


def test_gradual_pruning_hook_follows_the_cubic_schedule():
    _, _, loader = tiny_data()
    model = mlp()
    hook = un.GradualPruning(0.8, begin_step=2, end_step=10, every=4)
    sk.train.train(model, loader, steps=12, step_hook=hook, progress=False)
    assert [s for s, _ in hook.schedule] == [2, 6, 10]
    assert [v for _, v in hook.schedule] == pytest.approx([0.0, 0.8 * (1 - 0.5 ** 3), 0.8])
    assert_exactly_pruned(model, round(0.8 * TOTAL))
    assert hook.sparsity_at(0) == 0.0 and hook.sparsity_at(100) == 0.8


def test_gradual_pruning_bad_arguments():
    with pytest.raises(ValueError):
        un.GradualPruning(0.9, begin_step=10, end_step=5)
    with pytest.raises(ValueError, match="every"):
        un.GradualPruning(0.9, begin_step=0, end_step=5, every=0)
    with pytest.raises(ValueError, match="scope"):
        un.GradualPruning(0.9, begin_step=0, end_step=5, scope="block")
    with pytest.raises(ValueError):
        un.GradualPruning(1.5, begin_step=0, end_step=5)


def test_sensitivity_scan_leaves_model_and_prunes_one_layer():
    x, y, _ = tiny_data()
    model = mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    scan = un.sensitivity_scan(model, x, y, [0.0, 0.5, 0.99])
    assert set(scan) == {"0.weight", "2.weight", "4.weight"}
    dense_acc = sk.train.accuracy(model, x, y)
    assert all(accs[0] == dense_acc for accs in scan.values())  # s = 0 is the dense model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not sk.get_masks(model)
    with pytest.raises(ValueError, match="unknown weight names"):
        un.sensitivity_scan(model, x, y, [0.5], names=["fc.weight"])


def test_sensitivity_scan_changes_accuracy_when_a_layer_is_removed():
    # A model whose output depends on one layer: pruning that layer fully (~99 %) breaks it.
    x, y, loader = tiny_data(256)
    model = mlp()
    sk.train.train(model, loader, epochs=20, lr=1e-2, progress=False)
    scan = un.sensitivity_scan(model, x, y, [0.0, 0.99], names=["4.weight"])
    assert scan["4.weight"][0] > 0.9 and scan["4.weight"][1] < scan["4.weight"][0]


@settings(max_examples=15, deadline=None)
@given(st.floats(0.0, 0.95), st.sampled_from(["global", "layer"]), st.integers(0, 3))
def test_property_prune_reaches_sparsity(s, scope, seed):
    model = mlp(seed)
    un.apply_magnitude_pruning(model, s, scope, min_keep=0.0)
    total = sum(w.numel() for w in sk.prunable_weights(model).values())
    zeros = sum(int((~m).sum()) for m in sk.get_masks(model).values())
    if scope == "global":
        assert zeros == round(s * total)
    else:
        assert zeros == sum(round(s * w.numel()) for w in sk.prunable_weights(model).values())


# --- issue 12: one API style, one geometric schedule ----------------------------------


def test_names_follow_the_naming_rule():
    """In-place functions are ``apply_*``; the old ``prune`` / ``iterative_prune`` are gone."""
    for old in ("prune", "iterative_prune"):
        assert not hasattr(un, old), old
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = un.apply_magnitude_pruning(model, 0.5, "layer")
    assert sk.get_masks(model).keys() == masks.keys()  # changed in place
    assert any(not torch.equal(before[k], v) for k, v in sk.prunable_weights(model).items() if k in before)


def test_apply_iterative_pruning_uses_the_library_geometric_schedule(monkeypatch):
    """The per-round sparsities come from select.geometric_schedule (no second copy of the formula)."""
    calls = []

    def spy(final_sparsity, rounds, initial_sparsity=0.0):
        calls.append((final_sparsity, rounds))
        return sk.select.geometric_schedule(final_sparsity, rounds, initial_sparsity)

    monkeypatch.setattr(un, "geometric_schedule", spy)
    _, _, loader = tiny_data()
    model = mlp()
    reached = un.apply_iterative_pruning(model, loader, 0.9, rounds=2, epochs_per_round=1, progress=False)
    assert calls == [(0.9, 2)]
    assert reached == sk.select.geometric_schedule(0.9, 2) and reached[-1] == 0.9
    assert_exactly_pruned(model, round(0.9 * TOTAL))


def test_gradual_pruning_uses_the_library_cubic_schedule(monkeypatch):
    calls = []

    def spy(step, final_sparsity, **kwargs):
        calls.append(step)
        return sk.cubic_sparsity(step, final_sparsity, **kwargs)

    monkeypatch.setattr(un, "cubic_sparsity", spy)
    hook = un.GradualPruning(0.8, begin_step=2, end_step=10, every=4)
    assert hook.sparsity_at(6) == sk.cubic_sparsity(6, 0.8, begin_step=2, end_step=10) and 6 in calls


# --- Han et al. 2015's per-layer threshold: quality parameter x layer weight std -----------------

def _two_layer_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4))
    with torch.no_grad():
        model[2].weight.mul_(0.1)  # a layer of small weights
    return model


def test_std_scaled_scores_divide_by_each_layers_population_std() -> None:
    from sparsekit import unstructured

    model = _two_layer_model()
    got = unstructured.std_scaled_scores(model)
    for name, layer in (("0.weight", model[0]), ("2.weight", model[2])):
        w = layer.weight.detach()
        sigma = float(((w - w.mean()) ** 2).mean().sqrt())  # population std, by hand
        torch.testing.assert_close(got[name], w.abs() / sigma)


def test_han_masks_keep_weights_above_quality_times_std_per_layer() -> None:
    from sparsekit import unstructured

    model = _two_layer_model()
    masks = unstructured.han_masks(model, 0.8)
    for name, layer in (("0.weight", model[0]), ("2.weight", model[2])):
        w = layer.weight.detach()
        assert torch.equal(masks[name], w.abs() > 0.8 * w.std(correction=0))
    # quality 0 keeps every nonzero weight; the model is not changed (pure function)
    assert all(m.all() for m in unstructured.han_masks(model, 0).values())
    assert not sk.get_masks(model)


def test_han_masks_equal_global_selection_on_std_scaled_scores() -> None:
    """One quality parameter q = one global threshold on |w| / sigma: the two routes agree exactly."""
    from sparsekit import unstructured

    model = _two_layer_model()
    scores = unstructured.std_scaled_scores(model)
    flat = torch.cat([s.flatten() for s in scores.values()]).sort().values
    k = 23  # prune the 23 smallest std-scaled scores
    q = float(flat[k - 1])
    by_quality = unstructured.han_masks(model, q)
    by_sparsity = sk.select_masks(scores, k / flat.numel(), "global")
    assert all(torch.equal(by_quality[n], by_sparsity[n]) for n in scores)
    # unlike global magnitude, the small-weight layer is not pruned harder just for being small
    glob = sk.select_masks(sk.scores.magnitude(model), k / flat.numel(), "global")
    assert int((~glob["2.weight"]).sum()) > int((~by_quality["2.weight"]).sum())


def test_han_masks_respect_existing_masks_and_std_of_kept_weights() -> None:
    from sparsekit import unstructured

    model = _two_layer_model()
    mask = torch.ones(5, 6, dtype=torch.bool)
    mask[:, :2] = False
    sk.apply_masks(model, {"0.weight": mask})
    scores = unstructured.std_scaled_scores(model)
    w = model[0].parametrizations.weight.original.detach()
    sigma = float(w[mask].std(correction=0))
    torch.testing.assert_close(scores["0.weight"][mask], w[mask].abs() / sigma)
    assert (scores["0.weight"][~mask] == 0).all()
    masks = unstructured.han_masks(model, 0.5)
    assert not masks["0.weight"][~mask].any()


def test_han_criterion_bad_input() -> None:
    from sparsekit import unstructured

    model = _two_layer_model()
    with pytest.raises(ValueError, match="quality"):
        unstructured.han_masks(model, -0.1)
    with pytest.raises(ValueError, match="quality"):
        unstructured.han_masks(model, float("nan"))
    with pytest.raises(TypeError, match="quality"):
        unstructured.han_masks(model, "1.0")  # type: ignore[arg-type]
    with torch.no_grad():
        model[2].weight.fill_(0.5)  # all equal: sigma = 0
    with pytest.raises(ValueError, match="2.weight.*standard deviation"):
        unstructured.std_scaled_scores(model)
