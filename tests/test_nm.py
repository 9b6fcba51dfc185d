"""Tests for sparsekit.nm: N:M masks, the 2:4 format, STE / SR-STE, channel permutations."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsekit as sk
from sparsekit import nm

# ---------------------------------------------------------------- masks


def test_nm_mask_keeps_n_largest_per_group():
    w = torch.tensor([[1.0, -5.0, 3.0, 0.5, 0.0, 2.0, -2.0, 1.0]])
    assert sk.nm_mask(w).tolist() == [[False, True, True, False, False, True, True, False]]


def test_nm_mask_ties_go_to_lower_index():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, -2.0, 2.0, 2.0]])
    assert sk.nm_mask(w).tolist() == [[True, True, False, False, False, True, True, False]]
    assert sk.nm_mask(torch.zeros(1, 4), 1, 4).tolist() == [[True, False, False, False]]


@given(rows=st.integers(1, 5), groups=st.integers(1, 6),
       nm_=st.sampled_from([(1, 2), (1, 4), (2, 4), (3, 4), (2, 8), (4, 8)]), seed=st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_nm_mask_counts_and_dominance(rows, groups, nm_, seed):
    n, m = nm_
    w = torch.randn(rows, groups * m, generator=torch.Generator().manual_seed(seed))
    mask = sk.nm_mask(w, n, m)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    g = mask.view(rows, groups, m)
    assert (g.sum(-1) == n).all()
    a = w.abs().view(rows, groups, m)
    kept_min = torch.where(g, a, torch.full_like(a, math.inf)).amin(-1)
    dropped_max = torch.where(~g, a, torch.full_like(a, -math.inf)).amax(-1)
    assert (kept_min >= dropped_max).all()
    assert sk.is_nm(w * mask, n, m)


def test_nm_mask_higher_dims_group_along_last():
    w = torch.randn(2, 3, 8)
    assert torch.equal(sk.nm_mask(w), sk.nm_mask(w.reshape(6, 8)).reshape(2, 3, 8))


@pytest.mark.parametrize("n,m", [(0, 4), (5, 4), (-1, 4)])
def test_nm_mask_bad_n(n, m):
    with pytest.raises(ValueError, match="n <= m"):
        sk.nm_mask(torch.randn(2, 8), n, m)


def test_nm_mask_bad_input():
    with pytest.raises(ValueError, match="multiple of m=4"):
        sk.nm_mask(torch.randn(2, 6))
    with pytest.raises(TypeError, match="Tensor"):
        sk.nm_mask([[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(TypeError, match="int"):
        sk.nm_mask(torch.randn(2, 8), 2.0, 4)
    with pytest.raises(ValueError, match="0-d"):
        sk.nm_mask(torch.tensor(1.0))


def test_is_nm():
    assert sk.is_nm(torch.tensor([[1.0, 0.0, 2.0, 0.0]]))
    assert not sk.is_nm(torch.tensor([[1.0, 3.0, 2.0, 0.0]]))
    assert sk.is_nm(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), 3, 4)
    assert sk.is_nm(torch.zeros(3, 8))
    with pytest.raises(ValueError):
        sk.is_nm(torch.randn(2, 6))


# ---------------------------------------------------------------- 2:4 format


def test_compress_24_layout_by_hand():
    # group 0: nonzeros at 1, 3 -> nibble 1 | 3 << 2 = 13; group 1: 0, 2 -> 8; group 2: none -> 0|1<<2 = 4.
    w = torch.tensor([[0.0, 5.0, 0.0, -6.0, 7.0, 0.0, 8.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    values, meta = sk.compress_24(w)
    assert values.tolist() == [[5.0, -6.0, 7.0, 8.0, 0.0, 0.0]]
    assert meta.dtype == torch.uint8 and meta.shape == (1, 2)
    assert meta.tolist() == [[13 | (8 << 4), 4]]


def test_compress_24_one_nonzero_fills_lowest_free_index():
    values, meta = sk.compress_24(torch.tensor([[0.0, 0.0, 0.0, 3.0], [0.0, 2.0, 0.0, 0.0]]))
    assert values.tolist() == [[0.0, 3.0], [0.0, 2.0]]
    assert meta.tolist() == [[0 | (3 << 2)], [0 | (1 << 2)]]


def _random_24(shape, seed, dtype=torch.float32, zero_frac=0.3):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    w = w * sk.nm_mask(w)
    w[torch.rand(shape, generator=gen) < zero_frac] = 0.0
    return w.to(dtype)


@given(lead=st.lists(st.integers(1, 3), min_size=0, max_size=2), groups=st.integers(1, 9),
       seed=st.integers(0, 10_000), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
       zero_frac=st.sampled_from([0.0, 0.3, 0.9]))
@settings(max_examples=60, deadline=None)
def test_compress_round_trip(lead, groups, seed, dtype, zero_frac):
    w = _random_24((*lead, 4 * groups), seed, dtype, zero_frac)
    values, meta = sk.compress_24(w)
    assert values.shape == (*lead, 2 * groups) and values.dtype == dtype
    assert meta.shape == (*lead, math.ceil(groups / 2)) and meta.dtype == torch.uint8
    assert torch.equal(sk.decompress_24(values, meta), w)
    # every nibble is a valid pair i0 < i1; an odd group count leaves the last high nibble 0
    lo, hi = meta & 0xF, meta >> 4
    for nib in (lo, hi[..., : groups // 2]):
        assert ((nib & 3) < (nib >> 2)).all()
    if groups % 2:
        assert (hi[..., -1] == 0).all()


@given(groups=st.integers(1, 6), seed=st.integers(0, 1000))
@settings(max_examples=30, deadline=None)
def test_decompress_then_compress_is_identity_on_canonical_pairs(groups, seed):
    w = _random_24((3, 4 * groups), seed)
    values, meta = sk.compress_24(w)
    v2, m2 = sk.compress_24(sk.decompress_24(values, meta))
    assert torch.equal(v2, values) and torch.equal(m2, meta)


def test_compress_24_rejects_non_24():
    w = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    with pytest.raises(ValueError, match="not 2:4"):
        sk.compress_24(w)
    with pytest.raises(ValueError, match="multiple of m=4"):
        sk.compress_24(torch.zeros(2, 6))


def test_decompress_24_bad_input():
    values, meta = sk.compress_24(_random_24((2, 16), 0))
    with pytest.raises(TypeError, match="uint8"):
        sk.decompress_24(values, meta.to(torch.int32))
    with pytest.raises(ValueError, match="meta has shape"):
        sk.decompress_24(values, meta[:, :1])
    with pytest.raises(ValueError, match="even"):
        sk.decompress_24(values[:, :3], meta)
    bad = meta.clone()
    bad[0, 0] = 0x0  # i0 = i1 = 0
    with pytest.raises(ValueError, match="i0 >= i1"):
        sk.decompress_24(values, bad)


# ---------------------------------------------------------------- models


def test_apply_nm_on_mlp_and_cnn():
    mlp = sk.models.MLP(40, (16, 16), 10)
    masks = nm.apply_nm(mlp)
    assert set(masks) == {"0.weight", "2.weight", "4.weight"}
    assert all(sk.is_nm(w) for w in sk.effective_weights(mlp).values())
    assert sk.sparsity(mlp) == pytest.approx(0.5)
    cnn = sk.models.CNN1d((8, 8, 8))
    masks = nm.apply_nm(cnn)
    assert "conv1.weight" not in masks  # 1 channel x kernel 5 is not a multiple of 4
    w2 = sk.effective_weights(cnn)["conv2.weight"]
    assert sk.is_nm(nm.group_view(w2)) and not sk.is_nm(w2.transpose(1, 2).reshape(8, -1))
    with pytest.raises(ValueError, match="conv1"):
        nm.nm_masks(cnn, strict=True)


def test_nm_masks_with_scores_and_bad_shape():
    mlp = sk.models.MLP(8, (8,), 4)
    scores = {k: torch.arange(w.numel(), dtype=torch.float).view_as(w) for k, w in sk.prunable_weights(mlp).items()}
    masks = nm.nm_masks(mlp, 2, 4, scores)
    assert masks["0.weight"][0].tolist() == [False, False, True, True, False, False, True, True]
    scores["0.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="shape"):
        nm.nm_masks(mlp, scores=scores)


# ---------------------------------------------------------------- STE / SR-STE


def test_srste_backward_adds_decay_on_pruned():
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5]], requires_grad=True)
    mask = sk.nm_mask(w)
    out = nm._SRSTEFunction.apply(w, mask, 0.1)
    assert out.tolist() == [[0.0, -2.0, 3.0, 0.0]]
    out.sum().backward()
    assert torch.allclose(w.grad, torch.tensor([[1.0 + 0.1, 1.0, 1.0, 1.0 + 0.05]]))


def test_apply_ste_trains_with_dynamic_masks_and_counts_flips():
    sk.seed_everything(0)
    model = sk.models.MLP(8, (16,), 3)
    names = nm.apply_ste(model, lam=0.0)
    assert names == ["0.weight", "2.weight"]  # 8 and 16 inputs: both are multiples of 4
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    counter = nm.FlipCounter(every=1).start(model)
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
    masks = nm.finalize_ste(model)
    assert not any(nm._ste_of(m) for m in model.modules())
    assert sk.get_masks(model).keys() == masks.keys()
    assert torch.allclose(model(x), before(x))
    # the deep copy keeps working after the original was finalized
    assert nm._ste_of(before[0]) is not None and before(x).shape == (64, 3)


def test_srste_reduces_pruned_weight_magnitude():
    def pruned_norm(lam: float) -> float:
        sk.seed_everything(1)
        model = sk.models.MLP(8, (16,), 3)
        nm.apply_ste(model, lam=lam)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
        for _ in range(20):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        p = model[0].parametrizations.weight
        w = p.original.detach()
        return float((w * ~p[0].current_mask(w)).abs().sum())

    assert pruned_norm(0.5) < 0.8 * pruned_norm(0.0)


def test_ste_bad_input():
    with pytest.raises(ValueError, match="lam"):
        nm.NMSTE((4, 4), lam=-1.0)
    model = sk.models.MLP(8, (8,), 4)
    nm.apply_ste(model)
    with pytest.raises(ValueError, match="already"):
        nm.apply_ste(model)
    with pytest.raises(ValueError, match="different keys"):
        nm.mask_flips({"a": torch.ones(2, dtype=torch.bool)}, {})
    with pytest.raises(ValueError, match="every"):
        nm.FlipCounter(0)


def test_mask_flips_counts_differences():
    a = {"w": torch.tensor([True, False, True])}
    b = {"w": torch.tensor([False, False, True])}
    assert nm.mask_flips(a, b) == 1 and nm.mask_flips(a, a) == 0


# ---------------------------------------------------------------- permutations


def test_search_permutation_improves_kept_magnitude():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    perm = nm.search_permutation(w)
    assert torch.equal(perm.sort().values, torch.arange(32))
    assert nm.kept_magnitude(w[:, perm]) > nm.kept_magnitude(w)


def test_search_permutation_finds_obvious_optimum():
    # columns 0,1 and 2,3 each hold one big pair; one group must take two big columns each
    w = torch.zeros(1, 8)
    w[0, [0, 1, 2, 3]] = 10.0
    before = nm.kept_magnitude(w)
    perm = nm.search_permutation(w)
    assert before == 20.0 and nm.kept_magnitude(w[:, perm]) == 40.0


def test_permute_for_nm_preserves_function():
    sk.seed_everything(0)
    model = sk.models.MLP(8, (16, 12), 4)
    x = torch.randn(5, 8)
    before = model(x)
    result = nm.permute_for_nm(model, [("0", "2"), ("2", "4")])
    assert torch.allclose(model(x), before, atol=1e-5)
    for kept_before, kept_after in result.values():
        assert kept_after >= kept_before


def test_permute_channels_with_batchnorm_and_masks():
    sk.seed_everything(0)
    cnn = sk.models.CNN1d((8, 8, 8)).eval()
    cnn.bn1.running_mean.normal_()
    cnn.bn1.running_var.uniform_(0.5, 2.0)
    nm.apply_nm(cnn)
    x = torch.randn(3, 40)
    before = cnn(x)
    perm = torch.randperm(8)
    nm.permute_channels(cnn.conv1, cnn.conv2, perm, [cnn.bn1])
    assert torch.allclose(cnn(x), before, atol=1e-5)
    assert sk.get_masks(cnn)["conv2.weight"].shape == (8, 8, 5)


def test_permutation_bad_input():
    lin1, lin2 = nn.Linear(4, 8), nn.Linear(8, 4)
    with pytest.raises(ValueError, match="permutation"):
        nm.permute_channels(lin1, lin2, torch.tensor([0, 0, 1, 2, 3, 4, 5, 6]))
    with pytest.raises(TypeError, match="integer"):
        nm.permute_channels(lin1, lin2, torch.arange(8.0))
    with pytest.raises(ValueError, match="output channels"):
        nm.permute_channels(lin2, lin2, torch.arange(8))
    with pytest.raises(TypeError, match="Linear or Conv"):
        nm.permute_channels(nn.ReLU(), lin2, torch.arange(8))
    with pytest.raises(ValueError, match="2-D"):
        nm.search_permutation(torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="multiple"):
        nm.search_permutation(torch.randn(2, 6))
    with pytest.raises(ValueError, match="no module"):
        nm.permute_for_nm(sk.models.MLP(8, (8,), 4), [("0", "9")])


# ---------------------------------------------------------------- issue 12


@pytest.mark.parametrize("w", [[[math.nan, math.nan, math.nan, 1.0]], [[1.0, 2.0, math.nan, 0.0]]])
def test_nm_mask_refuses_nan_with_a_named_error(w):
    with pytest.raises(ValueError, match="w contains .*NaN"):
        nm.nm_mask(torch.tensor(w))


def test_nm_mask_inf_is_an_ordinary_largest_magnitude():
    w = torch.tensor([[math.inf, -math.inf, 1.0, 2.0]])
    assert nm.nm_mask(w).tolist() == [[True, True, False, False]]


def test_nm_masks_scores_must_cover_every_layer():
    torch.manual_seed(0)
    mlp = sk.models.MLP(8, (8,), 4)
    scores = sk.scores.magnitude(mlp)
    del scores["2.weight"]
    with pytest.raises(ValueError, match=r"missing \['2.weight'\]"):
        nm.nm_masks(mlp, scores=scores)
    with pytest.raises(ValueError, match=r"unknown \['x'\]"):
        nm.nm_masks(mlp, scores={**sk.scores.magnitude(mlp), "x": torch.ones(1)})
    with pytest.raises(ValueError, match="missing"):
        nm.apply_nm(mlp, scores=scores)
    assert sk.get_masks(mlp) == {}


def test_nm_masks_rank_scores_in_their_own_dtype():
    mlp = sk.models.MLP(4, (4,), 4)
    scores = {n: torch.ones(w.shape, dtype=torch.float64) for n, w in sk.prunable_weights(mlp).items()}
    scores["0.weight"][:, 3] += 1e-12  # lost in float32: all ties, lower indices would win
    masks = nm.nm_masks(mlp, scores=scores)
    assert masks["0.weight"][0].tolist() == [True, False, False, True]
