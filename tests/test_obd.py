"""Optimal Brain Damage saliency (sparsekit.obd): empirical Fisher diagonal against a per-example loop."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit as sk
from sparsekit import obd


def _model_and_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(9, 5)
    y = torch.randint(0, 3, (9,))
    return model, x, y


def _oracle(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example gradients by a plain loop over examples, squared and averaged."""
    weights = {"0.weight": model[0].weight, "2.weight": model[2].weight}
    total = {n: torch.zeros_like(w) for n, w in weights.items()}
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        grads = torch.autograd.grad(loss, list(weights.values()))
        for n, g in zip(weights, grads):
            total[n] += g.square()
    return {n: t / len(x) for n, t in total.items()}


def test_fisher_diagonal_matches_a_per_example_loop_whatever_the_chunk() -> None:
    model, x, y = _model_and_batch()
    expected = _oracle(model, x, y)
    for chunk in (1, 4, 100):
        got = obd.fisher_diagonal(model, x, y, chunk=chunk)
        assert list(got) == ["0.weight", "2.weight"]
        for n in expected:
            torch.testing.assert_close(got[n], expected[n], rtol=1e-5, atol=1e-8)


def test_obd_saliency_is_half_fisher_times_w_squared_and_model_unchanged() -> None:
    model, x, y = _model_and_batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    fisher = _oracle(model, x, y)
    sal = obd.obd_saliency(model, x, y)
    for n, w in (("0.weight", model[0].weight), ("2.weight", model[2].weight)):
        torch.testing.assert_close(sal[n], 0.5 * fisher[n] * w.detach().square(), rtol=1e-5, atol=1e-10)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_masked_entries_score_zero_and_kept_entries_see_the_pruned_network() -> None:
    model, x, y = _model_and_batch()
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[0, :3] = False
    sk.apply_masks(model, {"0.weight": mask})
    sal = obd.obd_saliency(model, x, y)
    assert (sal["0.weight"][~mask] == 0).all()
    # oracle: the same network with the pruned weights zeroed and no mask
    plain = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        plain[0].weight.copy_(model[0].weight)
        plain[0].bias.copy_(model[0].bias)
        plain[2].weight.copy_(model[2].weight)
        plain[2].bias.copy_(model[2].bias)
    fisher = _oracle(plain, x, y)
    expected = 0.5 * fisher["0.weight"] * plain[0].weight.detach().square()
    torch.testing.assert_close(sal["0.weight"][mask], expected[mask], rtol=1e-5, atol=1e-10)


def test_works_under_no_grad_and_inference_mode() -> None:
    model, x, y = _model_and_batch()
    expected = obd.fisher_diagonal(model, x, y)
    with torch.no_grad():
        a = obd.fisher_diagonal(model, x, y)
    with torch.inference_mode():
        b = obd.fisher_diagonal(model, x, y)
    for n in expected:
        torch.testing.assert_close(a[n], expected[n])
        torch.testing.assert_close(b[n], expected[n])


def test_bad_input() -> None:
    model, x, y = _model_and_batch()
    with pytest.raises(TypeError, match="model"):
        obd.obd_saliency("net", x, y)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="inputs"):
        obd.obd_saliency(model, x.tolist(), y)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one label per input"):
        obd.obd_saliency(model, x, y[:-1])
    with pytest.raises(ValueError, match="non-empty"):
        obd.obd_saliency(model, x[:0], y[:0])
    with pytest.raises(ValueError, match="chunk"):
        obd.fisher_diagonal(model, x, y, chunk=0)
    with pytest.raises(TypeError, match="loss_fn"):
        obd.fisher_diagonal(model, x, y, loss_fn="ce")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no Linear"):
        obd.obd_saliency(nn.Sequential(nn.ReLU()), x, y)
