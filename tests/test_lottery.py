"""Tests for sparsekit.lottery: IMP with rewinding and its controls."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lottery_task import frozen as _frozen
from lottery_task import mlp as _mlp
from lottery_task import splits as _splits

import sparsekit as sk
from sparsekit import lottery

DATA = _splits()


# --- one pruning step ----------------------------------------------------------------


def _remaining(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    return {n: int(m.sum()) for n, m in masks.items()}


@settings(max_examples=25, deadline=None)
@given(rate=st.floats(0.01, 0.9), rounds=st.integers(1, 4), seed=st.integers(0, 1000))
def test_layer_scope_removes_the_stated_fraction_of_what_remained(rate: float, rounds: int, seed: int) -> None:
    torch.manual_seed(seed)
    model = _mlp()
    before = {n: w.numel() for n, w in sk.prunable_weights(model).items()}
    for _ in range(rounds):
        expect = {n: round((rate / 2 if n == "4.weight" else rate) * r) for n, r in before.items()}
        if any(expect[n] >= r for n, r in before.items()):
            with pytest.raises(ValueError, match="layer collapse"):
                lottery.imp_masks(model, rate, scope="layer", layer_rates={"4.weight": rate / 2})
            return
        masks = lottery.imp_masks(model, rate, scope="layer", layer_rates={"4.weight": rate / 2})
        after = _remaining(masks)
        for name, r in before.items():
            assert r - after[name] == expect[name]
        sk.apply_masks(model, masks)
        before = after


@settings(max_examples=25, deadline=None)
@given(rate=st.floats(0.01, 0.9), seed=st.integers(0, 1000))
def test_global_scope_removes_the_stated_fraction_in_total(rate: float, seed: int) -> None:
    torch.manual_seed(seed)
    model = _mlp()
    sk.apply_masks(model, {"2.weight": torch.rand(32, 32) > 0.5})
    weights = sk.prunable_weights(model)
    remaining = sum(_remaining({n: sk.effective_weights(model)[n] != 0 for n in weights}).values())
    masks = lottery.imp_masks(model, rate, scope="global")
    assert remaining - sum(_remaining(masks).values()) == round(rate * remaining)
    # pruned entries stay pruned
    assert not bool((masks["2.weight"] & ~sk.get_masks(model)["2.weight"]).any())


def test_imp_masks_removes_the_smallest_magnitudes() -> None:
    torch.manual_seed(1)
    model = _mlp()
    masks = lottery.imp_masks(model, 0.3, scope="layer")
    for name, w in sk.prunable_weights(model).items():
        a = w.detach().abs()
        assert float(a[~masks[name]].max()) <= float(a[masks[name]].min())
    glob = lottery.imp_masks(model, 0.3, scope="global")
    all_w = {n: w.detach().abs() for n, w in sk.prunable_weights(model).items()}
    pruned_max = max(float(all_w[n][~m].max()) for n, m in glob.items() if (~m).any())
    kept_min = min(float(all_w[n][m].min()) for n, m in glob.items())
    assert pruned_max <= kept_min


def test_global_with_output_rate_prunes_output_on_its_own() -> None:
    torch.manual_seed(2)
    model = _mlp()
    masks = lottery.imp_masks(model, 0.4, scope="global", layer_rates={"4.weight": 0.2})
    assert int((~masks["4.weight"]).sum()) == round(0.2 * 320)
    hidden = ["0.weight", "2.weight"]
    assert sum(int((~masks[n]).sum()) for n in hidden) == round(0.4 * (32 * 40 + 32 * 32))


def test_imp_masks_bad_input() -> None:
    model = _mlp()
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="rate"):
            lottery.imp_masks(model, bad)
    with pytest.raises(TypeError, match="rate"):
        lottery.imp_masks(model, "0.2")
    with pytest.raises(ValueError, match="scope"):
        lottery.imp_masks(model, 0.2, scope="row")
    with pytest.raises(ValueError, match="unknown weight name"):
        lottery.imp_masks(model, 0.2, layer_rates={"9.weight": 0.1})
    with pytest.raises(ValueError, match="layer_rates"):
        lottery.imp_masks(model, 0.2, layer_rates={"4.weight": 1.5})


def test_output_layer() -> None:
    assert lottery.output_layer(_mlp()) == "4.weight"
    assert lottery.output_layer(sk.models.CNN1d()) == "fc.weight"
    with pytest.raises(ValueError, match="no Linear"):
        lottery.output_layer(torch.nn.ReLU())


# --- IMP -----------------------------------------------------------------------------


def test_imp_sparsity_per_round_and_nested_masks() -> None:
    res = lottery.imp(_mlp, DATA, rounds=3, rate=0.2, steps=20, eval_every=5, output_rate=0.1, progress=False)
    assert [r.round for r in res.rounds] == [0, 1, 2, 3]
    assert res.rounds[0].masks == {} and res.rounds[0].sparsity == 0.0
    counts = {"0.weight": 32 * 40, "2.weight": 32 * 32, "4.weight": 320}
    for r in res.rounds[1:]:
        for name, n in counts.items():
            rate = 0.1 if name == "4.weight" else 0.2
            kept = n
            for _ in range(r.round):
                kept -= round(rate * kept)
            assert int(r.masks[name].sum()) == kept
            assert math.isclose(r.layer_sparsity[name], 1 - kept / n)
    for prev, cur in zip(res.rounds[1:], res.rounds[2:]):
        for name in counts:
            assert not bool((cur.masks[name] & ~prev.masks[name]).any())  # pruned stays pruned
    total = sum(counts.values())
    kept_total = sum(int(m.sum()) for m in res.rounds[3].masks.values())
    assert math.isclose(res.remaining[3], kept_total / total)
    assert len(res.test_acc) == 4 and len(res.early_stop_test_acc) == 4
    for r in res.rounds:
        assert r.history.steps == [5, 10, 15, 20] and len(r.test_curve) == 4
        assert r.early_stop_step in r.history.steps
        assert r.early_stop_test_acc == r.test_curve[r.history.steps.index(r.early_stop_step)]


def test_imp_rewinds_to_init_exactly() -> None:
    """With a frozen optimizer, each round's trained state is the rewind state times its mask."""
    res = lottery.imp(_mlp, DATA, rounds=2, steps=5, optimizer_fn=_frozen, progress=False)
    sk.seed_everything(0)
    init = sk.snapshot(_mlp())
    assert all(torch.equal(init[k], v) for k, v in res.rewind_state.items())
    for r in res.rounds[1:]:
        for name, value in r.state.items():
            expect = init[name] * r.masks[name] if name in r.masks else init[name]
            assert torch.equal(value, expect)


