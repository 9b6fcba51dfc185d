"""Tests for sparsekit.execute (sparse layouts, SparseLinear, layout choice, layout_bytes) and
sparsekit.synthetic (random masks of a given sparsity for timing)."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sparsekit as sk
from sparsekit import execute as ex
from sparsekit import synthetic


def masked_linear(out_f: int, in_f: int, sparsity: float, seed: int = 0, block: bool = False) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f)
    mask = synthetic.block_mask((out_f, in_f), sparsity, (4, 4), seed) if block else synthetic.unstructured_mask(
        (out_f, in_f), sparsity, seed)
    sk.apply_masks(lin, {"weight": mask})
    return lin


@pytest.mark.parametrize("layout", ["dense", "csr", "bsr", "auto"])
@pytest.mark.parametrize("lead", [(), (5,), (2, 3), (0,), (2, 0, 3)])
def test_sparse_linear_matches_masked_layer_for_any_leading_shape(layout, lead):
    lin = masked_linear(16, 8, 0.75, block=True)
    sl = ex.sparse_linear(lin, layout, blocksize=(4, 4))
    x = torch.randn(*lead, 8)
    y = sl(x)
    assert y.shape == (*lead, 16)
    torch.testing.assert_close(y, lin(x), rtol=1e-5, atol=1e-6)


def test_sparse_linear_stores_the_requested_layout_and_exact_weight():
    lin = masked_linear(16, 8, 0.5)
    for layout, torch_layout in [("dense", torch.strided), ("csr", torch.sparse_csr), ("bsr", torch.sparse_bsr)]:
        sl = ex.sparse_linear(lin, layout, blocksize=(4, 4))
        assert sl.layout == layout and sl.weight.layout == torch_layout
        assert torch.equal(sl.dense_weight(), lin.weight.detach())
        assert sl.nonzeros == int((lin.weight != 0).sum()) == 64


def test_sparse_linear_without_bias_and_unmasked():
    lin = nn.Linear(8, 4, bias=False)
    sl = ex.sparse_linear(lin, "csr")
    x = torch.randn(3, 8)
    torch.testing.assert_close(sl(x), lin(x))
    assert sl.bias is None


def test_sparse_linear_is_deepcopyable_and_has_a_state_dict():
    sl = ex.sparse_linear(masked_linear(8, 8, 0.5), "csr")
    clone = copy.deepcopy(sl)
    x = torch.randn(2, 8)
    assert torch.equal(clone(x), sl(x))
    assert set(sl.state_dict()) == {"values", "col_indices", "crow_indices", "bias"}
    assert "layout='csr'" in repr(sl)


@pytest.mark.parametrize("bad", ["coo", "CSR", "", None, 3])
def test_bad_layout_raises_value_error(bad):
    with pytest.raises(ValueError, match="layout must be one of"):
        ex.sparse_linear(nn.Linear(4, 4), bad)
    with pytest.raises(ValueError, match="layout must be one of"):
        ex.to_sparse(sk.models.MLP(), bad)


def test_bad_inputs():
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        ex.sparse_linear(nn.Conv1d(1, 1, 3))
    with pytest.raises(ValueError, match="divisible by blocksize"):
        ex.sparse_linear(nn.Linear(6, 4), "bsr", blocksize=(4, 4))
    with pytest.raises(ValueError, match="blocksize must be two positive ints"):
        ex.sparse_linear(nn.Linear(4, 4), "bsr", blocksize=(0, 4))
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 4\].*got \(3, 5\)"):
        ex.sparse_linear(nn.Linear(4, 2), "csr")(torch.randn(3, 5))
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        ex.to_sparse("model")
    with pytest.raises(ValueError, match="dense 2-D"):
        ex.choose_layout(torch.zeros(4))
    with pytest.raises(ValueError, match="bias must have shape"):
        ex.SparseLinear(torch.zeros(2, 4), torch.zeros(3), "csr")


def test_choose_layout_rule():
    big = (1024, 1024)
    w = torch.randn(*big)
    assert ex.choose_layout(w) == "dense"
    assert ex.choose_layout(w * synthetic.unstructured_mask(big, 0.5)) == "dense"
    assert ex.choose_layout(w * synthetic.unstructured_mask(big, 0.95)) == "csr"
    assert ex.choose_layout(w * synthetic.unstructured_mask(big, 0.85)) == "dense"
    assert ex.choose_layout(w * synthetic.block_mask(big, 0.9)) == "bsr"
    assert ex.choose_layout(w * synthetic.block_mask(big, 0.6)) == "dense"  # 60 % zeros, below both crossovers
    # Small weights stay dense whatever their sparsity; non-divisible shapes never get BSR.
    assert ex.choose_layout(torch.zeros(256, 256)) == "dense"
    odd = torch.randn(1000, 1000) * synthetic.unstructured_mask((1000, 1000), 0.95)
    assert ex.choose_layout(odd) == "csr"


def test_to_sparse_swaps_only_masked_linears_and_leaves_original():
    model = sk.models.MLP(8, (16,), 4)
    sk.apply_masks(model, {"0.weight": synthetic.unstructured_mask((16, 8), 0.5)})
    fast = ex.to_sparse(model, "csr")
    assert ex.layouts(fast) == {"0": "csr"}
    assert isinstance(fast[2], nn.Linear) and not isinstance(model[0], ex.SparseLinear)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(fast(x), model(x))
    assert sk.get_masks(model)["0.weight"].sum() == 64  # original still masked
    everything = ex.to_sparse(model, "dense", masked_only=False)
    assert ex.layouts(everything) == {"0": "dense", "2": "dense"}


def test_to_sparse_on_a_bare_linear():
    lin = masked_linear(4, 4, 0.5)
    assert isinstance(ex.to_sparse(lin, "csr"), ex.SparseLinear)
    assert isinstance(ex.to_sparse(nn.Linear(4, 4), "csr"), nn.Linear)


def test_block_sparsity():
    m = synthetic.block_mask((8, 8), 0.5, (4, 4), seed=1)
    assert ex.block_sparsity(m.float(), (4, 4)) == 0.5
    with pytest.raises(ValueError, match="not divisible"):
        ex.block_sparsity(torch.ones(6, 8), (4, 4))


def test_layout_bytes_counts_values_and_indices():
    w = torch.zeros(8, 8)
    w[0, 0] = w[3, 5] = 1.0
    assert ex.layout_bytes(w) == 256
    assert ex.layout_bytes(w.to_sparse_csr()) == 2 * 4 + 2 * 8 + 9 * 8  # torch builds int64 indices
    assert ex.layout_bytes(ex.to_layout(w, "csr")) == 2 * 4 + 2 * 4 + 9 * 4  # to_layout: int32
    assert ex.layout_bytes(w.to_sparse_bsr((4, 4))) == 2 * 16 * 4 + 2 * 8 + 3 * 8
    with pytest.raises(ValueError, match="layout_bytes supports"):
        ex.layout_bytes(w.to_sparse())


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3).map(lambda k: 4 * k), st.integers(1, 3).map(lambda k: 4 * k), st.floats(0.0, 0.95),
       st.sampled_from(["dense", "csr", "bsr", "auto"]), st.integers(0, 5))
def test_property_sparse_linear_equals_linear(out_f, in_f, sparsity, layout, seed):
    lin = masked_linear(out_f, in_f, sparsity, seed)
    x = torch.randn(3, in_f, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(ex.sparse_linear(lin, layout, (4, 4))(x), lin(x), rtol=1e-5, atol=1e-5)


def test_choose_layout_counts_exactly_at_the_threshold():
    # round(0.9 * 4096**2) zeros is "90 %" although its float mean is 0.89999997.
    shape = (4096, 4096)
    w = torch.ones(shape) * synthetic.unstructured_mask(shape, ex.CSR_MIN_SPARSITY)
    assert ex.choose_layout(w) == "csr"
    w = torch.ones(shape) * synthetic.unstructured_mask(shape, ex.CSR_MIN_SPARSITY - 1e-4)
    assert ex.choose_layout(w) == "dense"


def test_choose_layout_prefers_the_layout_that_stores_less():
    # 99.5 % unstructured leaves ~73 % of the 8 x 8 blocks empty (both thresholds pass),
    # but CSR stores 0.5 % of the entries and BSR 27 % of the blocks: CSR wins.
    shape = (1024, 1024)
    w = torch.ones(shape) * synthetic.unstructured_mask(shape, 0.995)
    assert ex.block_sparsity(w) >= ex.BSR_MIN_BLOCK_SPARSITY and ex.choose_layout(w) == "csr"
    # whole blocks: both pass again (95 % zeros), BSR stores the same values with far fewer indices
    w = torch.ones(shape) * synthetic.block_mask(shape, 0.95, (32, 32))
    assert ex.choose_layout(w) == "bsr"
    # exactly at the BSR threshold counts
    w = torch.ones(shape) * synthetic.block_mask(shape, ex.BSR_MIN_BLOCK_SPARSITY)
    assert ex.choose_layout(w) == "bsr"


def test_sparse_layouts_use_32_bit_indices():
    w = torch.randn(64, 64) * synthetic.block_mask((64, 64), 0.75)
    for layout in ("csr", "bsr"):
        t = ex.to_layout(w, layout)
        assert t.col_indices().dtype == t.crow_indices().dtype == torch.int32
        assert torch.equal(t.to_dense(), w)
        sl = ex.SparseLinear(w, None, layout)
        assert sl.col_indices.dtype == torch.int32


def test_chained_sparse_layers_match_dense_and_outputs_are_usable():
    torch.manual_seed(0)
    w1, w2 = torch.randn(32, 16), torch.randn(8, 32)
    w1[:, :8] = 0
    b1, b2 = torch.randn(32), torch.randn(8)
    chain = nn.Sequential(ex.SparseLinear(w1, b1, "bsr", (8, 8)), nn.ReLU(), ex.SparseLinear(w2, b2, "csr"))
    x = torch.randn(2, 5, 16)
    ref = torch.relu(x @ w1.T + b1) @ w2.T + b2
    y = chain(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(y.contiguous().view(10, 8), y.reshape(10, 8))


# --- issue 12 ----------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["dense", "csr", "bsr"])
def test_sparse_linear_output_is_row_major_like_nn_linear(layout):
    lin = masked_linear(16, 8, 0.75, seed=2)
    sl = ex.sparse_linear(lin, layout, (4, 4))
    x = torch.randn(3, 5, 8)
    y = sl(x)
    assert y.is_contiguous()
    assert torch.equal(y.view(-1), y.reshape(-1))  # view(-1) works as for an nn.Linear output
    torch.testing.assert_close(y, lin(x), rtol=1e-5, atol=1e-5)
    y2 = ex.sparse_matmul(sl.weight, x.reshape(15, 8), sl.bias)
    assert y2.is_contiguous() and y2.view(-1).shape == (15 * 16,)


@pytest.mark.parametrize("layout", ["dense", "csr"])
def test_sparse_matmul_wrong_inner_dimension_is_a_named_error(layout):
    w = ex.to_layout(torch.randn(6, 4), layout)
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 4\].*got \(2, 5\)"):
        ex.sparse_matmul(w, torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        ex.sparse_matmul(w, torch.randn(2, 4), torch.zeros(5))


@pytest.mark.parametrize("make", [lambda b: ex.sparse_matmul(torch.randn(6, 4), torch.randn(2, 4), b),
                                  lambda b: ex.SparseLinear(torch.randn(6, 4), b, "csr")])
def test_bias_of_the_wrong_type_is_a_named_error(make):
    with pytest.raises(TypeError, match=r"bias must be None or a Tensor of shape \(6,\), got list"):
        make([0.0] * 6)


def test_layout_bytes_of_a_non_tensor_is_a_named_error():
    with pytest.raises(TypeError, match="t must be a Tensor, got list"):
        ex.layout_bytes([1.0, 2.0])


def test_execute_holds_formats_only():
    # mask fixtures live in sparsekit.synthetic, timing analysis in sparsekit.bench
    for name in ("unstructured_mask", "block_mask", "compare_layouts", "crossover"):
        assert not hasattr(ex, name)
    assert ex.check_blocksize([4, 2]) == (4, 2)


@pytest.mark.parametrize("layout", ["csr", "bsr"])
def test_sparse_matmul_dtype_mismatch_is_a_named_error(layout):
    w = ex.to_layout(torch.randn(6, 4), layout, (2, 2))  # dense weights: F.linear's own check
    with pytest.raises(TypeError, match="weight, x and bias must share one dtype, got weight float32, x int64"):
        ex.sparse_matmul(w, torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="got weight float32, x float32, bias float64"):
        ex.sparse_matmul(w, torch.ones(2, 4), torch.zeros(6, dtype=torch.float64))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(csr_min_sparsity=2.0), ValueError, r"csr_min_sparsity must be in \[0, 1\], got 2.0"),
    (dict(bsr_min_block_sparsity="0.7"), TypeError, "bsr_min_block_sparsity must be a number in"),
    (dict(min_numel="a"), TypeError, "min_numel must be a non-negative int, got str 'a'"),
])
def test_choose_layout_named_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ex.choose_layout(torch.zeros(8, 8), **kwargs)
    with pytest.raises(TypeError, match="model must be an nn.Module, got str"):
        ex.layouts("model")


# --- batch-aware "auto" (issue 20) -------------------------------------------------------------

def test_crossovers_interpolate_in_log2_batch_and_hold_outside():
    table = ex.CROSSOVERS
    points = sorted(table)
    assert ex.crossovers(points[0]) == table[points[0]] and ex.crossovers(points[-1]) == table[points[-1]]
    assert ex.crossovers(10**6) == table[points[-1]]  # constant beyond the largest measured batch
    lo, hi = points[1], points[2]  # 8 and 64: the geometric mean is half way in log2
    mid = int(round((lo * hi) ** 0.5))
    t = (math.log2(mid) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
    for k in range(2):
        assert ex.crossovers(mid)[k] == pytest.approx(table[lo][k] + t * (table[hi][k] - table[lo][k]), abs=1e-12)
    with pytest.raises(ValueError, match="batch must be a positive int, got 0"):
        ex.crossovers(0)
    with pytest.raises(TypeError, match="batch must be a positive int, got float 1.5"):
        ex.crossovers(1.5)


def test_small_batches_need_less_sparsity_than_batch_256():
    # the roofline argument: at batch 1 a product is bound by the weight's bytes, CSR wins earlier
    assert ex.crossovers(1)[0] < ex.crossovers(256)[0] and ex.crossovers(64)[0] < ex.crossovers(256)[0]
    assert ex.CROSSOVERS[256] == (ex.CSR_MIN_SPARSITY, ex.BSR_MIN_BLOCK_SPARSITY)


def _weight(shape, sparsity, seed=0, block=None):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    mask = (synthetic.unstructured_mask(shape, sparsity, seed) if block is None
            else synthetic.block_mask(shape, sparsity, block, seed))
    return w * mask


def test_choose_layout_depends_on_the_batch():
    w = _weight((1024, 1024), 0.75)  # above the batch-8 CSR threshold, below those of 1, 64 and 256
    assert ex.choose_layout(w, batch=8) == "csr"
    assert ex.choose_layout(w, batch=256) == "dense" == ex.choose_layout(w)  # default: batch 256
    assert ex.choose_layout(w, batch=1) == "dense" == ex.choose_layout(w, batch=64)
    assert ex.to_layout(w, "auto", batch=8).layout == torch.sparse_csr
    assert ex.to_layout(w, "auto").layout == torch.strided
    # explicit thresholds hold for every batch
    assert ex.choose_layout(w, batch=8, csr_min_sparsity=0.8) == "dense"
    assert ex.choose_layout(w, batch=256, csr_min_sparsity=0.7) == "csr"


def test_explain_layout_gives_the_numbers_and_the_reason():
    w = _weight((1024, 1024), 0.75)
    c = ex.explain_layout(w, 8)
    csr_t, bsr_t = ex.crossovers(8)
    assert (c.layout, c.batch, c.csr_min_sparsity, c.bsr_min_block_sparsity) == ("csr", 8, csr_t, bsr_t)
    assert c.sparsity == 0.75 and c.block_sparsity == 0.0  # random 75 %: no empty 8 x 8 block
    assert set(c.costs) == {"csr"} and c.costs["csr"] == pytest.approx(0.25 / (1 - csr_t))
    assert c.reason.startswith("batch 8: 75.0% zeros >= CSR threshold") and c.reason.endswith(")")
    assert "-> csr" in c.reason
    d = ex.explain_layout(w, 256)
    assert d.layout == "dense" and d.costs == {} and d.reason.endswith("-> dense")
    small = ex.explain_layout(torch.zeros(64, 64), 1)
    assert small.layout == "dense" and "min_numel" in small.reason
    odd = ex.explain_layout(_weight((1000, 1002), 0.95), 1)
    assert odd.layout == "csr" and odd.block_sparsity is None and "no BSR" in odd.reason
    for c in (ex.explain_layout(w, b) for b in (1, 3, 8, 40, 64, 256, 1000)):
        assert c.layout == ex.choose_layout(w, batch=c.batch)


def test_layout_plan_and_its_description():
    w = _weight((1024, 1024), 0.75)
    plan = ex.layout_plan(w)
    assert len(plan) == ex.PLAN_ROWS + 1 and plan[0] == plan[1]
    assert all(plan[r] == ex.choose_layout(w, batch=r) for r in range(1, ex.PLAN_ROWS + 1))
    # dense for one row, CSR for a few rows, dense from some row count on, never back
    first, last = plan.index("csr"), ex.PLAN_ROWS - plan[::-1].index("csr")
    assert 1 < first <= 8 < last <= 64 and set(plan[first:last + 1]) == {"csr"}
    assert set(plan[1:first]) == set(plan[last + 1:]) == {"dense"}
    span = f"{first}" if first == 2 and first == last else f"{first}-{last}"
    want = ("dense for 1 row" if first == 2 else f"dense for 1-{first - 1} rows") + \
        f", csr for {span} rows, dense for {last + 1}+ rows"
    assert ex.describe_plan(plan) == want
    assert ex.describe_plan(ex.layout_plan(torch.zeros(8, 8))) == "dense for 1+ rows"
    assert ex.layout_plan(w, csr_min_sparsity=0.5) == ("csr",) * (ex.PLAN_ROWS + 1)


def test_batch_aware_sparse_linear_keeps_both_layouts_and_dispatches_on_rows(monkeypatch):
    torch.manual_seed(0)
    lin = nn.Linear(1024, 512)
    sk.apply_masks(lin, {"weight": synthetic.unstructured_mask((512, 1024), 0.75)})
    sl = ex.sparse_linear(lin, "auto")
    plan = ex.layout_plan(lin.weight.detach())
    assert sl.layout == "auto" and sl.stored == ("dense", "csr") and sl.plan == plan
    assert set(sl.state_dict()) == {"dense", "values", "col_indices", "crow_indices", "bias"}
    assert "plan: dense for 1 row, csr for 2-" in repr(sl)
    used = []
    real = ex.sparse_matmul
    monkeypatch.setattr(ex, "sparse_matmul", lambda w, x, b=None: used.append(w.layout) or real(w, x, b))
    # [batch, seq, features]: rows = batch * seq; decoding one token is 1 row
    for shape, layout in [((1, 1, 1024), torch.strided), ((1024,), torch.strided),
                          ((2, 3, 1024), torch.sparse_csr), ((1, 8, 1024), torch.sparse_csr),
                          ((4, 64, 1024), torch.strided), ((2, 300, 1024), torch.strided),
                          ((0, 5, 1024), torch.strided)]:
        x = torch.randn(*shape)
        used.clear()
        with torch.no_grad():
            y = sl(x)
            torch.testing.assert_close(y, lin(x), rtol=1e-4, atol=1e-4)
        assert used == [layout], shape
        assert y.shape == (*shape[:-1], 512)
    assert sl.layout_for(8) == "csr" and sl.layout_for(256) == "dense" and sl.layout_for(10**6) == "dense"
    assert sl.weight.layout == torch.sparse_csr and sl.weight_for(300).layout == torch.strided
    assert torch.equal(sl.dense_weight(), lin.weight.detach())
    clone = copy.deepcopy(sl)
    x = torch.randn(8, 1024)
    assert torch.equal(clone(x), sl(x))


def test_batch_aware_layer_with_csr_and_bsr_names_the_buffers_apart(monkeypatch):
    w = _weight((1024, 1024), 0.9375, block=(32, 32))
    # the shipped thresholds: BSR for one row and for many, CSR for a few (MKL's CSR kernel wins there)
    shipped = ex.SparseLinear(w, None, "auto")
    assert shipped.stored == ("csr", "bsr")
    assert [shipped.layout_for(r) for r in (1, 8, 64, 256)] == ["bsr", "csr", "bsr", "bsr"]
    # ... thresholds that favour CSR at batch 1 and BSR at 256 make the layer keep both
    monkeypatch.setattr(ex, "CROSSOVERS", {1: (0.5, 0.99), 256: (0.99, 0.5)})
    sl = ex.SparseLinear(w, torch.zeros(1024), "auto")
    assert sl.stored == ("csr", "bsr") and sl.layout_for(1) == "csr" and sl.layout_for(256) == "bsr"
    assert set(sl.state_dict()) == {"values", "col_indices", "crow_indices", "bsr_values", "bsr_col_indices",
                                    "bsr_crow_indices", "bias"}
    for rows, layout in ((1, torch.sparse_csr), (256, torch.sparse_bsr)):
        assert sl.weight_for(rows).layout == layout
        x = torch.randn(rows, 1024)
        torch.testing.assert_close(sl(x), x @ w.T, rtol=1e-4, atol=1e-4)
    assert torch.equal(sl.dense_weight(), w)


def test_fixed_batch_stores_one_layout():
    w = _weight((1024, 1024), 0.75)
    assert ex.SparseLinear(w, None, "auto", batch=8).layout == "csr"
    assert ex.SparseLinear(w, None, "auto", batch=256).layout == "dense"
    lin = nn.Linear(1024, 1024)
    with torch.no_grad():
        lin.weight.copy_(w)
    assert ex.sparse_linear(lin, "auto", batch=8).stored == ("csr",)


def test_to_sparse_batch_aware_on_a_model_with_3d_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 512))
    sk.apply_masks(model, {"0.weight": synthetic.unstructured_mask((1024, 512), 0.75),
                           "2.weight": synthetic.unstructured_mask((512, 1024), 0.97)})
    fast = ex.to_sparse(model)
    assert ex.layouts(fast) == {"0": "auto", "2": "csr"}
    assert ex.layouts(fast, rows=1) == {"0": "dense", "2": "csr"}  # decoding one token
    assert ex.layouts(fast, rows=8) == {"0": "csr", "2": "csr"}
    assert ex.layouts(fast, rows=256) == {"0": "dense", "2": "csr"}
    for shape in [(1, 1, 512), (2, 4, 512), (4, 64, 512)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)
    fixed = ex.to_sparse(model, batch=256)
    assert ex.layouts(fixed) == {"0": "dense", "2": "csr"}


def test_small_sparse_products_run_on_one_thread_and_restore_the_count(monkeypatch):
    w = _weight((256, 256), 0.9)
    csr = ex.to_layout(w, "csr")
    nnz = csr.values().numel()
    assert ex.sparse_threads(w, 1) is None  # dense: torch's own threading
    assert ex.sparse_threads(csr, ex.SINGLE_THREAD_WORK // nnz) == 1
    assert ex.sparse_threads(csr, ex.SINGLE_THREAD_WORK // nnz + 1) is None
    seen = []
    real_mm = torch.sparse.mm
    monkeypatch.setattr(torch.sparse, "mm", lambda a, b: seen.append(torch.get_num_threads()) or real_mm(a, b))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(3, 256)
        torch.testing.assert_close(ex.sparse_matmul(csr, x), x @ w.T, rtol=1e-5, atol=1e-5)
        assert seen == [1] and torch.get_num_threads() == 2
        monkeypatch.setattr(ex, "SINGLE_THREAD_WORK", 0)
        ex.sparse_matmul(csr, x)
        assert seen == [1, 2] and torch.get_num_threads() == 2
        monkeypatch.setattr(torch.sparse, "mm", lambda a, b: 1 / 0)
        monkeypatch.setattr(ex, "SINGLE_THREAD_WORK", 1 << 23)
        with pytest.raises(ZeroDivisionError):
            ex.sparse_matmul(csr, x)
        assert torch.get_num_threads() == 2  # restored after an error too
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="rows must be a non-negative int, got -1"):
        ex.sparse_threads(csr, -1)
    with pytest.raises(TypeError, match="weight must be a Tensor, got list"):
        ex.sparse_threads([1], 1)


def test_batch_argument_errors():
    w = _weight((64, 64), 0.5)
    with pytest.raises(ValueError, match="batch only applies to layout='auto', got layout='csr' and batch=1"):
        ex.SparseLinear(w, None, "csr", batch=1)
    with pytest.raises(ValueError, match="batch only applies to layout='auto'"):
        ex.to_sparse(sk.models.MLP(), "dense", batch=4)
    with pytest.raises(ValueError, match="batch must be a positive int, got 0"):
        ex.SparseLinear(w, None, "auto", batch=0)
    with pytest.raises(TypeError, match="batch must be a positive int, got str '8'"):
        ex.to_sparse(sk.models.MLP(), batch="8")
    with pytest.raises(ValueError, match="batch must be a positive int, got -1"):
        ex.choose_layout(w, batch=-1)
    with pytest.raises(TypeError, match="batch must be a positive int"):
        ex.explain_layout(w, 2.0)
    with pytest.raises(ValueError, match="rows must be a non-negative int, got -1"):
        ex.SparseLinear(w, None, "auto").layout_for(-1)
    with pytest.raises(ValueError, match="rows must be a non-negative int, got -2"):
        ex.layouts(sk.models.MLP(), rows=-2)
    with pytest.raises(ValueError, match=r"csr_min_sparsity must be in \[0, 1\], got 1.5"):
        ex.layout_plan(w, csr_min_sparsity=1.5)


def test_weight_stats_counts_exactly():
    w = torch.zeros(16, 16)
    w[0, 0] = w[9, 9] = w[9, 10] = 1.0
    st = ex.weight_stats(w, (8, 8))
    assert (st.zeros, st.empty_blocks, st.blocks, st.numel) == (253, 2, 4, 256)
    assert st.sparsity == 253 / 256 and st.block_sparsity == 0.5
    assert ex.weight_stats(torch.ones(6, 8), (4, 4)).empty_blocks is None
