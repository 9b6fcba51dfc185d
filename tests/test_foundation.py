"""Data, models, training loop, cost report and plotting helpers (timing: test_bench.py)."""

import math
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import torch
from torch import nn

import sparsekit as sk
from sparsekit import data, models, report, train, viz

matplotlib.use("Agg")


# --- data ---------------------------------------------------------------------------

def test_mnist1d_shapes_split_and_cache():
    s = data.mnist1d()
    assert s.sizes() == {"train": 4000, "val": 0, "test": 1000}
    assert s.x_train.shape == (4000, 40) and s.x_train.dtype == torch.float32
    assert s.y_train.dtype == torch.int64 and set(s.y_train.tolist()) == set(range(10))
    assert s.templates.shape == (10, 12)
    again = data.mnist1d()
    assert torch.equal(again.x_train, s.x_train)  # deterministic (and cached)


def test_mnist1d_validation_split_comes_from_train():
    full, split = data.mnist1d(), data.mnist1d(val_size=500)
    assert split.sizes() == {"train": 3500, "val": 500, "test": 1000}
    assert torch.equal(split.x_val, full.x_train[3500:])
    assert torch.equal(split.x_test, full.x_test)


@pytest.mark.parametrize("kwargs, exc", [(dict(val_size=-1), ValueError), (dict(val_size=4000), ValueError),
                                         (dict(not_an_arg=1), ValueError)])
def test_mnist1d_bad_input(kwargs, exc):
    with pytest.raises(exc):
        data.mnist1d(**kwargs)


def test_digits_offline():
    s = data.digits()
    assert s.x_train.shape[1] == 64 and s.sizes()["test"] == 297
    assert float(s.x_train.max()) <= 1.0
    with pytest.raises(ValueError):
        data.digits(test_size=0)


def test_loader_is_seeded_and_covers_every_example():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    a = [b[1].tolist() for b in data.loader(x, y, 4, shuffle=True, seed=1)]
    b = [b[1].tolist() for b in data.loader(x, y, 4, shuffle=True, seed=1)]
    c = [b[1].tolist() for b in data.loader(x, y, 4, shuffle=True, seed=2)]
    assert a == b and a != c
    assert [len(batch) for batch in a] == [4, 4, 2]
    assert sorted(sum(a, [])) == list(range(10))
    assert [b[1].tolist() for b in data.loader(x, y, 5)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


@pytest.mark.parametrize("kwargs", [dict(batch_size=0), dict(batch_size=2.5)])
def test_loader_bad_batch_size(kwargs):
    with pytest.raises(ValueError, match="batch_size"):
        data.loader(torch.zeros(4, 1), torch.zeros(4), **kwargs)


def test_loader_length_mismatch():
    with pytest.raises(ValueError, match="length"):
        data.loader(torch.zeros(4, 1), torch.zeros(3))


def test_loaders_triple():
    tr, te, val = data.loaders(data.mnist1d(), batch_size=100)
    assert len(tr) == 40 and val is None and next(iter(te))[0].shape == (1000, 40)


# --- models -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_models_forward_shape_and_fx_traceable(name):
    model = models.build(name)
    x = torch.randn(3, 40)
    assert model(x).shape == (3, 10)
    if name != "mlp":
        assert torch.equal(model.eval()(x.unsqueeze(1)), model(x))  # [B, 1, 40] is accepted too
    concrete = {"head_masks": None} if name == "transformer" else None
    traced = torch.fx.symbolic_trace(model, concrete_args=concrete)
    model.eval()
    assert torch.allclose(traced(x), model(x))
    assert sk.prunable_weights(model)


def test_build_unknown_model():
    with pytest.raises(ValueError, match="unknown model"):
        models.build("vgg")


@pytest.mark.parametrize("make", [lambda: models.MLP(0), lambda: models.CNN1d((8, 8)),
                                  lambda: models.TinyTransformer(patch_size=3),
                                  lambda: models.TinyTransformer(d_model=30, num_heads=4),
                                  lambda: models.ResCNN1d(channels=0)])
def test_model_bad_sizes(make):
    with pytest.raises(ValueError):
        make()


def test_transformer_head_mask_gates_heads():
    torch.manual_seed(0)
    model = models.TinyTransformer().eval()
    x = torch.randn(2, 40)
    ones = [torch.ones(4) for _ in model.layers]
    assert torch.allclose(model(x, ones), model(x))
    zeros = [torch.zeros(4) for _ in model.layers]
    assert not torch.allclose(model(x, zeros), model(x))


def test_count_parameters():
    assert models.count_parameters(models.MLP(40, (8,), 10)) == 40 * 8 + 8 + 8 * 10 + 10


# --- training -----------------------------------------------------------------------

def _tiny_task():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=gen)
    y = (x[:, 0] > 0).long()
    return data.loader(x, y, 32, shuffle=True, seed=0), data.loader(x, y, 256)