def test_imp_rewind_point_is_iteration_k() -> None:
    k = 7
    res = lottery.imp(_mlp, DATA, rounds=1, steps=20, rewind_step=k, eval_every=4, progress=False)
    sk.seed_everything(0)
    model = _mlp()
    loader = sk.data.loader(DATA.x_train, DATA.y_train, 128, shuffle=True, seed=0)
    sk.train.train(model, loader, steps=k, optimizer=lottery.default_optimizer(model), progress=False)
    expect = sk.snapshot(model)
    assert all(torch.equal(expect[n], v) for n, v in res.rewind_state.items())
    assert not torch.equal(res.rewind_state["0.weight"], res.rounds[0].state["0.weight"])
    # the retrained round runs steps - k iterations and reports iterations from init
    assert res.rounds[1].history.steps[-1] == 20 - k
    assert res.rounds[1].early_stop_step > k


def test_imp_is_deterministic_and_seeded() -> None:
    a = lottery.imp(_mlp, DATA, rounds=1, steps=10, seed=3, progress=False)
    b = lottery.imp(_mlp, DATA, rounds=1, steps=10, seed=3, progress=False)
    c = lottery.imp(_mlp, DATA, rounds=1, steps=10, seed=4, progress=False)
    assert a.test_acc == b.test_acc
    assert all(torch.equal(a.rounds[1].masks[n], b.rounds[1].masks[n]) for n in a.rounds[1].masks)
    assert not torch.equal(a.rewind_state["0.weight"], c.rewind_state["0.weight"])


def test_imp_serves_the_cnn() -> None:
    res = lottery.imp(lambda: sk.models.CNN1d(channels=(4, 4, 4)), DATA, rounds=1, steps=4, eval_every=2,
                      scope="global", progress=False)
    assert set(res.rounds[1].masks) == {"conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"}
    assert 0.19 < res.rounds[1].sparsity < 0.21


def test_imp_learns_the_synthetic_task() -> None:
    res = lottery.imp(_mlp, DATA, rounds=1, steps=60, eval_every=20, progress=False)
    assert res.rounds[0].test_acc > 0.3  # chance is about 0.1


