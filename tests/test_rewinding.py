"""Tests for sparsekit.rewinding: snapshot and rewind (Frankle & Carbin 2019; Frankle et al. 2020)."""

from __future__ import annotations

import pytest
import torch

import sparsekit as sk
from sparsekit import rewinding


def _mlp() -> torch.nn.Module:
    return sk.models.MLP(40, (32, 32), 10)


def _loader() -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 40, generator=gen)
    return sk.data.loader(x, (x @ torch.randn(40, 10, generator=gen)).argmax(dim=1), 64, shuffle=True)


def test_snapshot_and_rewind_are_top_level_core_names() -> None:
    assert sk.snapshot is rewinding.snapshot and sk.rewind is rewinding.rewind
    assert "snapshot" in sk.__all__ and "rewind" in sk.__all__
    import sparsekit.rewinding as module  # the module does not shadow the function

    assert module is rewinding and sk.rewind is rewinding.rewind


def test_snapshot_uses_plain_names_and_skips_masks() -> None:
    model = _mlp()
    sk.apply_masks(model, {"0.weight": torch.rand(32, 40) > 0.5})
    snap = sk.snapshot(model)
    assert set(snap) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
    assert torch.equal(snap["0.weight"], sk.effective_weights(model)["0.weight"])


def test_rewind_restores_exactly_the_saved_values_on_surviving_weights() -> None:
    torch.manual_seed(0)
    model = _mlp()
    saved = sk.snapshot(model)
    sk.train.train(model, _loader(), steps=10, lr=1e-2, progress=False)
    masks = {n: torch.rand(w.shape) > 0.3 for n, w in sk.prunable_weights(model).items()}
    sk.apply_masks(model, masks)
    assert not torch.equal(sk.effective_weights(model)["0.weight"], saved["0.weight"] * masks["0.weight"])
    sk.rewind(model, saved)
    eff = sk.effective_weights(model)
    for name, mask in masks.items():
        assert torch.equal(eff[name][mask], saved[name][mask])  # survivors: bit-exact
        assert bool((eff[name][~mask] == 0).all())  # pruned: still exactly zero
        assert torch.equal(sk.prunable_weights(model)[name][~mask], torch.zeros(int((~mask).sum())))
    assert torch.equal(model[0].bias, saved["0.bias"])
    assert sk.get_masks(model)["0.weight"].equal(masks["0.weight"])  # masks untouched


def test_rewind_restores_batchnorm_buffers() -> None:
    model = sk.models.CNN1d(channels=(4, 4, 4))
    saved = sk.snapshot(model)
    model(torch.randn(8, 40))  # train mode: running stats move
    assert not torch.equal(model.bn1.running_mean, saved["bn1.running_mean"])
    sk.rewind(model, saved)
    assert torch.equal(model.bn1.running_mean, saved["bn1.running_mean"])
    assert int(model.bn1.num_batches_tracked) == 0


def test_rewind_bad_input() -> None:
    model = _mlp()
    snap = sk.snapshot(model)
    with pytest.raises(TypeError, match="state"):
        sk.rewind(model, [1, 2])
    with pytest.raises(ValueError, match="missing"):
        sk.rewind(model, {k: v for k, v in snap.items() if k != "0.bias"})
    with pytest.raises(ValueError, match="unexpected"):
        sk.rewind(model, {**snap, "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        sk.rewind(model, {**snap, "0.bias": torch.zeros(3)})
    with pytest.raises(TypeError, match="model"):
        sk.snapshot("not a model")


def test_rewind_is_all_or_nothing() -> None:
    """A bad entry late in ``state`` is found before any value is written (it used to copy the
    entries before it first)."""
    model = _mlp()
    sk.apply_masks(model, {"0.weight": torch.rand(32, 40, generator=torch.Generator().manual_seed(1)) > 0.5})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = {k: v + 1.0 for k, v in sk.snapshot(model).items()}
    bad["4.bias"] = torch.zeros(3)  # the last entry: wrong shape
    with pytest.raises(ValueError, match=r"state\['4.bias'\] has shape \(3,\), the model has \(10,\)"):
        sk.rewind(model, bad)
    bad["4.bias"] = [0.0] * 10
    with pytest.raises(TypeError, match=r"state\['4.bias'\] must be a Tensor, got list"):
        sk.rewind(model, bad)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