def test_train_learns_and_is_deterministic():
    def run():
        tr, val = _tiny_task()  # fresh loaders: a loader's shuffling generator advances per epoch
        sk.seed_everything(0)
        model = models.MLP(8, (16,), 2)
        hist = train.train(model, tr, epochs=5, lr=1e-2, val_loader=val, progress=False)
        return model, hist

    (m1, h1), (m2, h2) = run(), run()
    assert h1.final_acc > 0.9
    assert h1.val_loss == h2.val_loss and h1.steps == [8, 16, 24, 32, 40]
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    assert h1.early_stop_step in h1.steps


def test_train_steps_hook_and_eval_every():
    tr, val = _tiny_task()
    seen = []
    model = models.MLP(8, (16,), 2)
    hist = train.train(model, tr, steps=20, val_loader=val, eval_every=7, progress=False,
                       step_hook=lambda step, m: seen.append(step))
    assert seen == list(range(1, 21))
    assert hist.steps == [7, 14, 20]


def test_train_keeps_masks():
    tr, _ = _tiny_task()
    model = models.MLP(8, (16,), 2)
    masks = {n: torch.rand(p.shape) > 0.5 for n, p in sk.prunable_weights(model).items()}
    sk.apply_masks(model, masks)
    train.train(model, tr, epochs=2, optimizer=train.make_optimizer(model, "sgd", 0.1, 1e-3), progress=False)
    for name, w in sk.effective_weights(model).items():
        assert torch.all(w[~masks[name]] == 0)


@pytest.mark.parametrize("kwargs", [dict(), dict(epochs=1, steps=3), dict(epochs=0), dict(steps=5, eval_every=-1)])
def test_train_bad_input(kwargs):
    tr, _ = _tiny_task()
    with pytest.raises(ValueError):
        train.train(models.MLP(8, (4,), 2), tr, progress=False, **kwargs)


def test_history_empty_errors():
    with pytest.raises(ValueError):
        _ = train.History().final_acc
    with pytest.raises(ValueError):
        _ = train.History().early_stop_step


def test_evaluate_and_accuracy_restore_mode():
    tr, val = _tiny_task()
    model = models.MLP(8, (4,), 2).train()
    loss, acc = train.evaluate(model, val)
    assert model.training and 0 <= acc <= 1 and loss > 0
    x, y = next(iter(val))
    assert train.accuracy(model, x, y) == pytest.approx(acc)
    assert model.training


def test_make_optimizer():
    model = models.MLP(8, (4,), 2)
    assert isinstance(train.make_optimizer(model, "adamw", 1e-3, 0.1), torch.optim.AdamW)
    with pytest.raises(ValueError, match="optimizer"):
        train.make_optimizer(model, "lion")


# --- seeding ------------------------------------------------------------------------

def test_seed_everything_repeats_and_validates():
    sk.seed_everything(5)
    a = torch.rand(3)
    sk.seed_everything(5)
    assert torch.equal(a, torch.rand(3))
    with pytest.raises(ValueError):
        sk.seed_everything(-1)


def test_seeds_start_at_the_environment_base(monkeypatch):
    monkeypatch.delenv("SPARSEKIT_SEED_BASE", raising=False)
    assert sk.seeds(3) == [0, 1, 2]
    monkeypatch.setenv("SPARSEKIT_SEED_BASE", "100")
    assert sk.seeds(3) == [100, 101, 102] and sk.seeds(1) == [100]
    for bad_base in ("-1", "abc", "1.5"):
        monkeypatch.setenv("SPARSEKIT_SEED_BASE", bad_base)
        with pytest.raises(ValueError, match="SPARSEKIT_SEED_BASE must be a non-negative integer"):
            sk.seeds(2)
    monkeypatch.setenv("SPARSEKIT_SEED_BASE", "7")
    for bad_n in (0, -2, 2.0, True, "3"):
        with pytest.raises(ValueError, match="n must be a positive int"):
            sk.seeds(bad_n)


# --- cost report --------------------------------------------------------------------

def test_cost_report_counts_flops_and_bytes():
    model = models.MLP(4, (3,), 2)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0] = True
    sk.apply_masks(model, {"0.weight": mask})
    rows = report.cost_report(model, torch.randn(5, 4))
    first = rows[0]
    assert (first.name, first.shape, first.params, first.nonzeros) == ("0.weight", (3, 4), 12, 4)
    assert first.dense_flops == 2 * 12 * 5 and first.effective_flops == 2 * 4 * 5
    assert first.dense_bytes == 48
    assert first.csr_bytes == 4 * (4 + 4) + 4 * 4
    assert first.bitmask_bytes == 2 + 4 * 4
    assert first.sparsity == pytest.approx(2 / 3)
    t = report.totals(rows)
    assert t["params"] == 12 + 6 and t["nonzeros"] == 4 + int((model[2].weight != 0).sum())
    text = report.format_report(rows)
    assert "0.weight" in text and "total" in text


