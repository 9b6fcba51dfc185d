"""Masks as parametrizations: the contract of DESIGN section 4 (mask part)."""

import copy
import io

import pytest
import torch
from torch import nn

import sparsekit as sk
from sparsekit.models import MLP, CNN1d


def _half_masks(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=gen) > 0.5 for n, p in sk.prunable_weights(model).items()}


def test_prunable_weights_names_order_and_identity():
    model = MLP(40, (16, 8), 10)
    weights = sk.prunable_weights(model)
    assert list(weights) == ["0.weight", "2.weight", "4.weight"]
    assert weights["0.weight"] is model[0].weight
    cnn = CNN1d()
    assert list(sk.prunable_weights(cnn)) == ["conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"]


def test_prunable_weights_same_names_after_masking_and_reports_original():
    model = MLP(40, (16, 8), 10)
    sk.apply_masks(model, _half_masks(model))
    weights = sk.prunable_weights(model)
    assert list(weights) == ["0.weight", "2.weight", "4.weight"]
    assert weights["0.weight"] is model[0].parametrizations.weight.original
    assert isinstance(weights["0.weight"], nn.Parameter)


def test_prunable_weights_rejects_non_module():
    with pytest.raises(TypeError, match="nn.Module"):
        sk.prunable_weights(torch.zeros(3))


def test_apply_masks_zeroes_exactly_and_intersects():
    model = MLP(40, (16, 8), 10)
    first, second = _half_masks(model, 0), _half_masks(model, 1)
    sk.apply_masks(model, first)
    for name, w in sk.effective_weights(model).items():
        assert torch.all(w[~first[name]] == 0)
    sk.apply_masks(model, second)
    got = sk.get_masks(model)
    for name in first:
        assert torch.equal(got[name], first[name] & second[name])
        assert torch.all(sk.effective_weights(model)[name][~got[name]] == 0)


def test_get_masks_returns_copies():
    model = MLP(40, (16,), 10)
    sk.apply_masks(model, _half_masks(model))
    masks = sk.get_masks(model)
    masks["0.weight"].fill_(True)
    assert not sk.get_masks(model)["0.weight"].all()


def test_unmasked_model_has_no_masks():
    assert sk.get_masks(MLP(40, (16,), 10)) == {}


@pytest.mark.parametrize("bad, exc, match", [
    ({"nope.weight": torch.ones(16, 40, dtype=torch.bool)}, ValueError, "unknown weight name"),
    ({"0.weight": torch.ones(40, 16, dtype=torch.bool)}, ValueError, "shape"),
    ({"0.weight": torch.ones(16, 40)}, TypeError, "torch.bool"),
    ({"0.weight": [[True]]}, TypeError, "Tensor"),
])
def test_apply_masks_bad_input(bad, exc, match):
    model = MLP(40, (16,), 10)
    with pytest.raises(exc, match=match):
        sk.apply_masks(model, bad)
    assert sk.get_masks(model) == {}  # nothing half-applied


