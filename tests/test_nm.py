"""Tests for sparsekit.nm: N:M masks and the 2:4 format."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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


# ---------------------------------------------------------------- exact behaviour (tests/MUTATION.md)


def test_nm_edge_patterns_one_of_one_and_all_of_m():
    w = torch.tensor([[3.0, -1.0, 0.0, 2.0]])
    assert sk.nm_mask(w, 1, 1).tolist() == [[True, True, True, True]]
    assert sk.nm_mask(w, 4, 4).tolist() == [[True, True, True, True]]
    assert sk.nm_mask(w, 3, 4).tolist() == [[True, True, False, True]]
    assert sk.is_nm(w, 4, 4) and sk.is_nm(torch.tensor([[1.0, 1.0]]), 1, 1)


def test_nm_argument_messages_name_the_argument():
    w = torch.randn(2, 8)
    with pytest.raises(TypeError, match=r"^n must be an int, got float 2.0$"):
        sk.nm_mask(w, 2.0, 4)
    with pytest.raises(TypeError, match=r"^m must be an int, got float 4.0$"):
        sk.nm_mask(w, 2, 4.0)
    with pytest.raises(ValueError, match=r"^need 1 <= n <= m, got n=5, m=4$"):
        sk.nm_mask(w, 5, 4)
    with pytest.raises(TypeError, match=r"^w must be a Tensor, got list$"):
        sk.nm_mask([[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(ValueError, match=r"^w must have at least one dimension, got a 0-d tensor$"):
        sk.is_nm(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"^w.shape\[-1\] must be a multiple of m=4, got 6 \(shape \(2, 6\)\)$"):
        sk.is_nm(torch.randn(2, 6))
    with pytest.raises(TypeError, match=r"^weight must be a Tensor, got list$"):
        nm.group_view([1.0])


def test_group_view_returns_the_weight_itself_up_to_two_dims():
    w1, w2, w3 = torch.randn(8), torch.randn(4, 8), torch.randn(4, 2, 3)
    assert nm.group_view(w1) is w1 and nm.group_view(w2) is w2
    assert torch.equal(nm.group_view(w3), w3.reshape(4, 6))


def test_nm_mask_on_the_meta_device():
    mask = sk.nm_mask(torch.ones(2, 8, dtype=torch.int64, device="meta"))
    assert mask.device.type == "meta" and mask.dtype == torch.bool and mask.shape == (2, 8)


def test_nm_mask_nan_message_counts_them():
    with pytest.raises(ValueError, match=r"^w contains 3 NaN value\(s\); N:M masks need comparable scores \(replace "
                                         r"NaN first, e.g. torch.nan_to_num\(w, nan=0.0\) to prune them\)$"):
        sk.nm_mask(torch.tensor([[math.nan, math.nan, math.nan, 1.0]]))


def test_nm_masks_leaves_out_layers_that_cannot_be_nm_unless_strict():
    torch.manual_seed(0)
    cnn = sk.models.CNN1d((8, 8, 8))  # conv1 weight [8, 1, 5]: 8 outputs, input dim 5
    masks = nm.nm_masks(cnn)
    assert "conv1.weight" not in masks and "conv2.weight" in masks
    scores = {k: v for k, v in sk.scores.magnitude(cnn).items() if k != "conv1.weight"}
    assert nm.nm_masks(cnn, scores=scores).keys() == masks.keys()  # no score needed for conv1
    with pytest.raises(ValueError, match=r"^conv1.weight: input dim 5 is not a multiple of m=4$"):
        nm.nm_masks(cnn, strict=True)
    with pytest.raises(ValueError, match=r"^conv1.weight: input dim 5 is not a multiple of m=4$"):
        nm.apply_nm(cnn, strict=True)
    assert sk.get_masks(cnn) == {}


def test_nm_masks_uses_the_given_m():
    torch.manual_seed(0)
    mlp = sk.models.MLP(8, (16,), 8)
    masks = nm.nm_masks(mlp, 2, 8)
    assert all((mask.view(-1, 8).sum(-1) == 2).all() for mask in masks.values())
    assert all(torch.equal(masks[k], sk.nm_mask(w.detach(), 2, 8)) for k, w in sk.prunable_weights(mlp).items())


def test_nm_masks_error_messages():
    mlp = sk.models.MLP(8, (8,), 4)
    with pytest.raises(TypeError, match=r"^scores must be a mapping weight name -> Tensor or None, got list$"):
        nm.nm_masks(mlp, scores=[])
    with pytest.raises(ValueError, match=r"^scores must have one entry per prunable weight \(0.weight, 2.weight\); "
                                         r"missing \['2.weight'\], unknown \[\]$"):
        nm.nm_masks(mlp, scores={"0.weight": torch.ones(8, 8)})
    with pytest.raises(TypeError, match=r"^scores\['2.weight'\] must be a Tensor, got list$"):
        nm.nm_masks(mlp, scores={"0.weight": torch.ones(8, 8), "2.weight": [1.0]})
    with pytest.raises(ValueError, match=r"^scores\['0.weight'\] has shape \(3,\), weight has \(8, 8\)$"):
        nm.nm_masks(mlp, scores={"0.weight": torch.ones(3), "2.weight": torch.ones(4, 8)})
    normed = sk.models.MLP(8, (8,), 4)
    torch.nn.utils.parametrizations.weight_norm(normed[2])
    with pytest.raises(TypeError, match=r"^2.weight is parametrized by _WeightNorm"):
        nm.nm_masks(normed)  # the layer is named


def test_compress_24_error_message_counts_bad_groups():
    w = torch.tensor([[1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 0.0, 0.0]])  # 3 nonzeros, then 2
    with pytest.raises(ValueError, match=r"^w is not 2:4 sparse: 1 group\(s\) of 4 have more than 2 nonzeros; "
                                         r"prune first, e.g. w \* sk.nm_mask\(w\)$"):
        sk.compress_24(w)


def test_decompress_24_error_messages():
    values, meta = sk.compress_24(_random_24((2, 8), 0))
    with pytest.raises(TypeError, match=r"^values must be a Tensor, got list$"):
        sk.decompress_24([1.0], meta)
    with pytest.raises(TypeError, match=r"^meta must be a Tensor, got list$"):
        sk.decompress_24(values, [1])
    with pytest.raises(ValueError, match=r"^values and meta are on different devices: cpu vs meta$"):
        sk.decompress_24(values, meta.to("meta"))


def test_check_meta_24_checks_every_group_and_names_the_first_bad_one():
    values, meta = sk.compress_24(torch.tensor([[1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0]]))
    assert meta.tolist() == [[4 | (14 << 4)]]
    nm.check_meta_24(meta, 8)
    bad = meta.clone()
    bad[0, 0] = 4 | (0b1010 << 4)  # the last group: i0 = i1 = 2
    with pytest.raises(ValueError, match=r"^meta holds 1 nibble\(s\) with i0 >= i1 \(first at group index \[0, 1\], "
                                         r"i0=2, i1=2\): not a valid 2:4 index pair$"):
        nm.check_meta_24(bad, 8)
    with pytest.raises(ValueError, match=r"group index \[0, 1\], i0=2, i1=2"):
        sk.decompress_24(values, bad)
    swapped = meta.clone()
    swapped[0, 0] = (0 << 2 | 1) | (14 << 4)  # group 0: i0 = 1 > i1 = 0
    with pytest.raises(ValueError, match=r"^meta holds 1 nibble\(s\) with i0 >= i1 \(first at group index \[0, 0\], "
                                         r"i0=1, i1=0\)"):
        nm.check_meta_24(swapped, 8)
    odd_values, odd_meta = sk.compress_24(torch.tensor([[0.0, 0.0, 5.0, 6.0]]))
    assert odd_meta.tolist() == [[2 | (3 << 2)]]  # the high (padding) nibble is 0 and is not checked
    nm.check_meta_24(odd_meta, 4)