def test_imp_bad_input() -> None:
    no_val = _splits(n_val=0)
    with pytest.raises(ValueError, match="validation"):
        lottery.imp(_mlp, no_val, rounds=1, steps=5)
    with pytest.raises(TypeError, match="data"):
        lottery.imp(_mlp, (DATA.x_train, DATA.y_train), rounds=1, steps=5)
    with pytest.raises(TypeError, match="model_fn"):
        lottery.imp(_mlp(), DATA, rounds=1, steps=5)
    with pytest.raises(ValueError, match="rate"):
        lottery.imp(_mlp, DATA, rounds=1, rate=0.0, steps=5)
    with pytest.raises(ValueError, match="rate"):
        lottery.imp(_mlp, DATA, rounds=1, rate=1.0, steps=5)
    with pytest.raises(ValueError, match="rounds"):
        lottery.imp(_mlp, DATA, rounds=-1, steps=5)
    with pytest.raises(TypeError, match="rounds"):
        lottery.imp(_mlp, DATA, rounds=2.0, steps=5)
    with pytest.raises(ValueError, match="rewind_step"):
        lottery.imp(_mlp, DATA, rounds=1, steps=5, rewind_step=5)
    with pytest.raises(ValueError, match="scope"):
        lottery.imp(_mlp, DATA, rounds=1, steps=5, scope="channel")
    with pytest.raises(ValueError, match="output_rate"):
        lottery.imp(_mlp, DATA, rounds=1, steps=5, output_rate=2.0)
    with pytest.raises(TypeError, match="nn.Module"):
        lottery.imp(lambda: "model", DATA, rounds=1, steps=5)
    with pytest.raises(TypeError, match="seed"):
        lottery.imp(_mlp, DATA, rounds=1, steps=5, seed=1.0)


# --- controls and one-shot -----------------------------------------------------------


@pytest.fixture(scope="module")
def frozen_result() -> lottery.IMPResult:
    return lottery.imp(_mlp, DATA, rounds=2, steps=5, optimizer_fn=_frozen, output_rate=0.1, progress=False)


def test_random_reinit_keeps_the_mask_and_changes_the_init(frozen_result: lottery.IMPResult) -> None:
    runs = lottery.random_reinit(frozen_result, progress=False)
    assert [r.round for r in runs] == [1, 2]
    for run, ticket in zip(runs, frozen_result.rounds[1:]):
        for name, mask in ticket.masks.items():
            assert torch.equal(run.masks[name], mask)
            survivors = run.state[name][mask]
            assert not torch.equal(survivors, frozen_result.rewind_state[name][mask])
            assert bool((run.state[name][~mask] == 0).all())


def test_random_mask_keeps_per_layer_sparsity_and_the_init(frozen_result: lottery.IMPResult) -> None:
    runs = lottery.random_mask(frozen_result, progress=False)
    for run, ticket in zip(runs, frozen_result.rounds[1:]):
        assert _remaining(run.masks) == _remaining(ticket.masks)
        assert run.layer_sparsity == ticket.layer_sparsity
        assert any(not torch.equal(run.masks[n], m) for n, m in ticket.masks.items())
        for name, mask in run.masks.items():
            assert torch.equal(run.state[name][mask], frozen_result.rewind_state[name][mask])


def test_one_shot_matches_imp_sparsity_per_layer() -> None:
    res = lottery.imp(_mlp, DATA, rounds=3, steps=10, output_rate=0.1, progress=False)
    shot = lottery.one_shot(res, 3, progress=False)
    for name, s in res.rounds[3].layer_sparsity.items():
        n = res.rounds[3].masks[name].numel()
        assert abs(shot.layer_sparsity[name] - s) * n <= 2  # per-round rounding only
    with pytest.raises(ValueError, match="rounds"):
        lottery.one_shot(res, 0)
    with pytest.raises(TypeError, match="IMPResult"):
        lottery.one_shot("result", 1)


def test_retrain_bad_input(frozen_result: lottery.IMPResult) -> None:
    with pytest.raises(ValueError, match="init"):
        lottery.retrain(frozen_result, frozen_result.rounds[1].masks, init="zeros")
    with pytest.raises(TypeError, match="IMPResult"):
        lottery.retrain({}, {})


def test_imp_masks_refuses_to_empty_a_layer() -> None:
    model = _mlp()
    sk.apply_masks(model, {"2.weight": torch.arange(32 * 32).reshape(32, 32) < 2})
    with pytest.raises(ValueError, match=r"2\.weight.*layer collapse"):
        lottery.imp_masks(model, 0.8, scope="layer")


# --- issue 12: one form for per-round results -----------------------------------------


