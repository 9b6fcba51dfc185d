"""sparsekit.recipes: the early-stopping fit and the recipe table."""

from __future__ import annotations

import pytest
import torch

import sparsekit as sk
from sparsekit import recipes
from sparsekit.recipes import Recipe, fit


@pytest.fixture(scope="module")
def splits():
    return sk.data.digits(val_size=200)


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return sk.models.MLP(64, (32,), 10)


def test_fit_restores_the_best_epoch_and_stops_after_patience(splits):
    model = _mlp()
    result = fit(model, splits, Recipe("mlp", lr=3e-2, max_epochs=60, patience=3, monitor="val_loss"), seed=0,
                 progress=False)
    h = result.history
    assert len(h.val_loss) == result.epochs_run == len(h.steps)
    best = min(range(len(h.val_loss)), key=h.val_loss.__getitem__)
    assert result.best_epoch == best + 1
    # stopped because `patience` epochs passed without a new best (or ran out of epochs)
    assert result.epochs_run == 60 or result.epochs_run - result.best_epoch == 3
    # the model holds the best epoch's weights: its validation loss is the recorded minimum
    val_loss, _ = sk.train.evaluate(model, sk.data.loader(splits.x_val, splits.y_val, 1000))
    assert val_loss == pytest.approx(h.val_loss[best], rel=1e-6)
    assert result.best_step == h.steps[best] == (best + 1) * -(-len(splits.y_train) // 128)


def test_fit_on_validation_accuracy_keeps_the_first_best_epoch(splits):
    model = _mlp()
    result = fit(model, splits, Recipe("mlp", lr=1e-2, max_epochs=40, patience=5), seed=0, progress=False)
    acc = result.history.val_acc
    assert result.best_epoch == acc.index(max(acc)) + 1  # the first epoch reaching the maximum
    assert result.epochs_run == 40 or result.epochs_run - result.best_epoch == 5
    _, val_acc = sk.train.evaluate(model, sk.data.loader(splits.x_val, splits.y_val, 1000))
    assert val_acc == max(acc)


def test_fit_drops_the_learning_rate_on_each_plateau_before_it_stops(splits):
    no_drop = Recipe("mlp", lr=3e-2, max_epochs=200, patience=3)
    plain = fit(_mlp(), splits, no_drop, seed=0, progress=False)
    model = _mlp()
    dropped = fit(model, splits, no_drop.but(lr_drops=2, lr_drop_factor=0.2), seed=0, progress=False)
    assert plain.drop_epochs == [] and len(dropped.drop_epochs) == 2
    first = dropped.drop_epochs[0]
    # until the first plateau the two runs are the same run; the plain one stops where the other drops
    assert first == plain.epochs_run
    assert dropped.history.val_acc[:first] == plain.history.val_acc
    # after a drop, patience counts afresh; the last plateau stops training
    second = dropped.drop_epochs[1]
    before_second = dropped.history.val_acc[:second]
    best_before_second = before_second.index(max(before_second)) + 1
    assert second - max(first, best_before_second) == 3
    assert dropped.epochs_run - max(dropped.best_epoch, dropped.drop_epochs[1]) == 3
    # training continued from the best weights at a lower rate, and the best epoch is restored at the end
    assert max(dropped.history.val_acc) >= max(plain.history.val_acc)
    _, val_acc = sk.train.evaluate(model, sk.data.loader(splits.x_val, splits.y_val, 1000))
    assert val_acc == max(dropped.history.val_acc) == dropped.history.val_acc[dropped.best_epoch - 1]


def test_the_epoch_after_a_drop_starts_from_the_best_weights_at_the_lower_rate(splits, monkeypatch):
    recipe = Recipe("mlp", lr=3e-2, max_epochs=200, patience=3, lr_drops=1, lr_drop_factor=0.1)
    best_model = _mlp()
    plain = fit(best_model, splits, recipe.but(lr_drops=0), seed=0, progress=False)
    seen: list[tuple[float, dict[str, torch.Tensor]]] = []  # (lr, weights) at the start of every epoch
    train_one_epoch = recipes.train_steps

    def spy(model, loader, *, epochs, optimizer, progress):
        seen.append((optimizer.param_groups[0]["lr"], {k: v.clone() for k, v in model.state_dict().items()}))
        return train_one_epoch(model, loader, epochs=epochs, optimizer=optimizer, progress=progress)

    monkeypatch.setattr(recipes, "train_steps", spy)
    dropped = fit(_mlp(), splits, recipe, seed=0, progress=False)
    drop = dropped.drop_epochs[0]
    assert drop == plain.epochs_run
    assert [lr for lr, _ in seen[:drop]] == [3e-2] * drop
    assert all(lr == pytest.approx(3e-3) for lr, _ in seen[drop:])
    # epoch drop + 1 starts from the weights of the best epoch so far, which the plain run restored
    start = seen[drop][1]
    assert all(torch.equal(start[k], v) for k, v in best_model.state_dict().items())


def test_fit_is_deterministic_for_a_seed_and_differs_across_seeds(splits):
    recipe = Recipe("mlp", lr=1e-2, max_epochs=5, patience=5)
    a, b, c = _mlp(), _mlp(), _mlp()
    fit(a, splits, recipe, seed=1, progress=False)
    fit(b, splits, recipe, seed=1, progress=False)
    fit(c, splits, recipe, seed=2, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_fit_keeps_masks_in_force(splits):
    model = _mlp()
    mask = torch.rand(32, 64, generator=torch.Generator().manual_seed(0)) > 0.5
    sk.apply_masks(model, {"0.weight": mask})
    fit(model, splits, Recipe("mlp", lr=1e-2, max_epochs=3, patience=3), seed=0, progress=False)
    assert torch.all(sk.effective_weights(model)["0.weight"][~mask] == 0)


def test_train_baseline_builds_the_seeded_model(splits, monkeypatch):
    short = recipes.RECIPES["mlp"].but(max_epochs=4)
    monkeypatch.setitem(recipes.RECIPES, "mlp", short)
    a, fa = recipes.train_baseline("mlp", splits, 3, progress=False, in_features=64, hidden=(16,))
    torch.manual_seed(3)
    fresh = sk.models.MLP(64, (16,), 10)
    b = fit(fresh, splits, short, seed=3, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), fresh.parameters()))
    assert fa.best_epoch == b.best_epoch


