"""Tests for sparsekit.synthetic: random masks of an exact sparsity, unstructured or in whole tiles."""

import pytest
import torch

from sparsekit import execute, select, synthetic


def test_unstructured_mask_has_exact_counts_and_is_select_random_mask():
    u = synthetic.unstructured_mask((10, 10), 0.37, seed=3)
    assert u.dtype == torch.bool and u.shape == (10, 10) and int((~u).sum()) == 37
    assert torch.equal(u, select.random_mask((10, 10), 37, seed=3))  # one random mask in the library
    assert torch.equal(synthetic.unstructured_mask(torch.Size([4, 6]), 0.5), select.random_mask((4, 6), 12, seed=0))
    assert not torch.equal(u, synthetic.unstructured_mask((10, 10), 0.37, seed=4))
    assert synthetic.unstructured_mask((0, 3), 0.5).shape == (0, 3)


def test_block_mask_is_whole_tiles_with_exact_counts():
    m = synthetic.block_mask((8, 12), 0.5, (4, 4), seed=1)
    assert m.shape == (8, 12) and int((~m).sum()) == 3 * 16
    assert execute.block_sparsity(m.float(), (4, 4)) == 0.5
    tiles = m[::4, ::4]
    assert torch.equal(m, tiles.repeat_interleave(4, 0).repeat_interleave(4, 1))
    assert torch.equal(tiles, synthetic.unstructured_mask((2, 3), 0.5, seed=1))
    # the default tile is the default BSR storage block
    assert int((~synthetic.block_mask((16, 16), 0.75)).sum()) == 3 * 64


@pytest.mark.parametrize("args, exc, match", [
    (("x", 0.5), TypeError, "shape must be a sequence of non-negative ints, got 'x'"),
    ((4, 0.5), TypeError, "shape must be a sequence of non-negative ints, got 4"),
    (((4, True), 0.5), TypeError, r"shape must be a sequence of non-negative ints, got \(4, True\)"),
    (((4, -1), 0.5), ValueError, r"shape must be a sequence of non-negative ints, got \(4, -1\)"),
    (((4, 4), "0.5"), TypeError, "sparsity must be a number in"),
    (((4, 4), 1.0), ValueError, r"sparsity must be in \[0, 1\), got 1.0"),
    (((4, 4), 0.5, None), TypeError, "seed must be an int"),
])
def test_unstructured_mask_named_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        synthetic.unstructured_mask(*args)


@pytest.mark.parametrize("args, exc, match", [
    (((8, 8, 8), 0.5), ValueError, r"shape must be two non-negative ints \(rows, cols\)"),
    (((6, 8), 0.5, (4, 4)), ValueError, r"shape \(6, 8\) is not divisible by blocksize \(4, 4\)"),
    (((8, 8), 0.5, (0, 4)), ValueError, "blocksize must be two positive ints"),
    (((8, 8), 1.5, (4, 4)), ValueError, "sparsity must be in"),
])
def test_block_mask_named_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        synthetic.block_mask(*args)


def test_synthetic_is_reachable_from_the_top_level():
    import sparsekit as sk

    assert sk.synthetic is synthetic and "synthetic" in dir(sk)