def test_imp_result_views_are_properties_named_like_the_round_fields(frozen_result: lottery.IMPResult) -> None:
    """``IMPResult.x`` is ``[r.x for r in rounds]`` for the Round fields, all properties (no calls)."""
    rounds = frozen_result.rounds
    for field in ("remaining", "test_acc", "early_stop_test_acc", "early_stop_step"):
        assert isinstance(getattr(type(frozen_result), field), property), field
        assert getattr(frozen_result, field) == [getattr(r, field) for r in rounds], field
    assert frozen_result.remaining[0] == 1.0


def test_one_shot_prunes_to_the_compounded_imp_sparsity(frozen_result: lottery.IMPResult) -> None:
    """One-shot to round 2 prunes each layer as imp_sparsity(rate, 2) says, exactly."""
    run = lottery.one_shot(frozen_result, 2, progress=False)
    for name, mask in run.masks.items():
        rate = sk.imp_sparsity(0.1 if name == "4.weight" else 0.2, 2)
        assert int((~mask).sum()) == round(rate * mask.numel()), name



# --- issue 13: the book's early-stopping readout and the recipe's optimizer ------------


def test_best_step_and_best_test_acc_read_the_highest_validation_accuracy() -> None:
    """Oracle: the first evaluation with the highest val_acc; steps counted from init (offset k)."""
    k = 4
    res = lottery.imp(_mlp, DATA, rounds=1, steps=24, rewind_step=k, eval_every=2, progress=False)
    for run, offset in zip(res.rounds, (0, k)):
        acc = run.history.val_acc
        first_best = acc.index(max(acc))
        assert run.step_offset == offset
        assert run.best_step == offset + run.history.steps[first_best]
        assert run.best_test_acc == run.test_curve[first_best]
    assert res.best_step == [r.best_step for r in res.rounds]
    assert res.best_test_acc == [r.best_test_acc for r in res.rounds]
    for field in ("best_step", "best_test_acc"):
        assert isinstance(getattr(type(res), field), property), field


def test_best_step_takes_the_first_of_tied_maxima() -> None:
    run = lottery.imp(_mlp, DATA, rounds=0, steps=6, eval_every=2, progress=False).rounds[0]
    run.history.val_acc = [0.5, 0.7, 0.7]
    run.test_curve = [0.1, 0.2, 0.3]
    assert run.best_step == 4 and run.best_test_acc == 0.2


def test_recipe_optimizer() -> None:
    model = _mlp()
    adam = lottery.recipe_optimizer(sk.recipes.RECIPES["mlp"])(model)
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["lr"] == sk.recipes.RECIPES["mlp"].lr
    assert len(adam.param_groups[0]["params"]) == len(list(model.parameters()))
    sgd = lottery.recipe_optimizer(sk.recipes.RECIPES["mlp"].but(optimizer="sgd", lr=0.05, weight_decay=1e-4))(model)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["lr"] == 0.05 and sgd.param_groups[0]["weight_decay"] == 1e-4
    adamw = lottery.recipe_optimizer(sk.recipes.RECIPES["mlp"].but(optimizer="adamw", weight_decay=0.01))(model)
    assert isinstance(adamw, torch.optim.AdamW)
    with pytest.raises(TypeError, match="recipe must be a sparsekit.recipes.Recipe, got str"):
        lottery.recipe_optimizer("mlp")


def test_controls_of_chosen_rounds_equal_those_of_all_rounds(frozen_result: lottery.IMPResult) -> None:
    """``rounds=`` repeats exactly the listed rounds, each as the full control would."""
    full_mask, some_mask = lottery.random_mask(frozen_result, progress=False), \
        lottery.random_mask(frozen_result, rounds=[2], progress=False)
    assert [r.round for r in some_mask] == [2]
    assert all(torch.equal(some_mask[0].masks[n], m) for n, m in full_mask[1].masks.items())
    assert all(torch.equal(some_mask[0].state[n], v) for n, v in full_mask[1].state.items())
    some_reinit = lottery.random_reinit(frozen_result, rounds=(2, 1), progress=False)
    full_reinit = lottery.random_reinit(frozen_result, progress=False)
    assert [r.round for r in some_reinit] == [2, 1]
    assert all(torch.equal(some_reinit[0].state[n], v) for n, v in full_reinit[1].state.items())
    for bad in ([0], [3], [1.0]):
        with pytest.raises((ValueError, TypeError), match=r"rounds\[i\]"):
            lottery.random_mask(frozen_result, rounds=bad)
    with pytest.raises(TypeError, match="rounds must be a sequence"):
        lottery.random_reinit(frozen_result, rounds=2)
    with pytest.raises(TypeError, match="IMPResult"):
        lottery.random_mask("result", rounds=[1])
