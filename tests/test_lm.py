"""sparsekit.lm: the byte-level LM of chapter 7 — causality, the shipped weights, the recipe."""

import math
import shutil

import pytest
import torch

from sparsekit import lm, text


@pytest.fixture(scope="module")
def shipped():
    return lm.load_pretrained_lm()


def test_shape_parameters_and_linear_layers():
    model = lm.ByteLM(**lm.CONFIG)
    assert sum(p.numel() for p in model.parameters()) == 875_264
    names = model.block_linears()
    assert len(names) == 16 and names[:4] == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.fc1", "blocks.0.fc2"]
    assert model(torch.zeros(2, 7, dtype=torch.long)).shape == (2, 7, text.VOCAB_SIZE)


def test_causal_the_future_does_not_change_the_past():
    torch.manual_seed(0)
    model = lm.ByteLM(d_model=32, num_heads=2, num_layers=2, context=16).eval()
    ids = torch.randint(0, 256, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 256
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_shipped_weights_load_hash_checked_and_score_as_recorded(shipped):
    assert not shipped.training
    ppl = lm.perplexity(shipped, text.docs_bytes("test")[:16_385])
    assert 2.5 < ppl < 3.3  # the full held-out text scores 2.895 per byte (module docstring of the chapter)
    assert lm.perplexity(shipped, text.code_bytes()[:16_385]) > ppl  # code is out of domain


def test_perplexity_of_a_uniform_model_is_256():
    model = lm.ByteLM(d_model=8, num_heads=1, num_layers=1, context=16)
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    assert lm.perplexity(model, torch.arange(200) % 256) == pytest.approx(256.0, rel=1e-5)


def test_generate_is_seeded_and_keeps_the_prompt(shipped):
    a = lm.generate(shipped, "The ", 20, seed=1)
    assert a.startswith("The ") and len(a.encode("utf-8", errors="surrogatepass")) >= 4
    assert a == lm.generate(shipped, "The ", 20, seed=1)
    before = torch.random.get_rng_state()
    lm.generate(shipped, "x", 3, seed=2)
    assert torch.equal(before, torch.random.get_rng_state())
    with pytest.raises(ValueError, match="temperature"):
        lm.generate(shipped, "x", 3, temperature=0.0)


def test_a_modified_copy_is_refused_without_its_hash(tmp_path, shipped):
    path = tmp_path / "w.pt"
    shutil.copy(lm.ASSET, path)
    with pytest.raises(ValueError, match="sha256="):
        lm.load_pretrained_lm(path)
    same = lm.load_pretrained_lm(path, sha256=lm.SHA256)
    assert all(torch.equal(x, y) for x, y in zip(same.state_dict().values(), shipped.state_dict().values()))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        lm.load_pretrained_lm(path, sha256=lm.SHA256)


def test_the_recipe_is_deterministic_and_learns():
    """Two short runs of the recipe (on a small model) give identical weights and beat the uniform 256."""
    small = {"d_model": 32, "num_heads": 2, "num_layers": 1, "context": 32}
    a = lm.make_pretrained_lm(steps=60, warmup=10, progress=False, config=small)
    b = lm.make_pretrained_lm(steps=60, warmup=10, progress=False, config=small)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert lm.perplexity(a, text.docs_bytes("test")[:4097]) < 0.25 * 256


@pytest.mark.parametrize("kwargs, match", [
    ({"d_model": 10, "num_heads": 3}, "multiple"),
    ({"context": 0}, "context"),
    ({"num_layers": -1}, "num_layers"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lm.ByteLM(**kwargs)


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="context"):
        lm.ByteLM(d_model=8, num_heads=1, num_layers=1, context=4)(torch.zeros(1, 5, dtype=torch.long))


def test_perplexity_on_evenly_spaced_windows(shipped):
    ids = text.docs_bytes("test")[: 20 * 128 + 1]
    assert lm.perplexity(shipped, ids, windows=100) == lm.perplexity(shipped, ids)  # more than there are: all
    # windows=2 of 20: the first and the last window, each 128 predictions
    first, last = lm.perplexity(shipped, ids[:129]), lm.perplexity(shipped, ids[19 * 128:])
    assert lm.perplexity(shipped, ids, windows=2) == pytest.approx(math.sqrt(first * last), rel=1e-6)
    with pytest.raises(ValueError, match="windows"):
        lm.perplexity(shipped, ids, windows=0)


def test_train_lm_keeps_masks_in_force():
    import sparsekit as sk

    small = lm.ByteLM(d_model=16, num_heads=2, num_layers=1, context=16)
    names = small.block_linears()
    gen = torch.Generator().manual_seed(0)
    masks = {f"{n}.weight": torch.rand(small.get_submodule(n).weight.shape, generator=gen) > 0.5 for n in names}
    sk.apply_masks(small, masks)
    lm.train_lm(small, 5, warmup=1, progress=False)
    for n in names:
        assert (small.get_submodule(n).weight[~masks[f"{n}.weight"]] == 0).all()
    assert not small.training
