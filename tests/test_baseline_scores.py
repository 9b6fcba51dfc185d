"""Magnitude and random scores (the baselines every method must beat)."""

import pytest
import torch

import sparsekit as sk
from sparsekit.models import MLP, CNN1d


def test_magnitude_is_abs_of_effective_weight():
    model = MLP(40, (8,), 10)
    scores = sk.scores.magnitude(model)
    assert list(scores) == list(sk.prunable_weights(model))
    assert torch.equal(scores["0.weight"], model[0].weight.detach().abs())
    mask = torch.ones(8, 40, dtype=torch.bool)
    mask[0] = False
    sk.apply_masks(model, {"0.weight": mask})
    assert torch.all(sk.scores.magnitude(model)["0.weight"][0] == 0)


def test_magnitude_scores_are_copies():
    model = MLP(40, (8,), 10)
    sk.scores.magnitude(model)["0.weight"].zero_()
    assert model[0].weight.abs().sum() > 0


def test_random_is_seeded_shaped_and_leaves_global_rng():
    model = CNN1d()
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = sk.scores.random(model, seed=1)
    assert torch.equal(torch.rand(1), expected_next)  # global RNG untouched
    b = sk.scores.random(model, seed=1)
    c = sk.scores.random(model, seed=2)
    for name, w in sk.prunable_weights(model).items():
        assert a[name].shape == w.shape and a[name].is_floating_point()
        assert torch.equal(a[name], b[name])
        assert not torch.equal(a[name], c[name])


@pytest.mark.parametrize("seed", [1.5, "0", True, None])
def test_random_bad_seed(seed):
    with pytest.raises(TypeError, match="seed"):
        sk.scores.random(MLP(40, (8,), 10), seed)


def test_scores_do_not_change_model():
    model = CNN1d()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    sk.scores.magnitude(model)
    sk.scores.random(model, 0)
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_random_scores_pruned_entries_zero_and_keeps_the_rest():
    """Like every score, ``random`` scores a pruned entry 0 (it drew a random value before);
    kept entries get the values of the unmasked model."""
    model = MLP(40, (8,), 10)
    dense = sk.scores.random(model, 3)
    mask = torch.ones(8, 40, dtype=torch.bool)
    mask[0] = False
    sk.apply_masks(model, {"0.weight": mask})
    got = sk.scores.random(model, 3)
    assert torch.equal(got["0.weight"][0], torch.zeros(40))
    assert torch.equal(got["0.weight"][1:], dense["0.weight"][1:])
    assert torch.equal(got["2.weight"], dense["2.weight"])


def test_magnitude_and_random_take_masks():
    model = MLP(40, (8,), 10)
    mask = torch.ones(10, 8, dtype=torch.bool)
    mask[:, 3] = False
    for fn in (sk.scores.magnitude, lambda m, **kw: sk.scores.random(m, 0, **kw)):
        out = fn(model, masks={"2.weight": mask})
        assert torch.equal(out["2.weight"][:, 3], torch.zeros(10))
        assert bool((out["2.weight"][mask] > 0).all())
    assert not sk.get_masks(model)  # the model is not masked