def test_apply_masks_rejects_non_mapping():
    with pytest.raises(TypeError, match="mapping"):
        sk.apply_masks(MLP(40, (16,), 10), [torch.ones(16, 40, dtype=torch.bool)])


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-1),
    lambda ps: torch.optim.Adam(ps, lr=1e-2),
], ids=["sgd-momentum-wd", "adamw", "adam"])
def test_masked_weights_stay_exactly_zero_through_optimizers(make_opt):
    torch.manual_seed(0)
    model = MLP(40, (32, 32), 10)
    masks = _half_masks(model)
    # Train first without masks so momentum / Adam moments are non-zero everywhere.
    opt = make_opt(model.parameters())
    x, y = torch.randn(64, 40), torch.randint(0, 10, (64,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    sk.apply_masks(model, masks)
    opt = make_opt(model.parameters())
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for name, w in sk.effective_weights(model).items():
        assert torch.all(w[~masks[name]] == 0), name
        assert torch.any(w[masks[name]] != 0), name


def test_without_masks_zeroed_weights_grow_back():
    """The classic bug that parametrized masks prevent (the test can fail: it checks the bug exists)."""
    torch.manual_seed(0)
    model = MLP(40, (32,), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x, y = torch.randn(64, 40), torch.randint(0, 10, (64,))
    with torch.no_grad():
        model[0].weight[:, :20] = 0
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert (model[0].weight[:, :20] != 0).any()


def test_remove_masks_bakes_zeros_into_plain_parameters():
    model = MLP(40, (16,), 10)
    masks = _half_masks(model)
    sk.apply_masks(model, masks)
    before = {n: w.clone() for n, w in sk.effective_weights(model).items()}
    sk.remove_masks(model)
    assert type(model[0]) is nn.Linear
    assert sk.get_masks(model) == {}
    for name, w in sk.prunable_weights(model).items():
        assert isinstance(w, nn.Parameter)
        assert torch.equal(w.detach(), before[name])
    assert "0.weight" in dict(model.named_parameters())


def test_remove_masks_on_deepcopy_leaves_original_working():
    model = MLP(40, (16,), 10)
    masks = _half_masks(model)
    sk.apply_masks(model, masks)
    clone = copy.deepcopy(model)
    sk.remove_masks(clone)
    x = torch.randn(4, 40)
    assert torch.equal(model(x), clone(x))  # original still computes, masked
    assert torch.equal(sk.get_masks(model)["0.weight"], masks["0.weight"])
    sk.remove_masks(model)
    assert type(model[0]) is nn.Linear


def test_sparsity_tensor_and_module():
    assert sk.sparsity(torch.tensor([0.0, 1.0, 0.0, 2.0])) == 0.5
    model = MLP(40, (16,), 10)
    assert sk.sparsity(model) == 0.0
    masks = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in sk.prunable_weights(model).items()}
    masks["0.weight"][:, :10] = True
    sk.apply_masks(model, masks)
    total = sum(p.numel() for p in sk.prunable_weights(model).values())
    assert sk.sparsity(model) == pytest.approx(1 - 16 * 10 / total)


@pytest.mark.parametrize("bad, exc", [(torch.zeros(0), ValueError), (nn.ReLU(), ValueError), ([1, 2], TypeError)])
def test_sparsity_bad_input(bad, exc):
    with pytest.raises(exc):
        sk.sparsity(bad)


def test_mask_is_bool_buffer_in_state_dict_and_roundtrips(tmp_path):
    torch.manual_seed(0)
    model = CNN1d()
    masks = _half_masks(model)
    sk.apply_masks(model, masks)
    state = model.state_dict()
    assert state["conv1.parametrizations.weight.0.mask"].dtype == torch.bool
    path = tmp_path / "pruned.pt"
    torch.save(state, path)

    loaded_state = torch.load(path, weights_only=True)
    fresh = CNN1d()
    sk.apply_masks(fresh, {n: torch.ones_like(m) for n, m in masks.items()})
    fresh.load_state_dict(loaded_state)
    model.eval(), fresh.eval()
    x = torch.randn(8, 40)
    assert torch.equal(model(x), fresh(x))
    for name, mask in sk.get_masks(fresh).items():
        assert torch.equal(mask, masks[name])


def test_load_masked_state_dict_into_plain_model():
    torch.manual_seed(0)
    model = MLP(40, (16,), 10)
    masks = _half_masks(model)
    sk.apply_masks(model, masks)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = MLP(40, (16,), 10)
    with pytest.raises(RuntimeError):  # the pitfall: a plain load cannot take masked keys
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
    buffer.seek(0)
    sk.load_masked_state_dict(fresh, torch.load(buffer, weights_only=True))
    x = torch.randn(4, 40)
    assert torch.equal(model(x), fresh(x))
    assert all(torch.equal(sk.get_masks(fresh)[n], masks[n]) for n in masks)


def test_masks_follow_device_and_dtype_moves():
    model = MLP(40, (16,), 10)
    sk.apply_masks(model, _half_masks(model))
    model.double()
    assert sk.get_masks(model)["0.weight"].dtype == torch.bool
    assert model(torch.randn(2, 40, dtype=torch.float64)).dtype == torch.float64
