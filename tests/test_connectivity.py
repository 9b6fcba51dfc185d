"""Tests for sparsekit.connectivity: linear mode connectivity (Frankle et al. 2020)."""

from __future__ import annotations

import pytest
import torch
from lottery_task import frozen as _frozen
from lottery_task import mlp as _mlp
from lottery_task import splits as _splits

import sparsekit as sk
from sparsekit import connectivity

DATA = _splits()


def test_lives_in_its_own_module() -> None:
    assert sk.connectivity is connectivity
    for name in ("interpolate_states", "error_barrier", "barrier_above_line", "LMCResult", "instability"):
        assert hasattr(connectivity, name) and not hasattr(sk.lottery, name), name


def test_error_barrier() -> None:
    assert connectivity.error_barrier([0.1, 0.5, 0.3]) == pytest.approx(0.3)
    assert connectivity.error_barrier([0.2, 0.1, 0.2]) == pytest.approx(0.0)
    assert connectivity.error_barrier([0.2, 0.2]) == 0.0
    with pytest.raises(ValueError, match="two"):
        connectivity.error_barrier([0.1])


def _oracle_above_line(errors: list[float]) -> float:
    """Entezari et al. 2022, Eq. 1, written out: alpha_i = i / n, line = (1 - alpha) E0 + alpha E1."""
    n = len(errors) - 1
    return max(e - ((1 - i / n) * errors[0] + (i / n) * errors[-1]) for i, e in enumerate(errors))


def test_barrier_above_line_known_values() -> None:
    # a straight path from 0.1 to 0.3: no barrier above the line; Frankle's barrier is half the gap
    linear = [0.1, 0.15, 0.2, 0.25, 0.3]
    assert connectivity.barrier_above_line(linear) == pytest.approx(0.0, abs=1e-12)
    assert connectivity.error_barrier(linear) == pytest.approx(0.1)
    # a bump of 0.2 above the line at the midpoint
    assert connectivity.barrier_above_line([0.1, 0.4, 0.3]) == pytest.approx(0.2)
    # a path below the line: the end points give the maximum, 0
    assert connectivity.barrier_above_line([0.2, 0.1, 0.2]) == 0.0
    assert connectivity.barrier_above_line([0.2, 0.4]) == 0.0
    with pytest.raises(ValueError, match="two"):
        connectivity.barrier_above_line([0.1])
    with pytest.raises(ValueError, match="two"):
        connectivity.barrier_above_line([])


def test_barrier_above_line_matches_the_oracle_and_bounds() -> None:
    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 11, 21):
        for _ in range(50):
            errors = torch.rand(n, generator=gen, dtype=torch.float64).tolist()
            above = connectivity.barrier_above_line(errors)
            frankle = connectivity.error_barrier(errors)
            assert above == pytest.approx(_oracle_above_line(errors), abs=1e-12)
            assert above >= 0.0
            # the two definitions differ by at most half the end-point gap, in either direction
            assert abs(frankle - above) <= abs(errors[-1] - errors[0]) / 2 + 1e-12
            # Frankle's is at least half the end-point gap, whatever the path
            assert frankle >= abs(errors[-1] - errors[0]) / 2 - 1e-12


def test_interpolate_states() -> None:
    a = {"w": torch.zeros(3), "n": torch.tensor(4)}
    b = {"w": torch.ones(3), "n": torch.tensor(9)}
    assert torch.equal(connectivity.interpolate_states(a, b, 0.0)["w"], a["w"])
    assert torch.equal(connectivity.interpolate_states(a, b, 1.0)["w"], b["w"])
    mid = connectivity.interpolate_states(a, b, 0.25)
    assert torch.allclose(mid["w"], torch.full((3,), 0.25)) and int(mid["n"]) == 4
    with pytest.raises(ValueError, match="alpha"):
        connectivity.interpolate_states(a, b, 1.5)
    with pytest.raises(ValueError, match="keys"):
        connectivity.interpolate_states(a, {"w": b["w"]}, 0.5)


def test_instability_of_identical_runs_is_zero() -> None:
    # a frozen optimizer makes both copies identical: the error is flat along the line
    lmc = connectivity.instability(_mlp, DATA, rewind_step=0, steps=3, optimizer_fn=_frozen, num_alphas=5,
                              progress=False)
    assert lmc.alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert max(lmc.errors) - min(lmc.errors) < 1e-9 and abs(lmc.barrier) < 1e-9
    assert abs(lmc.barrier_above_line) < 1e-9 and lmc.endpoint_gap < 1e-9


def test_instability_trained_copies_differ_and_barrier_is_consistent() -> None:
    masks = {"0.weight": torch.rand(32, 40, generator=torch.Generator().manual_seed(0)) > 0.5}
    lmc = connectivity.instability(_mlp, DATA, rewind_step=4, steps=40, masks=masks, num_alphas=5, progress=False)
    assert lmc.barrier == pytest.approx(connectivity.error_barrier(lmc.errors))
    assert lmc.barrier_above_line == pytest.approx(_oracle_above_line(lmc.errors))
    assert lmc.endpoint_gap == pytest.approx(abs(lmc.errors[-1] - lmc.errors[0]))
    assert lmc.end_acc == (pytest.approx(1 - lmc.errors[0]), pytest.approx(1 - lmc.errors[-1]))
    assert all(0.0 <= e <= 1.0 for e in lmc.errors)


def test_instability_bad_input() -> None:
    with pytest.raises(ValueError, match="data_seeds"):
        connectivity.instability(_mlp, DATA, rewind_step=0, steps=3, data_seeds=(1, 1))
    with pytest.raises(ValueError, match="rewind_step"):
        connectivity.instability(_mlp, DATA, rewind_step=3, steps=3)
    with pytest.raises(ValueError, match="num_alphas"):
        connectivity.instability(_mlp, DATA, rewind_step=0, steps=3, num_alphas=1)
    with pytest.raises(TypeError, match="model_fn"):
        connectivity.instability(None, DATA, rewind_step=0, steps=3)


def test_instability_needs_no_validation_split() -> None:
    """No early stopping here: a Splits without a validation split is fine (IMP refuses it)."""
    lmc = connectivity.instability(_mlp, _splits(n_val=0), rewind_step=0, steps=2, optimizer_fn=_frozen,
                                   num_alphas=2, progress=False)
    assert lmc.barrier == 0.0
    with pytest.raises(TypeError, match="data must be a sparsekit.data.Splits, got tuple"):
        connectivity.instability(_mlp, (DATA.x_train, DATA.y_train), rewind_step=0, steps=2)