def test_final_lr_is_the_rate_after_every_drop():
    assert Recipe("mlp", lr=1e-2).final_lr == 1e-2
    assert Recipe("mlp", lr=1e-2, lr_drops=2, lr_drop_factor=0.5).final_lr == pytest.approx(2.5e-3)


def test_but_changes_only_the_named_fields():
    r = recipes.RECIPES["mlp"]
    s = r.but(lr=1e-4)
    assert s.lr == 1e-4 and s.patience == r.patience and s.model == r.model and r.lr != 1e-4


@pytest.mark.parametrize("kwargs, error", [
    ({"model": "resnet"}, ValueError), ({"optimizer": "rmsprop"}, ValueError), ({"lr": 0.0}, ValueError),
    ({"lr": "big"}, TypeError), ({"batch_size": 0}, ValueError), ({"patience": 0}, ValueError),
    ({"max_epochs": 1.5}, TypeError), ({"monitor": "train_loss"}, ValueError),
    ({"weight_decay": -1.0}, ValueError), ({"min_delta": float("nan")}, ValueError),
    ({"lr_drops": -1}, ValueError), ({"lr_drops": 1.5}, TypeError), ({"lr_drops": True}, TypeError),
    ({"lr_drop_factor": 0.0}, ValueError), ({"lr_drop_factor": 1.0}, ValueError),
])
def test_recipe_refuses_bad_fields(kwargs, error):
    with pytest.raises(error):
        Recipe(**{"model": "mlp", **kwargs})


def test_fit_and_train_baseline_refuse_bad_input(splits):
    no_val = sk.data.digits()
    with pytest.raises(ValueError, match="validation"):
        fit(_mlp(), no_val, recipes.RECIPES["mlp"], progress=False)
    with pytest.raises(TypeError, match="recipe"):
        fit(_mlp(), splits, {"lr": 1e-3}, progress=False)
    with pytest.raises(TypeError, match="model"):
        fit("mlp", splits, recipes.RECIPES["mlp"], progress=False)
    with pytest.raises(ValueError, match="no recipe"):
        recipes.train_baseline("resnet", splits, 0)
