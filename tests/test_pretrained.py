"""load_pretrained: the shipped asset is always hash-checked; a user file is checked or loaded unverified on purpose."""

import shutil

import pytest
import torch

import sparsekit.pretrained as pt


def _copy(tmp_path, name="w.pt"):
    dst = tmp_path / name
    shutil.copy(pt.ASSET, dst)
    return dst


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_user_file_needs_a_hash_or_a_stated_unverified(tmp_path):
    path = _copy(tmp_path)
    with pytest.raises(ValueError, match="sha256=<its hex digest>.*'unverified'"):
        pt.load_pretrained(path)
    shipped = pt.load_pretrained()
    assert _same_weights(pt.load_pretrained(path, sha256=pt.SHA256), shipped)
    assert _same_weights(pt.load_pretrained(path, sha256=pt.SHA256.upper()), shipped)
    assert _same_weights(pt.load_pretrained(path, sha256=pt.UNVERIFIED), shipped)


def test_a_flipped_bit_is_caught_whenever_a_hash_is_known(tmp_path):
    path = _copy(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        pt.load_pretrained(path, sha256=pt.SHA256)
    with pytest.raises(ValueError, match="sha256="):
        pt.load_pretrained(path)


def test_the_shipped_asset_is_checked_even_when_named_by_path(tmp_path, monkeypatch):
    path = _copy(tmp_path, "asset.pt")
    with open(path, "ab") as f:
        f.write(b"\0")
    monkeypatch.setattr(pt, "ASSET", path)
    for call in (lambda: pt.load_pretrained(), lambda: pt.load_pretrained(path)):
        with pytest.raises(ValueError, match="SHA-256"):
            call()


def test_truncated_or_foreign_files_raise_named_errors(tmp_path):
    truncated = _copy(tmp_path)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable torch.save checkpoint"):
        pt.load_pretrained(truncated, sha256=pt.UNVERIFIED)
    foreign = tmp_path / "foreign.pt"
    torch.save({"w": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="does not hold TinyTransformer"):
        pt.load_pretrained(foreign, sha256=pt.UNVERIFIED)


@pytest.mark.parametrize("sha256, exc, match", [
    (123, TypeError, "sha256 must be a hex string"),
    ("abc", ValueError, "64 hex digits"),
    ("g" * 64, ValueError, "64 hex digits"),
])
def test_bad_sha256_argument(tmp_path, sha256, exc, match):
    with pytest.raises(exc, match=match):
        pt.load_pretrained(_copy(tmp_path), sha256=sha256)
