"""Tests for sparsekit.report: one FLOP counter (FlopCounterMode) and storage bytes that match execute."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit as sk
from sparsekit import execute, report
from sparsekit import structured as S

X = torch.randn(16, 40, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["mlp", "cnn", "rescnn", "transformer"])
def test_cost_and_cost_report_agree(name: str) -> None:
    model = sk.models.build(name)
    rows = report.cost_report(model, X)
    assert report.totals(rows)["dense_flops"] == S.cost(model, X).flops == report.flop_counts(model, X)[""]


def test_attention_matmuls_are_counted() -> None:
    # Before: cost_report summed the Linear layers only and disagreed with structured.cost.
    tr = sk.models.TinyTransformer(d_model=64, num_heads=4, num_layers=2).eval()
    b, t, h, d = 16, 10, 4, 16
    rows = {r.name: r for r in report.cost_report(tr, X)}
    attention = 2 * 2 * (2 * b * h * t * t * d)  # 2 layers x 2 matmuls (Q K^T, A V) x 2 b h t t d
    assert rows[report.OTHER_OPS].dense_flops == rows[report.OTHER_OPS].effective_flops == attention
    assert rows[report.OTHER_OPS].params == 0 and rows[report.OTHER_OPS].sparsity == 0.0
    assert rows["layers.0.attn.q.weight"].dense_flops == 2 * 64 * 64 * b * t
    assert rows["head.weight"].dense_flops == 2 * 64 * 10 * b
    counts = report.flop_counts(tr, X)
    projections = sum(counts[f"layers.0.attn.{p}"] for p in ("q", "k", "v", "out"))
    assert counts["layers.0.attn"] == projections + attention // 2
    assert "total" in report.format_report(list(rows.values()))


def test_no_other_row_without_other_ops() -> None:
    names = [r.name for r in report.cost_report(sk.models.CNN1d(), X)]
    assert names == ["conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"]


def test_effective_flops_count_nonzeros() -> None:
    model = sk.models.MLP(40, (8,), 2)
    mask = torch.zeros(8, 40, dtype=torch.bool)
    mask[:, :10] = True
    sk.apply_masks(model, {"0.weight": mask})
    first = report.cost_report(model, X)[0]
    assert (first.dense_flops, first.effective_flops) == (2 * 320 * 16, 2 * 80 * 16)


def test_counting_keeps_every_module_mode() -> None:
    model = sk.models.CNN1d().train()
    model.bn2.eval()
    before = {n: m.training for n, m in model.named_modules()}
    report.cost_report(model, X)
    report.flop_counts(model, X)
    assert {n: m.training for n, m in model.named_modules()} == before
    with pytest.raises(TypeError, match="model must be an nn.Module, got str"):
        report.flop_counts("mlp", X)  # type: ignore[arg-type]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.99, 1.0])
def test_storage_bytes_equals_layout_bytes(sparsity: float) -> None:
    # Before: storage_bytes counted int64 indices; to_layout stores int32 ones.
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(24, 40, generator=gen)
    w[torch.rand(w.shape, generator=gen) < sparsity] = 0
    b = report.storage_bytes(w)
    assert b["csr"] == execute.layout_bytes(execute.to_layout(w, "csr"))
    assert b["dense"] == execute.layout_bytes(w)
    assert report.storage_bytes(w, index_bytes=8)["csr"] == execute.layout_bytes(w.to_sparse_csr())
    conv = torch.randn(6, 4, 5, generator=gen)  # viewed as 6 x 20
    conv[conv.abs() < sparsity] = 0
    assert report.storage_bytes(conv)["csr"] == execute.layout_bytes(execute.to_layout(conv.reshape(6, 20), "csr"))


def test_storage_bytes_index_bytes_is_checked() -> None:
    for bad, error in ((0, ValueError), (True, TypeError), (4.0, TypeError)):
        with pytest.raises(error, match="index_bytes must be a positive int, got"):
            report.storage_bytes(torch.ones(2, 3), index_bytes=bad)


def test_storage_bytes_of_a_dense_tensor() -> None:
    assert report.storage_bytes(torch.ones(2, 3)) == {"dense": 24, "csr": 6 * 8 + 3 * 4, "bitmask": 1 + 24}
    assert report.storage_bytes(nn.Linear(3, 2).weight.detach() * 0)["csr"] == 3 * 4


# --- break_even_sparsity: exact break-even against storage_bytes, nonzero count by nonzero count ----------


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 2), (16,), (1, 9), (8, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("index_bytes", [4, 8])
def test_break_even_sparsity_matches_storage_bytes(shape: tuple[int, ...], dtype: torch.dtype,
                                                   index_bytes: int) -> None:
    # Oracle: storage_bytes of a real tensor for every possible number of nonzeros. Each format is
    # smaller than dense exactly when the tensor's sparsity is above break_even_sparsity, equal at it.
    from fractions import Fraction
    n = 1
    for d in shape:
        n *= d
    value_bytes = torch.empty((), dtype=dtype).element_size()
    for nnz in range(n + 1):
        w = torch.zeros(n, dtype=dtype)
        w[:nnz] = 1.0
        b = report.storage_bytes(w.reshape(shape), index_bytes=index_bytes)
        s = Fraction(n - nnz, n)
        for fmt in ("csr", "bitmask"):
            star = report.break_even_sparsity(fmt, shape, value_bytes=value_bytes, index_bytes=index_bytes)
            assert isinstance(star, Fraction)
            assert (b[fmt] < b["dense"]) == (s > star), (fmt, nnz)
            assert (b[fmt] == b["dense"]) == (s == star), (fmt, nnz)


def test_break_even_sparsity_values() -> None:
    from fractions import Fraction
    # Large-matrix limits: CSR index/(value+index), bitmask 1/(8 value).
    assert report.break_even_sparsity("csr") == Fraction(1, 2)
    assert report.break_even_sparsity("csr", index_bytes=8) == Fraction(2, 3)
    assert report.break_even_sparsity("bitmask") == Fraction(1, 32)
    assert report.break_even_sparsity("bitmask", value_bytes=2) == Fraction(1, 16)
    # 256 x 256 float32, int32 indices: 8 nnz + 4 * 257 = 4 * 65536 -> s* = 1/2 + 257 / 131072.
    assert report.break_even_sparsity("csr", (256, 256)) == Fraction(1, 2) + Fraction(257, 131072)
    assert report.break_even_sparsity("bitmask", (256, 256)) == Fraction(1, 32)
    # A conv weight is rows x (in * kernel); a shape with few columns never wins with CSR.
    assert report.break_even_sparsity("csr", (32, 32, 5)) == Fraction(1, 2) + Fraction(33, 2 * 5120)
    assert report.break_even_sparsity("csr", (1000, 1)) > 1


@pytest.mark.parametrize("kwargs, err", [
    ({"fmt": "coo"}, ValueError),
    ({"fmt": None}, ValueError),
    ({"fmt": "csr", "shape": ()}, ValueError),
    ({"fmt": "csr", "shape": "256"}, ValueError),
    ({"fmt": "csr", "shape": 256}, ValueError),
    ({"fmt": "csr", "shape": (256, 0)}, ValueError),
    ({"fmt": "csr", "shape": (256, 2.5)}, TypeError),
    ({"fmt": "csr", "value_bytes": 0}, ValueError),
    ({"fmt": "bitmask", "index_bytes": True}, TypeError),
])
def test_break_even_sparsity_bad_input(kwargs: dict, err: type) -> None:
    with pytest.raises(err):
        report.break_even_sparsity(**kwargs)
