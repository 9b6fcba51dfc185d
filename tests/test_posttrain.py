"""sparsekit.posttrain: calibration, Wanda, SparseGPT (against a direct OBS solve), one-shot pruning."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsekit as sk
from sparsekit import posttrain
from sparsekit.posttrain import sparsegpt, wanda_mask


def spd(n: int, seed: int = 0, scales: torch.Tensor | None = None) -> torch.Tensor:
    """A Gram matrix X^T X of correlated features (float64, positive definite)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * n, n, generator=g, dtype=torch.float64) @ torch.randn(n, n, generator=g, dtype=torch.float64)
    if scales is not None:
        x = x * scales
    return x.T @ x


def obs_oracle(w: torch.Tensor, h: torch.Tensor, pruned_at, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct OBS, one column at a time, with explicit inverses of the trailing Hessians.

    Column i: the rows for which ``pruned_at(i, w_now, d)`` is True remove w[r, i] with the
    update ``-(w_ri / F_00) F_0,:`` where ``F = inv(H[i:, i:])``; then column i is frozen.
    """
    w = w.clone().double()
    h = h.clone().double()
    h += damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=torch.float64)
    cols = w.shape[1]
    inverses = [torch.linalg.inv(h[i:, i:]) for i in range(cols)]
    d = torch.tensor([inv[0, 0].sqrt() for inv in inverses], dtype=torch.float64)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for i in range(cols):
        pruned[:, i] = pruned_at(i, w, d, pruned)
        f = inverses[i]
        for r in range(w.shape[0]):
            if pruned[r, i]:
                w[r, i:] -= w[r, i] / f[0, 0] * f[0, :]
        w[pruned[:, i], i] = 0.0
    return w, ~pruned


# --- calibrate -------------------------------------------------------------------------

class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def test_calibrate_sums_x_transpose_x_over_all_tokens():
    torch.manual_seed(0)
    model = TwoLayer()
    batches = [torch.randn(2, 5, 6), (torch.randn(3, 5, 6), torch.zeros(3))]  # [batch, tokens, features]
    stats = posttrain.calibrate(model, batches)
    assert list(stats) == ["fc1", "fc2"]
    x = torch.cat([batches[0].reshape(-1, 6), batches[1][0].reshape(-1, 6)]).double()
    torch.testing.assert_close(stats["fc1"].gram, x.T @ x, rtol=1e-12, atol=1e-12)
    assert stats["fc1"].count == 25 and stats["fc2"].count == 25
    with torch.no_grad():  # eval mode: dropout off, so fc2 sees relu(fc1(x)) exactly
        hidden = torch.relu(model.fc1(x.float())).double()
    torch.testing.assert_close(stats["fc2"].gram, hidden.T @ hidden, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats["fc1"].input_norm, x.pow(2).sum(0).sqrt())
    assert stats["fc1"].gram.dtype == torch.float64


def test_calibrate_leaves_the_model_unchanged_and_restores_each_flag():
    model = TwoLayer().train()
    model.drop.eval()  # a user's choice that must survive
    before = copy.deepcopy(model.state_dict())
    posttrain.calibrate(model, [torch.randn(4, 6)], layers=["fc2"])
    assert model.training and model.fc1.training and not model.drop.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert not model.fc1._forward_hooks and not model.fc2._forward_hooks


def test_calibrate_only_the_named_layers():
    stats = posttrain.calibrate(TwoLayer(), [torch.randn(4, 6)], layers=["fc2"])
    assert list(stats) == ["fc2"] and stats["fc2"].gram.shape == (8, 8)


def test_calibrate_bad_input():
    model = TwoLayer()
    with pytest.raises(ValueError, match="batches is empty"):
        posttrain.calibrate(model, [])
    with pytest.raises(ValueError, match="not nn.Linear modules"):
        posttrain.calibrate(model, [torch.randn(2, 6)], layers=["drop"])
    with pytest.raises(TypeError, match="batch 0 is list"):
        posttrain.calibrate(model, [[1, 2]])
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        posttrain.calibrate(lambda x: x, [torch.randn(2, 6)])
    with pytest.raises(ValueError, match="not initialized"):
        posttrain.calibrate(model, [torch.randn(2, 6)], group=object())


# --- wanda_mask ------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 5), cols=st.integers(1, 12), sparsity=st.floats(0, 0.99), seed=st.integers(0, 99))
def test_wanda_prunes_the_lowest_products_per_row_exactly(rows, cols, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    norm = torch.rand(cols, generator=g) * 3
    mask = wanda_mask(w, norm, sparsity)
    k = round(sparsity * cols)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert ((~mask).sum(1) == k).all()
    score = w.abs().double() * norm.double()
    for r in range(rows):  # every pruned score <= every kept score of the row
        if 0 < k < cols:
            assert score[r][~mask[r]].max() <= score[r][mask[r]].min()


def test_wanda_ties_prune_the_lower_index_first():
    mask = wanda_mask(torch.ones(2, 4), torch.ones(4), 0.5)
    assert mask.tolist() == [[False, False, True, True]] * 2


def test_wanda_uses_the_input_norm_not_only_the_weight():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert wanda_mask(w, torch.ones(4), 0.5).tolist() == [[False, False, True, True]]
    assert wanda_mask(w, torch.tensor([10.0, 10.0, 1.0, 1.0]), 0.5).tolist() == [[True, True, False, False]]
    assert posttrain.row_magnitude_mask(w, 0.5).tolist() == [[False, False, True, True]]


def test_wanda_nm_is_exact():
    g = torch.Generator().manual_seed(1)
    w, norm = torch.randn(6, 16, generator=g), torch.rand(16, generator=g)
    mask = wanda_mask(w, norm, nm=(2, 4))
    assert sk.is_nm(w * mask, 2, 4) and (mask.reshape(6, 4, 4).sum(-1) == 2).all()
    torch.testing.assert_close(mask, sk.nm_mask(w.abs().double() * norm.double(), 2, 4), rtol=0, atol=0)
    assert (wanda_mask(w, norm, nm=(4, 8)).reshape(6, 2, 8).sum(-1) == 4).all()


def test_wanda_bad_input():
    w = torch.randn(3, 8)
    with pytest.raises(ValueError, match="must be 2-D"):
        wanda_mask(torch.randn(8), torch.ones(8))
    with pytest.raises(ValueError, match="input_norm must have shape"):
        wanda_mask(w, torch.ones(7))
    with pytest.raises(ValueError, match="sparsity must be"):
        wanda_mask(w, torch.ones(8), 1.0)
    with pytest.raises(ValueError, match="m must divide"):
        wanda_mask(w, torch.ones(8), nm=(2, 3))
    with pytest.raises(ValueError, match="finite and >= 0"):
        wanda_mask(w, -torch.ones(8))
    with pytest.raises(ValueError, match="nm must be a pair"):
        wanda_mask(w, torch.ones(8), nm=2)
    with pytest.raises(TypeError, match="floating-point"):
        wanda_mask(torch.ones(3, 8, dtype=torch.int64), torch.ones(8))


# --- sparsegpt -------------------------------------------------------------------------

@pytest.mark.parametrize("blocksize", [3, 8, 16])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_sparsegpt_equals_a_direct_obs_solve(sparsity, blocksize):
    """Per block: the mask is chosen when the block is reached, from the weights as updated so far
    (the running count kept exact); then column-by-column OBS with explicit trailing inverses."""
    g = torch.Generator().manual_seed(2)
    w, h = torch.randn(3, 16, generator=g, dtype=torch.float64), spd(16, 3)

    def choose_per_block(i, w_now, d, pruned):
        if i % blocksize == 0:
            end = min(i + blocksize, w_now.shape[1])
            share = round(sparsity * w_now.shape[0] * end) - int(pruned.sum())
            saliency = (w_now[:, i:end] ** 2 / d[i:end] ** 2).reshape(-1)
            block = torch.zeros(w_now.shape[0] * (end - i), dtype=torch.bool)
            block[torch.sort(saliency, stable=True).indices[:share]] = True
            pruned[:, i:end] = block.reshape(w_now.shape[0], end - i)
        return pruned[:, i]

    expected_w, expected_mask = obs_oracle(w, h, choose_per_block, damp=0.01)
    new_w, mask = sparsegpt(w, h, sparsity, blocksize=blocksize, damp=0.01)
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(new_w, expected_w, rtol=1e-9, atol=1e-10)


def test_sparsegpt_nm_equals_a_direct_obs_solve_with_adaptive_groups():
    """N:M: each group's mask is chosen from the weights as updated when the group is reached."""
    g = torch.Generator().manual_seed(4)
    w, h = torch.randn(4, 8, generator=g, dtype=torch.float64), spd(8, 5)

    def choose_groups(i, w_now, d, pruned):
        if i % 4 == 0:
            saliency = w_now[:, i:i + 4] ** 2 / d[i:i + 4] ** 2
            pruned[:, i:i + 4] = ~sk.nm_mask(saliency, 2, 4)
        return pruned[:, i]

    expected_w, expected_mask = obs_oracle(w, h, choose_groups, damp=0.0)
    for blocksize in (4, 8):  # N:M decisions do not depend on the block size
        new_w, mask = sparsegpt(w, h, nm=(2, 4), blocksize=blocksize, damp=0.0)
        assert torch.equal(mask, expected_mask) and sk.is_nm(new_w, 2, 4)
        torch.testing.assert_close(new_w, expected_w, rtol=1e-9, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(2, 20), sparsity=st.floats(0, 0.95),
       blocksize=st.integers(1, 8), seed=st.integers(0, 99))
def test_sparsegpt_exact_count_zero_outside_mask_and_arguments_untouched(rows, cols, sparsity, blocksize, seed):
    g = torch.Generator().manual_seed(seed)
    w, h = torch.randn(rows, cols, generator=g), spd(cols, seed)
    w0, h0 = w.clone(), h.clone()
    new_w, mask = sparsegpt(w, h, sparsity, blocksize=blocksize)
    assert int((~mask).sum()) == round(sparsity * rows * cols)
    assert (new_w[~mask] == 0).all() and new_w.dtype == w.dtype
    assert torch.equal(w, w0) and torch.equal(h, h0)


def reconstruction_error(w, w_new, x):
    return float(((x @ w.T - x @ w_new.T) ** 2).sum())


def test_sparsegpt_reconstructs_better_than_wanda_and_wanda_better_than_magnitude():
    """Correlated inputs with uneven feature scales: the regime the papers are about."""
    g = torch.Generator().manual_seed(6)
    scales = torch.logspace(-1, 1, 32, dtype=torch.float64)[torch.randperm(32, generator=g)]
    x = (torch.randn(512, 32, generator=g, dtype=torch.float64)
         @ (torch.eye(32, dtype=torch.float64) + 0.3 * torch.randn(32, 32, generator=g, dtype=torch.float64))) * scales
    w = torch.randn(16, 32, generator=g, dtype=torch.float64)
    h = x.T @ x
    norm = h.diagonal().sqrt()
    for sparsity, nm in ((0.5, None), (0.5, (2, 4))):
        err_mag = reconstruction_error(w, w * posttrain.row_magnitude_mask(w, sparsity, nm=nm), x)
        err_wanda = reconstruction_error(w, w * wanda_mask(w, norm, sparsity, nm=nm), x)
        err_sgpt = reconstruction_error(w, sparsegpt(w, h, sparsity, nm=nm)[0], x)
        assert err_sgpt < err_wanda < err_mag, (nm, err_sgpt, err_wanda, err_mag)


@pytest.mark.parametrize("blocksize", [3, 16])
def test_sparsegpt_with_a_fixed_mask_is_the_obs_update_of_that_mask(blocksize):
    """mask=: no choice, only the update; equals the direct OBS solve pruning exactly there, and it
    reconstructs better than the same mask without the update (Sun et al. 2024, Table 6's ablation)."""
    g = torch.Generator().manual_seed(11)
    w, x = torch.randn(5, 16, generator=g, dtype=torch.float64), torch.randn(80, 16, generator=g, dtype=torch.float64)
    h = x.T @ x
    keep = wanda_mask(w, h.diagonal().sqrt(), 0.5)
    expected_w, expected_mask = obs_oracle(w, h, lambda i, w_now, d, pruned: ~keep[:, i], damp=0.01)
    new_w, mask = sparsegpt(w, h, mask=keep, blocksize=blocksize)
    assert torch.equal(mask, keep) and torch.equal(expected_mask, keep)
    torch.testing.assert_close(new_w, expected_w, rtol=1e-9, atol=1e-10)
    assert reconstruction_error(w, new_w, x) < reconstruction_error(w, w * keep, x)


def test_sparsegpt_fixed_mask_bad_input():
    w, h = torch.randn(3, 8), spd(8)
    with pytest.raises(ValueError, match="either mask= .* or nm="):
        sparsegpt(w, h, nm=(2, 4), mask=torch.ones(3, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be bool with the weight's shape"):
        sparsegpt(w, h, mask=torch.ones(3, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be bool"):
        sparsegpt(w, h, mask=torch.ones(3, 8))
    with pytest.raises(TypeError, match="mask must be a bool Tensor"):
        sparsegpt(w, h, mask=[[True] * 8] * 3)


def test_damping_keeps_a_rank_deficient_hessian_finite():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 8, generator=g, dtype=torch.float64)  # 3 tokens: rank 3 < 8
    h, w = x.T @ x, torch.randn(4, 8, generator=g)
    new_w, mask = sparsegpt(w, h, 0.5, damp=0.01)
    assert torch.isfinite(new_w).all() and int((~mask).sum()) == 16
    with pytest.raises(ValueError, match="not positive definite"):
        sparsegpt(w, h, 0.5, damp=0.0)


def test_dead_inputs_are_zeroed_and_pruned_first():
    h = spd(6, 8)
    h[2, :] = 0
    h[:, 2] = 0
    w = torch.ones(2, 6)
    new_w, mask = sparsegpt(w, h, 1 / 6, blocksize=6)
    assert (new_w[:, 2] == 0).all() and (~mask[:, 2]).all()


def test_sparsegpt_bad_input():
    w, h = torch.randn(3, 8), spd(8)
    with pytest.raises(ValueError, match="must be 2-D"):
        sparsegpt(torch.randn(2, 3, 8), h)
    with pytest.raises(ValueError, match="hessian must have shape"):
        sparsegpt(w, spd(7))
    asym = h.clone()
    asym[0, 1] += 1.0
    with pytest.raises(ValueError, match="must be symmetric"):
        sparsegpt(w, asym)
    with pytest.raises(ValueError, match="sparsity must be"):
        sparsegpt(w, h, -0.1)
    with pytest.raises(ValueError, match="m must divide"):
        sparsegpt(w, h, nm=(2, 3))
    with pytest.raises(ValueError, match="multiple of m"):
        sparsegpt(w, h, nm=(2, 4), blocksize=6)
    with pytest.raises(ValueError, match="damp must be"):
        sparsegpt(w, h, damp=-1.0)
    nan = h.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        sparsegpt(w, nan)


# --- reparametrization invariance ----------------------------------------------------------

def test_rescaling_an_input_channel_changes_magnitude_but_not_wanda_or_undamped_sparsegpt():
    """Scale input feature j by c and column j of W by 1/c: the layer computes the same function.
    c = 4 (a power of two) keeps every product exact in floating point."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64)
    w = torch.randn(4, 8, generator=g, dtype=torch.float64)
    c = torch.ones(8, dtype=torch.float64)
    c[[1, 5]] = 4.0
    x2, w2 = x * c, w / c
    torch.testing.assert_close(x2 @ w2.T, x @ w.T)
    h, h2 = x.T @ x, x2.T @ x2
    assert not torch.equal(posttrain.row_magnitude_mask(w, 0.5), posttrain.row_magnitude_mask(w2, 0.5))
    assert torch.equal(wanda_mask(w, h.diagonal().sqrt(), 0.5), wanda_mask(w2, h2.diagonal().sqrt(), 0.5))
    new_w, mask = sparsegpt(w, h, 0.5, damp=0.0)
    new_w2, mask2 = sparsegpt(w2, h2, 0.5, damp=0.0)
    assert torch.equal(mask, mask2)
    torch.testing.assert_close(new_w2 * c, new_w, rtol=1e-9, atol=1e-12)


# --- prune (whole model) -------------------------------------------------------------------

def batches_for(model_in: int, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, model_in, generator=g) for _ in range(n)]


@pytest.mark.parametrize("method", posttrain.METHODS)
def test_prune_masks_every_linear_with_exact_counts(method):
    torch.manual_seed(0)
    model = TwoLayer()
    masks = posttrain.prune(model, batches_for(6), method=method, sparsity=0.5)
    assert list(masks) == ["fc1.weight", "fc2.weight"]
    for name, w in sk.effective_weights(model).items():
        assert ((~masks[name]).sum(1) == w.shape[1] // 2).all() if method != "sparsegpt" \
            else int((~masks[name]).sum()) == w.numel() // 2
        assert (w[~masks[name]] == 0).all()
    assert sk.get_masks(model).keys() == masks.keys()


@pytest.mark.parametrize("same_shapes", [True, False], ids=["one-pass", "per-layer"])
def test_prune_sequential_calibrates_on_the_pruned_predecessors(same_shapes):
    torch.manual_seed(1)
    model = TwoLayer()
    g = torch.Generator().manual_seed(3)
    lengths = (5, 5, 5) if same_shapes else (5, 3, 7)  # tokens per sequence: different shapes -> per layer
    batches = [torch.randn(2, t, 6, generator=g) for t in lengths]
    manual, dense = copy.deepcopy(model), copy.deepcopy(model)
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    masks = posttrain.prune(model, batches, method="sparsegpt", sparsity=0.5, sequential=True)
    handle.remove()
    # one pass to find the execution order, then one pass over all batches stacked together,
    # or (shapes differ) one pass over the 3 batches per layer
    assert len(calls) == (1 + 1 if same_shapes else 1 + 2 * 3)
    # the same by hand: fc1 on the dense model, then fc2 on the model with fc1 pruned
    h1 = posttrain.calibrate(manual, batches, layers=["fc1"])["fc1"].gram
    w1, m1 = sparsegpt(manual.fc1.weight, h1, 0.5)
    with torch.no_grad():
        manual.fc1.weight.copy_(w1)
    h2 = posttrain.calibrate(manual, batches, layers=["fc2"])["fc2"].gram
    w2, m2 = sparsegpt(manual.fc2.weight, h2, 0.5)
    assert list(masks) == ["fc1.weight", "fc2.weight"]
    assert torch.equal(masks["fc1.weight"], m1) and torch.equal(masks["fc2.weight"], m2)
    torch.testing.assert_close(model.fc2.weight, w2)
    # independent calibration would have seen the dense fc1 instead: another H for fc2
    independent = posttrain.calibrate(dense, batches, layers=["fc2"])["fc2"].gram
    assert not torch.allclose(independent, h2, rtol=1e-3)


def test_prune_refuses_layers_the_batches_never_reach_before_touching_the_model():
    class Skips(TwoLayer):
        def forward(self, x):
            return self.fc1(x)

    model = Skips()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"never reach layers \['fc2'\]"):
        posttrain.prune(model, batches_for(6), method="wanda")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    masks = posttrain.prune(model, batches_for(6), method="wanda", layers=["fc1"])
    assert list(masks) == ["fc1.weight"]


def test_prune_independent_equals_per_layer_sparsegpt_on_the_dense_model():
    torch.manual_seed(2)
    model, batches = TwoLayer(), batches_for(6)
    dense = copy.deepcopy(model)
    stats = posttrain.calibrate(dense, batches)
    posttrain.prune(model, batches, method="sparsegpt", sparsity=0.5, sequential=False)
    for name in ("fc1", "fc2"):
        expected, _ = sparsegpt(getattr(dense, name).weight, stats[name].gram, 0.5)
        torch.testing.assert_close(getattr(model, name).weight, expected)


def test_prune_nm_gives_nm_weights():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    posttrain.prune(model, batches_for(8), method="wanda", nm=(2, 4))
    assert all(sk.is_nm(w, 2, 4) for w in sk.effective_weights(model).values())


def test_prune_bad_input_leaves_the_model_untouched():
    model = TwoLayer()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="method must be one of"):
        posttrain.prune(model, batches_for(6), method="obs")
    with pytest.raises(ValueError, match="layer 'fc1'.*m must divide"):
        posttrain.prune(model, batches_for(6), nm=(2, 4))  # fc1 has 6 inputs
    with pytest.raises(ValueError, match="batches is empty"):
        posttrain.prune(model, [])
    with pytest.raises(TypeError, match="sequential must be a bool"):
        posttrain.prune(model, batches_for(6), sequential=1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --- calibration across processes (torch.distributed, gloo) --------------------------------

def _calibrate_on_rank(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = TwoLayer()
        mine = batches_for(6, n=4, seed=11)[rank::world]  # each rank its share of the batches
        stats = posttrain.calibrate(model, mine, group=dist.group.WORLD)
        torch.save({k: (v.gram, v.count) for k, v in stats.items()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_calibrate_with_a_group_equals_one_process_on_all_batches(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    mp.spawn(_calibrate_on_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    single = posttrain.calibrate(TwoLayer(), batches_for(6, n=4, seed=11))
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for name, s in single.items():
            gram, count = got[name]
            assert count == s.count
            torch.testing.assert_close(gram, s.gram, rtol=1e-12, atol=1e-9)  # float64, summation order only
