"""sparsekit.lm: the byte-level LM of chapter 7 — causality, the shipped weights, the recipe."""

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