def test_cost_report_conv_positions():
    model = models.CNN1d()
    rows = {r.name: r for r in report.cost_report(model, torch.randn(2, 40))}
    assert rows["conv1.weight"].dense_flops == 2 * rows["conv1.weight"].params * 2 * 19
    assert rows["fc.weight"].dense_flops == 2 * rows["fc.weight"].params * 2


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")  # torch's, for Linear(4, 0)
def test_cost_report_zero_width_layer():
    model = nn.Sequential(nn.Linear(4, 0), nn.Linear(0, 2))
    rows = report.cost_report(model, torch.randn(3, 4))
    assert [r.dense_flops for r in rows] == [0, 0]


def test_storage_bytes_dense_tensor():
    b = report.storage_bytes(torch.ones(2, 3))
    assert b == {"dense": 24, "csr": 6 * 8 + 3 * 4, "bitmask": 1 + 24}


# --- plotting -----------------------------------------------------------------------

def test_viz_helpers_draw():
    import matplotlib.pyplot as plt

    masks = {"a": torch.rand(4, 5) > 0.5, "b": torch.rand(3, 3) > 0.2}
    ax = viz.plot_mask(masks["a"], title="a")
    assert ax.get_xlabel() == "input index"
    ax = viz.plot_layer_sparsity({"global": masks, "layer": masks})
    assert len(ax.patches) == 4
    ax = viz.plot_curves([0.5, 0.9], {"m": [[0.8, 0.82], [0.6, 0.7]]}, logx=True)
    assert ax.get_xscale() == "log"
    ax = viz.plot_weight_histogram({"w": torch.randn(100)}, threshold=0.5)
    assert ax.get_yscale() == "log"
    plt.close("all")
    assert viz.mean_spread([1.0, 3.0]) == (2.0, 1.0)
    assert math.isclose(viz.mean_spread([2.0])[1], 0.0)
    with pytest.raises(ValueError):
        viz.mean_spread([])
    with pytest.raises(ValueError):
        viz.plot_layer_sparsity({})


def test_import_sparsekit_does_not_import_matplotlib():
    code = ("import sys; import sparsekit as sk; print('matplotlib' in sys.modules); "
            "import matplotlib; matplotlib.use('Agg'); import torch; "
            "ax = sk.viz.plot_mask(torch.ones(2, 3, dtype=torch.bool)); print(ax.get_xlabel()); "
            "print('viz' in dir(sk), 'matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split("\n")[:3] == ["False", "input index", "True True"]


def test_public_api_names():
    for name in ["prunable_weights", "apply_masks", "get_masks", "remove_masks", "sparsity", "select_masks",
                 "seed_everything", "scores"]:
        assert hasattr(sk, name)
    with pytest.raises(AttributeError):
        sk.does_not_exist  # noqa: B018
    assert "lottery" in dir(sk)


def test_sequential_transformer_param_names_are_plain():
    model = models.TinyTransformer()
    names = list(sk.prunable_weights(model))
    assert names[0] == "embed.weight" and "layers.0.attn.q.weight" in names and names[-1] == "head.weight"
    assert isinstance(model.layers[0].attn.q, nn.Linear)


# --- issue 12: any two-argument loss; named errors ----------------------------------


def test_evaluate_accepts_any_two_argument_loss():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(70, 8, generator=gen)
    y = (x[:, 0] > 0).long()
    val = data.loader(x, y, 32)  # batches of 32, 32, 6: the mean is weighted by batch size
    model = models.MLP(8, (4,), 2)
    with torch.no_grad():
        expected = float(nn.functional.cross_entropy(model(x), y))
    ref_loss, ref_acc = train.evaluate(model, val)
    assert ref_loss == pytest.approx(expected, rel=1e-6)
    for loss_fn in (nn.CrossEntropyLoss(), lambda logits, t: nn.functional.cross_entropy(logits, t)):
        loss, acc = train.evaluate(model, val, loss_fn)
        assert loss == pytest.approx(expected, rel=1e-6) and acc == ref_acc
    tr, _ = _tiny_task()
    hist = train.train(model, tr, steps=3, loss_fn=nn.CrossEntropyLoss(), val_loader=val, progress=False)
    assert len(hist.val_loss) == 1
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        train.evaluate(model, val, "cross_entropy")


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(steps=True), TypeError, "steps must be a positive int, got bool"),
    (dict(epochs=1.5), TypeError, "epochs must be a positive int"),
    (dict(steps=5, eval_every=0), ValueError, "eval_every must be a positive int, got 0"),
])
def test_train_named_errors(kwargs, exc, match):
    tr, _ = _tiny_task()
    with pytest.raises(exc, match=match):
        train.train(models.MLP(8, (4,), 2), tr, progress=False, **kwargs)


