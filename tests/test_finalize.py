"""finalize.freeze_masks: learned masks (movement scores, N:M STE) become fixed WeightMasks."""

import pytest
import torch
from torch import nn

import sparsekit as sk
from sparsekit import finalize
from sparsekit import movement as mv


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return sk.models.MLP(8, (16,), 4)


def test_freeze_masks_keeps_what_the_scores_apply_and_drops_the_scores() -> None:
    model = _mlp()
    mv.attach_scores(model)
    for p in mv.score_parameters(model).values():
        p.data.normal_()
    mv.update_hard(model, 0.5)
    x = torch.randn(5, 8)
    before_out = model(x)
    expected = finalize.learned_masks(model)
    masks = finalize.freeze_masks(model)
    assert masks.keys() == expected.keys() and all(torch.equal(masks[k], expected[k]) for k in masks)
    assert all(torch.equal(sk.get_masks(model)[k], masks[k]) for k in masks)
    assert not any("score" in k for k in model.state_dict())
    assert torch.equal(model(x), before_out)
    assert not finalize.learned_masks(model)


def test_freeze_masks_intersects_with_fixed_masks_held_before() -> None:
    model = _mlp()
    fixed = sk.select_masks(sk.scores.magnitude(model), 0.7, scope="layer")
    sk.apply_masks(model, fixed)
    names = sk.nm_training.apply_ste(model)
    learned = sk.nm_training.ste_masks(model)
    masks = finalize.freeze_masks(model)
    assert sorted(masks) == sorted(names)
    for k in masks:
        assert torch.equal(masks[k], learned[k] & fixed[k])
        assert torch.equal(sk.get_masks(model)[k], learned[k] & fixed[k])
    assert not finalize.learned_masks(model)


def test_freeze_masks_on_nm_straight_through_masks() -> None:
    model = _mlp()
    names = sk.nm_training.apply_ste(model)
    masks = finalize.freeze_masks(model)
    assert sorted(masks) == sorted(names)
    assert all(sk.is_nm(sk.effective_weights(model)[k]) for k in masks)


def test_freeze_masks_without_learned_masks_is_a_named_error() -> None:
    model = _mlp()
    sk.apply_masks(model, sk.select_masks(sk.scores.magnitude(model), 0.5))
    with pytest.raises(ValueError, match="no learned mask to freeze"):
        finalize.freeze_masks(model)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        finalize.freeze_masks("model")  # type: ignore[arg-type]
