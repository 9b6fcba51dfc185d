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
    # the stored original stays zero too (fresh optimizer: no momentum from before), so
    # remove_masks bakes in exactly these zeros
    for name, w in sk.prunable_weights(model).items():
        assert torch.all(w.detach()[~masks[name]] == 0), name


def test_optimizer_created_before_apply_masks_keeps_its_momentum():
    torch.manual_seed(0)
    model = MLP(40, (32,), 10)
    lr, momentum = 0.1, 0.9
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    x, y = torch.randn(64, 40), torch.randint(0, 10, (64,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    params = {n: p for n, p in sk.prunable_weights(model).items()}
    values = {n: p.detach().clone() for n, p in params.items()}
    buffers = {n: opt.state[p]["momentum_buffer"].clone() for n, p in params.items()}
    masks = _half_masks(model)
    sk.apply_masks(model, masks)
    after = sk.prunable_weights(model)
    for name, p in after.items():
        assert p is params[name]  # the stored original is the very parameter the optimizer holds
        assert torch.equal(p.detach()[masks[name]], values[name][masks[name]])  # kept: untouched
        assert torch.all(p.detach()[~masks[name]] == 0)  # pruned: zeroed in the stored original
        assert torch.equal(opt.state[p]["momentum_buffer"], buffers[name])  # momentum survives
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    for name, p in after.items():
        expected = momentum * buffers[name] + p.grad
        assert torch.equal(opt.state[p]["momentum_buffer"], expected)  # not restarted from zero
        assert torch.all(p.grad[~masks[name]] == 0)
        assert torch.all(sk.effective_weights(model)[name][~masks[name]] == 0)


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
    masks = _half_masks(model)
    sk.apply_masks(model, masks)
    model.double()
    assert sk.get_masks(model)["0.weight"].dtype == torch.bool
    assert model(torch.randn(2, 40, dtype=torch.float64)).dtype == torch.float64
    for name, w in sk.effective_weights(model).items():
        assert w.dtype == torch.float64
        assert torch.equal(sk.get_masks(model)[name], masks[name])
        assert torch.all(w[~masks[name]] == 0) and torch.all(w[masks[name]] != 0)
        assert torch.all(sk.prunable_weights(model)[name].detach()[~masks[name]] == 0)  # stored original
    target = "cuda" if torch.cuda.is_available() else "meta"  # meta: a device move with no values
    model.to(target)
    for name, mask in sk.get_masks(model).items():
        assert mask.device.type == target and mask.dtype == torch.bool
        assert sk.prunable_weights(model)[name].device.type == target
    if target == "cuda":
        for name, w in sk.effective_weights(model).items():
            assert torch.all(w[~masks[name].cuda()] == 0)


# --- several parametrizations on one weight; all-or-nothing; named errors (issue 12) ------


def _ste_and_mask(order: str) -> nn.Module:
    """An MLP whose weights carry an nm_training.NMSTE *and* a mask (in the given order)."""
    torch.manual_seed(0)
    model = MLP(8, (8,), 4)
    masks = _half_masks(model, 3)
    if order == "ste-first":
        sk.nm_training.apply_ste(model)
        sk.apply_masks(model, masks)
    else:
        sk.apply_masks(model, masks)
        sk.nm_training.apply_ste(model)
    return model


@pytest.mark.parametrize("order", ["ste-first", "mask-first"])
def test_find_parametrization_by_type_not_position(order):
    from sparsekit.masking import WeightMask, find_parametrization
    model = _ste_and_mask(order)
    layer = model[0]
    assert len(layer.parametrizations.weight) == 2
    assert isinstance(find_parametrization(layer, WeightMask), WeightMask)
    assert isinstance(find_parametrization(layer, sk.nm_training.NMSTE), sk.nm_training.NMSTE)
    assert find_parametrization(nn.Linear(2, 2), WeightMask) is None
    assert set(sk.get_masks(model)) == {"0.weight", "2.weight"}


@pytest.mark.parametrize("order", ["ste-first", "mask-first"])
def test_load_masked_state_dict_with_two_parametrizations(order):
    model = _ste_and_mask(order)
    state = model.state_dict()
    plain = MLP(8, (8,), 4)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    with pytest.raises(ValueError, match=r"0\.parametrizations\.weight\.[01] holds \['flips', 'mask'\].*apply_ste"):
        sk.load_masked_state_dict(plain, state)  # the STE must be registered first: a named error
    assert sk.get_masks(plain) == {} and type(plain[0]) is nn.Linear
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in before.items())
    fresh = MLP(8, (8,), 4)
    if order == "ste-first":
        sk.nm_training.apply_ste(fresh)  # the STE cannot be re-created from a state dict; the mask can
        sk.load_masked_state_dict(fresh, state)
    else:
        with pytest.raises(ValueError, match=r"0\.parametrizations\.weight\.1 holds \['flips', 'mask'\]"):
            sk.load_masked_state_dict(fresh, state)
        assert not sk.get_masks(fresh)  # untouched
        sk.apply_masks(fresh, {n: torch.ones_like(m) for n, m in sk.get_masks(model).items()})
        sk.nm_training.apply_ste(fresh)
        sk.load_masked_state_dict(fresh, state)
    x = torch.randn(5, 8)
    assert torch.equal(model(x), fresh(x))
    for name, mask in sk.get_masks(model).items():
        assert torch.equal(sk.get_masks(fresh)[name], mask)


@pytest.mark.parametrize("order", ["ste-first", "mask-first"])
def test_snapshot_leaks_no_parametrization_state(order):
    model = _ste_and_mask(order)
    snap = sk.snapshot(model)
    assert set(snap) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    sk.rewind(model, snap)
    masks = sk.get_masks(model)
    for name in ("0.weight", "2.weight"):
        assert torch.equal(sk.prunable_weights(model)[name].detach(), snap[name])
        assert torch.all(snap[name][~masks[name]] == 0)


def test_plain_state_keys():
    from sparsekit.masking import plain_state_keys
    model = _ste_and_mask("ste-first")
    keys = plain_state_keys(model)
    assert keys["0.parametrizations.weight.original"] == "0.weight"
    assert keys["0.bias"] == "0.bias"
    assert keys["0.parametrizations.weight.0.mask"] is None
    assert keys["0.parametrizations.weight.0.flips"] is None
    assert keys["0.parametrizations.weight.1.mask"] is None


def test_apply_masks_is_all_or_nothing():
    model = MLP(40, (16,), 10)
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    good = torch.zeros(16, 40, dtype=torch.bool)
    bad_masks = [
        {"0.weight": good, "2.weight": torch.ones(10, 16, dtype=torch.bool, device="meta")},
        {"0.weight": good, "2.weight": torch.ones(10, 17, dtype=torch.bool)},
        {"0.weight": good, "2.weight": torch.ones(10, 16)},
        {"0.weight": good, "nope": torch.ones(10, 16, dtype=torch.bool)},
    ]
    for masks in bad_masks:
        with pytest.raises((ValueError, TypeError), match="2.weight|nope"):
            sk.apply_masks(model, masks)
        assert sk.get_masks(model) == {}
        assert type(model[0]) is nn.Linear
        after = model.state_dict()
        assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_apply_masks_meta_mask_is_a_named_error():
    model = MLP(40, (16,), 10)
    with pytest.raises(ValueError, match=r"masks\['0.weight'\] is on the meta device"):
        sk.apply_masks(model, {"0.weight": torch.ones(16, 40, dtype=torch.bool, device="meta")})


def test_load_masked_state_dict_of_another_shape_leaves_target_untouched():
    source = MLP(40, (16,), 10)
    sk.apply_masks(source, {"0.weight": _half_masks(source)["0.weight"]})
    other_head = MLP(40, (16,), 11)  # the mask of 0.weight fits, 2.weight / 2.bias do not
    other_hidden = MLP(40, (17,), 10)
    for tgt in (other_head, other_hidden):
        before = {n: p.detach().clone() for n, p in tgt.state_dict().items()}
        with pytest.raises(ValueError, match="nothing was changed|shape"):
            sk.load_masked_state_dict(tgt, source.state_dict())
        assert sk.get_masks(tgt) == {}
        after = tgt.state_dict()
        assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_load_masked_state_dict_names_missing_and_unexpected_keys():
    source = MLP(40, (16,), 10)
    sk.apply_masks(source, _half_masks(source))
    state = dict(source.state_dict())
    del state["2.bias"]
    state["extra"] = torch.zeros(1)
    fresh = MLP(40, (16,), 10)
    with pytest.raises(ValueError, match=r"missing keys \['2.bias'\], unexpected keys \['extra'\]"):
        sk.load_masked_state_dict(fresh, state)
    assert sk.get_masks(fresh) == {}


def test_sparsity_of_empty_weights_is_a_value_error():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about initialising a zero-element tensor
        layer = nn.Linear(0, 3)
    with pytest.raises(ValueError, match="no entries"):
        sk.sparsity(layer)


def _weight_normed(kind: str) -> nn.Module:
    import warnings
    model = MLP(8, (8,), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the hook version is deprecated
        if kind == "parametrization":
            torch.nn.utils.parametrizations.weight_norm(model[2])
        else:
            torch.nn.utils.weight_norm(model[2])
    return model


@pytest.mark.parametrize("kind", ["parametrization", "hook"])
def test_weight_norm_is_refused_with_a_named_error(kind):
    model = _weight_normed(kind)
    with pytest.raises(TypeError, match="2.weight"):
        sk.prunable_weights(model)
    with pytest.raises(TypeError, match="2.weight"):
        sk.apply_masks(model, {"2.weight": torch.ones(4, 8, dtype=torch.bool)})
    with pytest.raises(TypeError, match="2.weight"):
        sk.scores.snip(model, torch.randn(3, 8), torch.tensor([0, 1, 2]))
    # the other layers can still be masked, and the model is left as it was on error
    sk.apply_masks(model, {"0.weight": torch.zeros(8, 8, dtype=torch.bool)})
    assert list(sk.get_masks(model)) == ["0.weight"]


def test_a_model_pruned_with_torch_nn_utils_prune_is_refused_clearly_everywhere():
    import torch.nn.utils.prune as torch_prune

    model = sk.models.CNN1d(channels=(8, 8, 8))
    torch_prune.l1_unstructured(model.conv1, "weight", 0.5)
    x, y = torch.randn(2, 1, 40), torch.tensor([0, 1])
    calls = {
        "prunable_weights": lambda: sk.prunable_weights(model),
        "apply_masks": lambda: sk.apply_masks(model, {"conv1.weight": torch.ones(8, 1, 5, dtype=torch.bool)}),
        "snip": lambda: sk.scores.snip(model, x, y),
        "shrink_channels": lambda: sk.structured.shrink_channels(model, 0.5, x),
        "to_sparse": lambda: sk.execute.to_sparse(model),
        "copy_model": lambda: sk.masking.copy_model(model),
    }
    for call in calls.values():
        with pytest.raises(TypeError, match=r"pruned with torch.nn.utils.prune.*prune.remove\(module, 'weight'\)"):
            call()
    torch_prune.remove(model.conv1, "weight")  # made permanent: an ordinary model again
    assert sk.sparsity(model.conv1.weight) == 0.5
    assert sk.masking.copy_model(model) is not model


# --- exact behaviour pinned by mutation testing (tests/MUTATION.md) -----------------------


def test_weight_mask_repr_counts_kept_entries():
    from sparsekit.masking import WeightMask
    assert repr(WeightMask(torch.tensor([True, False, True, True]))) == "WeightMask(kept=3/4)"


def test_remove_masks_skips_unmasked_layers_and_bakes_exact_zeros():
    model = MLP(8, (8,), 4)
    masks = {"2.weight": torch.tensor([[True, False] * 4] * 4)}
    sk.apply_masks(model, masks)  # only the second layer is masked
    with torch.no_grad():  # a pruned entry of the stored original that is not zero any more
        model[2].parametrizations.weight.original.fill_(5.0)
    sk.remove_masks(model)
    assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear
    assert isinstance(model[2].weight, nn.Parameter)
    assert torch.equal(model[2].weight.detach(), torch.where(masks["2.weight"], 5.0, 0.0))


def test_sparsity_counts_zeros_not_nonzeros():
    assert sk.sparsity(torch.tensor([0.0, 1.0, 2.0, 3.0])) == 0.25
    assert sk.sparsity(torch.tensor([[0.0, -0.0], [0.0, 7.0]])) == 0.75


def test_sparsity_error_messages():
    with pytest.raises(ValueError, match=r"^sparsity of an empty tensor is undefined$"):
        sk.sparsity(torch.zeros(0))
    with pytest.raises(ValueError, match=r"^ReLU has no Linear/Conv1d/Conv2d weights$"):
        sk.sparsity(nn.ReLU())
    with pytest.raises(TypeError, match=r"^sparsity expects a Tensor or nn.Module, got list$"):
        sk.sparsity([1, 2])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about initialising a zero-element tensor
        layer = nn.Linear(0, 3)
    with pytest.raises(ValueError, match=r"^sparsity of Linear is undefined: its prunable weights have no "
                                         r"entries \(\{'weight': \(3, 0\)\}\)$"):
        sk.sparsity(layer)


def test_plain_state_keys_of_a_bare_layer_and_of_other_tensors():
    from torch.nn.utils import parametrize

    from sparsekit.masking import WeightMask, plain_state_keys
    layer = nn.Linear(4, 2)
    sk.apply_masks(layer, {"weight": torch.ones(2, 4, dtype=torch.bool)})
    parametrize.register_parametrization(layer, "bias", WeightMask(torch.ones(2, dtype=torch.bool)))
    assert plain_state_keys(layer) == {
        "parametrizations.weight.original": "weight", "parametrizations.weight.0.mask": None,
        "parametrizations.bias.original": "bias", "parametrizations.bias.0.mask": None,
    }
    normed = _weight_normed("parametrization")  # weight_norm stores original0 / original1
    keys = plain_state_keys(normed)
    assert keys["2.parametrizations.weight.original0"] == "2.parametrizations.weight.original0"
    assert keys["2.parametrizations.weight.original1"] == "2.parametrizations.weight.original1"
    assert keys["0.weight"] == "0.weight"


def test_load_masked_state_dict_into_a_bare_layer():
    source = nn.Linear(4, 2)
    mask = torch.tensor([[True, False, True, False], [False, True, False, True]])
    sk.apply_masks(source, {"weight": mask})
    target = nn.Linear(4, 2)
    sk.load_masked_state_dict(target, source.state_dict())
    assert torch.equal(sk.get_masks(target)["weight"], mask)
    assert torch.equal(target.weight, source.weight)


def test_load_masked_state_dict_with_a_parametrized_bias_only():
    from torch.nn.utils import parametrize
    source, target = MLP(8, (8,), 4), MLP(8, (8,), 4)
    for model in (source, target):
        parametrize.register_parametrization(model[0], "bias", nn.Identity())
    sk.apply_masks(source, _half_masks(source))
    sk.load_masked_state_dict(target, source.state_dict())
    assert all(torch.equal(sk.get_masks(target)[k], v) for k, v in sk.get_masks(source).items())


def test_load_masked_state_dict_error_messages():
    with pytest.raises(TypeError, match=r"^state_dict must be a mapping key -> Tensor, got list$"):
        sk.load_masked_state_dict(MLP(8, (8,), 4), [])
    source = MLP(8, (8,), 4)
    sk.apply_masks(source, _half_masks(source))
    state = dict(source.state_dict())
    state["0.parametrizations.weight.2.mask"] = state.pop("0.parametrizations.weight.0.mask")
    with pytest.raises(ValueError, match=r"^state_dict has parametrizations \[2\] for 0.weight but the model has 0: "
                                         r"positions must follow on without gaps$"):
        sk.load_masked_state_dict(MLP(8, (8,), 4), state)
    state = dict(source.state_dict())
    state["0.parametrizations.weight.0.mask"] = [True] * 64
    with pytest.raises(TypeError, match=r"^state_dict\['0.parametrizations.weight.0.mask'\] must be a Tensor, "
                                        r"got list$"):
        sk.load_masked_state_dict(MLP(8, (8,), 4), state)
    state = dict(MLP(8, (8,), 4).state_dict())
    state["0.parametrizations.weight.0.flips"] = torch.zeros(())
    with pytest.raises(ValueError, match=r"^state_dict entry 0.parametrizations.weight.0 holds \['flips'\]: a "
                       r"parametrization that 0.weight of the model does not have and that is not a mask \(only "
                       r"masks, a single 'mask' buffer, are re-created\); register it on the model first \(e.g. "
                       r"sk.nm_training.apply_ste for nm_training.NMSTE\)$"):
        sk.load_masked_state_dict(MLP(8, (8,), 4), state)


def test_load_masked_state_dict_with_only_missing_keys_is_a_named_error():
    source = MLP(8, (8,), 4)
    sk.apply_masks(source, _half_masks(source))
    state = dict(source.state_dict())
    del state["2.bias"]
    with pytest.raises(ValueError, match=r"nothing was changed\): missing keys \['2.bias'\], unexpected keys \[\], "
                                         r"shape mismatches \(saved vs model\) \[\]$"):
        sk.load_masked_state_dict(MLP(8, (8,), 4), state)


def test_load_masked_state_dict_names_a_weight_it_cannot_mask():
    target = _weight_normed("parametrization")
    state = {**target.state_dict(), "2.parametrizations.weight.1.mask": torch.ones(4, 8, dtype=torch.bool)}
    with pytest.raises(TypeError, match=r"^2.weight is parametrized by _WeightNorm"):
        sk.load_masked_state_dict(target, state)


def test_prunable_modules_skips_a_layer_without_weight_and_names_a_bare_layer():
    headless = nn.Linear(2, 2)
    del headless.weight  # no weight at all: not prunable
    assert list(sk.prunable_weights(nn.Sequential(headless, nn.Linear(2, 3)))) == ["1.weight"]
    assert list(sk.prunable_weights(nn.Linear(2, 3))) == ["weight"]
    with pytest.raises(TypeError, match=r"^model must be an nn.Module, got Tensor$"):
        sk.prunable_weights(torch.zeros(3))


def test_find_parametrization_looks_at_the_named_tensor_only():
    from torch.nn.utils import parametrize

    from sparsekit.masking import WeightMask, find_parametrization
    layer = nn.Linear(2, 2)
    mask = WeightMask(torch.ones(2, dtype=torch.bool))
    parametrize.register_parametrization(layer, "bias", mask)
    assert find_parametrization(layer, WeightMask) is None
    assert find_parametrization(layer, WeightMask, "bias") is mask
    assert list(sk.prunable_weights(layer)) == ["weight"] and sk.prunable_weights(layer)["weight"] is layer.weight


def test_apply_masks_error_messages():
    model = MLP(8, (8,), 4)
    with pytest.raises(TypeError, match=r"^masks must be a mapping name -> bool tensor, got list$"):
        sk.apply_masks(model, [])
    with pytest.raises(ValueError, match=r"^masks has unknown weight name 'x'; allowed names: 0.weight, 2.weight$"):
        sk.apply_masks(model, {"x": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"^masks has unknown weight name 'x'; allowed names: \(none\)$"):
        sk.apply_masks(nn.ReLU(), {"x": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(TypeError, match=r"^masks\['0.weight'\] must be a Tensor, got list$"):
        sk.apply_masks(model, {"0.weight": [True]})
    with pytest.raises(ValueError, match=r"^masks\['0.weight'\] must be a dense \(strided\) tensor, got layout "
                                         r"torch.sparse_coo$"):
        sk.apply_masks(model, {"0.weight": torch.ones(8, 8, dtype=torch.bool).to_sparse()})


def test_apply_masks_on_the_meta_device():
    model = MLP(8, (8,), 4).to("meta")  # a meta mask fits a meta weight (shape-only dry runs)
    sk.apply_masks(model, {"0.weight": torch.ones(8, 8, dtype=torch.bool, device="meta")})
    assert sk.get_masks(model)["0.weight"].device.type == "meta"


class _TwoPart(nn.Module):
    """A parametrization that stores the weight as two tensors and owns a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a + b) * self.scale

    def right_inverse(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return w / 2, w / 2


def test_weights_sparsekit_cannot_mask_have_exact_messages():
    from torch.nn.utils import parametrize

    from sparsekit.masking import stored_weight
    with pytest.raises(TypeError, match=r"^2.weight is parametrized by _WeightNorm, which stores it as several tensors "
                                        r"\(original0, original1\); sparsekit can only mask a weight stored as one "
                                        r"tensor: remove that parametrization first "
                                        r"\(torch.nn.utils.parametrize.remove_parametrizations\)$"):
        sk.prunable_weights(_weight_normed("parametrization"))
    with pytest.raises(TypeError, match=r"^2.weight of Linear is not a stored parameter but computed \(parameters: "
                                        r"weight_g, weight_v; e.g. by the deprecated torch.nn.utils.weight_norm\); "
                                        r"sparsekit can only mask a stored weight: remove the hook first "
                                        r"\(torch.nn.utils.remove_weight_norm\)$"):
        sk.prunable_weights(_weight_normed("hook"))
    two = nn.Linear(2, 2)
    parametrize.register_parametrization(two, "weight", _TwoPart())
    with pytest.raises(TypeError, match=r"^weight is parametrized by _TwoPart, which stores it as several tensors "
                                        r"\(original0, original1\);"):
        stored_weight(two)  # the default name, and only the stored tensors (not the parametrization's own)
    plain = nn.Linear(2, 2)
    del plain.weight
    plain.weight = torch.ones(2, 2)  # a plain attribute, not a parameter
    with pytest.raises(TypeError, match=r"^weight of Linear is not a stored parameter but computed \(parameters: "
                                        r"none;"):
        stored_weight(plain)


def test_several_parametrizations_are_all_named():
    from torch.nn.utils import parametrize
    model = _weight_normed("parametrization")
    parametrize.register_parametrization(model[2], "weight", nn.Identity())
    with pytest.raises(TypeError, match=r"^2.weight is parametrized by _WeightNorm, Identity, which stores it as "):
        sk.prunable_weights(model)


def test_remove_weight_parametrizations_can_restore_the_stored_original():
    from sparsekit.masking import remove_weight_parametrizations
    layer = nn.Linear(4, 2)
    sk.apply_masks(layer, {"weight": torch.tensor([[True, False, True, False]] * 2)})
    with torch.no_grad():
        layer.parametrizations.weight.original.fill_(5.0)
    remove_weight_parametrizations(layer, leave_parametrized=False)
    assert type(layer) is nn.Linear and torch.equal(layer.weight.detach(), torch.full((2, 4), 5.0))


def test_copy_model_is_an_independent_deep_copy():
    model = MLP(8, (8,), 4)
    sk.apply_masks(model, _half_masks(model))
    twin = sk.masking.copy_model(model)
    assert isinstance(twin, type(model)) and twin is not model
    assert twin[0].parametrizations.weight.original is not model[0].parametrizations.weight.original
    sk.remove_masks(twin)
    assert set(sk.get_masks(model)) == {"0.weight", "2.weight"} and model(torch.randn(2, 8)).shape == (2, 4)


def test_torch_prune_refusal_message_is_exact():
    import torch.nn.utils.prune as torch_prune
    model = MLP(8, (8,), 4)
    torch_prune.l1_unstructured(model[0], "weight", 0.5)
    with pytest.raises(TypeError, match=r"^0.weight of Linear was pruned with torch.nn.utils.prune \(a forward "
                                        r"pre-hook computes weight = weight_orig \* weight_mask\); sparsekit can only "
                                        r"mask a stored weight: make that pruning permanent first "
                                        r"\(torch.nn.utils.prune.remove\(module, 'weight'\)\), or start from the "
                                        r"unpruned model and hold the mask with sk.apply_masks$"):
        sk.prunable_weights(model)


def test_only_a_real_torch_prune_hook_gets_the_torch_prune_message():
    from sparsekit.masking import stored_weight

    layer = nn.Linear(2, 2)
    weight = layer.weight
    del layer.weight
    layer.register_parameter("weight_orig", weight)  # like prune, but no weight_mask buffer
    layer.weight = weight.detach() * 2
    with pytest.raises(TypeError, match=r"^weight of Linear is not a stored parameter but computed "
                                        r"\(parameters: weight_orig; e\.g\. by the deprecated"):
        stored_weight(layer)