@pytest.mark.parametrize("make, exc, match", [
    (lambda: models.MLP(8, 8), TypeError, "hidden must be a sequence of positive ints.*got int 8"),
    (lambda: models.MLP(8, (8, 0)), ValueError, r"hidden\[1\] must be a positive int, got 0"),
    (lambda: models.MLP(8, (8,), True), TypeError, "num_classes"),
    (lambda: models.CNN1d(32), TypeError, "channels must be a sequence of 3 positive ints, got int 32"),
    (lambda: models.CNN1d((8, 8)), ValueError, r"channels must be 3 positive ints, got 2: \(8, 8\)"),
    (lambda: models.CNN1d(seq_len=14), ValueError, "seq_len must be >= 15 .*got 14"),
    (lambda: models.ResCNN1d(channels=1.5), TypeError, "channels must be a positive int, got float 1.5"),
    (lambda: models.ResCNN1d(blocks=-1), ValueError, "blocks must be a non-negative int, got -1"),
    (lambda: models.ResidualBlock1d(8, kernel_size=4), ValueError, "kernel_size must be an odd positive int"),
    (lambda: models.TinyTransformer(d_model="a"), TypeError, "d_model must be a positive int, got str 'a'"),
    (lambda: models.TinyTransformer(num_heads=0), ValueError, "num_heads must be a positive int, got 0"),
    (lambda: models.TinyTransformer(d_ff=0), ValueError, "d_ff must be a positive int, got 0"),
    (lambda: models.MultiHeadSelfAttention(2, 4), ValueError, "d_model=2 must be >= num_heads=4"),
    (lambda: models.count_parameters("x"), TypeError, "model must be an nn.Module, got str"),
])
def test_model_named_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_validation_helpers():
    np = pytest.importorskip("numpy")
    from sparsekit import _validate as v
    assert v.fraction(np.float32(0.5), "s") == 0.5 and isinstance(v.fraction(np.float32(0.5), "s"), float)
    assert v.integer(np.int64(3), "n") == 3 and type(v.integer(np.int64(3), "n")) is int
    for bad in (True, np.bool_(True), "0.5", None):
        with pytest.raises(TypeError, match="s must be a number in \\[0, 1\\), got"):
            v.fraction(bad, "s")
    for bad in (1.0, float("nan"), -0.1, float("inf")):
        with pytest.raises(ValueError, match="s must be"):
            v.fraction(bad, "s")
    assert v.fraction(1.0, "s", allow_one=True) == 1.0
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        v.positive_int(0, "n")
    with pytest.raises(TypeError, match="n must be a positive int, got float 2.0"):
        v.positive_int(2.0, "n")
    with pytest.raises(ValueError):  # wrong types are also ValueErrors (earlier checks raised those)
        v.positive_int(True, "n")
    assert v.seed(-3) == -3
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        v.seed(-3, low=0)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: data.loader([1.0, 2.0], torch.zeros(2), 2), TypeError, "x must be a Tensor, got list"),
    (lambda: data.loader(torch.zeros(2, 1), (0, 1), 2), TypeError, "y must be a Tensor, got tuple"),
    (lambda: data.loader(torch.zeros(2, 1), torch.zeros(2), 2, shuffle=True, seed=None), TypeError,
     "seed must be an int"),
    (lambda: data.loaders("splits"), TypeError, "splits must be a sparsekit.data.Splits"),
    (lambda: data.mnist1d(seed=1.5), TypeError, "seed must be an int >= 0"),
    (lambda: data.mnist1d(seed=-1), ValueError, "seed must be an int >= 0"),
    (lambda: data.digits(seed="0"), TypeError, "seed must be an int"),
])
def test_data_named_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_viz_named_errors():
    with pytest.raises(TypeError, match="mask must be a Tensor, got list"):
        viz.plot_mask([[True, False]])
    with pytest.raises(ValueError, match=r"curves\['m'\] must hold one list of seeds per x \(1\), got 2"):
        viz.plot_curves([0.5], {"m": [[0.1], [0.2]]})
    masks = {"a": torch.ones(2, 2, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"masks_by_label\['other'\] must have the layers"):
        viz.plot_layer_sparsity({"one": masks, "other": {"b": masks["a"]}})
