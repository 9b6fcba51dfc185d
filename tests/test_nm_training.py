"""Tests for sparsekit.nm_training: STE / SR-STE training of N:M masks, mask flips."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sparsekit as sk
from sparsekit import nm_training

# ---------------------------------------------------------------- STE / SR-STE


def test_srste_backward_adds_decay_on_pruned():
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5]], requires_grad=True)
    mask = sk.nm_mask(w)
    out = nm_training._SRSTEFunction.apply(w, mask, 0.1)
    assert out.tolist() == [[0.0, -2.0, 3.0, 0.0]]
    out.sum().backward()
    assert torch.allclose(w.grad, torch.tensor([[1.0 + 0.1, 1.0, 1.0, 1.0 + 0.05]]))


def test_apply_ste_trains_with_dynamic_masks_and_counts_flips():
    sk.seed_everything(0)
    model = sk.models.MLP(8, (16,), 3)
    names = nm_training.apply_ste(model, lam=0.0)
    assert names == ["0.weight", "2.weight"]  # 8 and 16 inputs: both are multiples of 4
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    counter = nm_training.FlipCounter(every=1).start(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(1, 11):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        # STE: pruned (masked) dense weights receive gradient too
        p = model[0].parametrizations.weight
        assert (p.original.grad[~p[0].mask] != 0).any()
        opt.step()
        counter(step, model)
    assert len(counter.flips) == 10 and sum(counter.flips) > 0
    assert all(sk.is_nm(w) for w in sk.effective_weights(model).values())
    before = copy.deepcopy(model)
    masks = sk.finalize.freeze_masks(model)
    assert not any(nm_training._ste_of(m) for m in model.modules())
    assert sk.get_masks(model).keys() == masks.keys()
    assert torch.allclose(model(x), before(x))
    # the deep copy keeps working after the original was finalized
    assert nm_training._ste_of(before[0]) is not None and before(x).shape == (64, 3)


def test_srste_reduces_pruned_weight_magnitude():
    def pruned_norm(lam: float) -> float:
        sk.seed_everything(1)
        model = sk.models.MLP(8, (16,), 3)
        nm_training.apply_ste(model, lam=lam)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        for _ in range(20):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        p = model[0].parametrizations.weight
        w = p.original.detach()
        return float((w * ~p[0].current_mask()).abs().sum())

    assert pruned_norm(0.5) < 0.8 * pruned_norm(0.0)


def test_ste_bad_input():
    with pytest.raises(ValueError, match="lam"):
        nm_training.NMSTE((4, 4), lam=-1.0)
    model = sk.models.MLP(8, (8,), 4)
    nm_training.apply_ste(model)
    with pytest.raises(ValueError, match="already"):
        nm_training.apply_ste(model)
    with pytest.raises(ValueError, match="different keys"):
        nm_training.mask_flips({"a": torch.ones(2, dtype=torch.bool)}, {})
    with pytest.raises(ValueError, match="every"):
        nm_training.FlipCounter(0)


def test_mask_flips_counts_differences():
    a = {"w": torch.tensor([True, False, True])}
    b = {"w": torch.tensor([False, False, True])}
    assert nm_training.mask_flips(a, b) == 1 and nm_training.mask_flips(a, a) == 0


# ---------------------------------------------------------------- NMSTE.current_mask (issue 12)


def _ste_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = sk.models.MLP(8, (8,), 4)
    nm_training.apply_ste(model)
    return model


def test_current_mask_is_the_mask_of_the_weight_as_it_is_now():
    model = _ste_mlp()
    ste = nm_training._ste_of(model[0])
    original = model[0].parametrizations.weight.original
    assert torch.equal(ste.current_mask(), sk.nm_mask(original.detach()))
    model(torch.randn(2, 8))  # the buffer now holds this forward pass's mask
    last = ste.mask.clone()
    with torch.no_grad():
        original[:, 0] = 100.0  # an optimizer step moves the weight: column 0 now wins every group
    now = ste.current_mask()
    assert torch.equal(now, sk.nm_mask(original.detach()))
    assert now[:, 0].all() and not torch.equal(now, last) and torch.equal(ste.mask, last)
    assert now.dtype == torch.bool and now.data_ptr() != ste.mask.data_ptr()


def test_current_mask_sees_the_weight_through_an_earlier_mask():
    torch.manual_seed(0)
    model = sk.models.MLP(8, (8,), 4)
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[:, 0] = False
    sk.apply_masks(model, {"0.weight": keep})
    nm_training.apply_ste(model)
    with torch.no_grad():
        model[0].parametrizations.weight.original[:, 0] = 100.0  # held at 0 by the mask
    mask = nm_training._ste_of(model[0]).current_mask()
    assert not mask[:, 0].any()
    assert torch.equal(mask, sk.nm_mask(model[0].weight.detach()))


def test_current_mask_of_a_deep_copy_reads_the_copy():
    model = _ste_mlp()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin[0].parametrizations.weight.original[:, 1] = 100.0
    assert nm_training._ste_of(twin[0]).current_mask()[:, 1].all()
    assert torch.equal(nm_training._ste_of(model[0]).current_mask(),
                       sk.nm_mask(model[0].parametrizations.weight.original.detach()))


def test_current_mask_of_an_unregistered_ste_is_a_named_error():
    with pytest.raises(ValueError, match="not registered on a layer by nm_training.apply_ste"):
        nm_training.NMSTE((4, 4)).current_mask()


def test_ste_masks_and_finalize_use_current_mask():
    model = _ste_mlp()
    model(torch.randn(2, 8))
    with torch.no_grad():
        model[0].parametrizations.weight.original[:, 0] = 100.0  # after the last forward pass
    expected = {k: sk.nm_mask(w.detach()) for k, w in sk.prunable_weights(model).items()}
    masks = nm_training.ste_masks(model)
    assert masks.keys() == expected.keys() and all(torch.equal(masks[k], expected[k]) for k in masks)
    final = sk.finalize.freeze_masks(model)
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    assert all(torch.equal(sk.get_masks(model)[k], expected[k]) for k in expected)


def test_freeze_masks_keeps_a_mask_the_weight_already_had():
    torch.manual_seed(0)
    model = sk.models.MLP(8, (8,), 4)
    keep = torch.zeros(8, 8, dtype=torch.bool)
    keep[:, 0] = True  # one survivor per first group: the N:M mask alone would keep a second entry
    keep[:, 4:] = True
    sk.apply_masks(model, {"0.weight": keep})
    nm_training.apply_ste(model)
    ste = nm_training.ste_masks(model)["0.weight"]
    assert (ste & ~keep).any()  # the STE keeps an entry that the earlier mask pruned
    final = sk.finalize.freeze_masks(model)
    assert torch.equal(final["0.weight"], ste & keep)
    assert torch.equal(sk.get_masks(model)["0.weight"], ste & keep)
    assert torch.equal(sk.get_masks(model)["2.weight"], final["2.weight"])  # no earlier mask: the STE's
