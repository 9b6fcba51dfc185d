"""sparsekit.text: offline text as bytes, held-out split, windows."""

import pytest
import torch

from sparsekit import text


def test_encode_decode_round_trip_including_multibyte_characters():
    s = "Sparse ≠ dense: 2:4 → 50 %"
    ids = text.encode(s)
    assert ids.dtype == torch.int64 and int(ids.min()) >= 0 and int(ids.max()) < text.VOCAB_SIZE
    assert ids.numel() == len(s.encode("utf-8"))
    assert text.decode(ids) == s
    assert text.decode(ids[:-1]).endswith("\ufffd") or text.decode(ids[:-1]) == s[:-1]


def test_docs_split_is_disjoint_and_every_tenth_chunk():
    from pydoc_data.topics import topics

    whole = text.encode("\n\n".join(body for _, body in sorted(topics.items())))
    train, test = text.docs_bytes("train"), text.docs_bytes("test")
    assert train.numel() + test.numel() == whole.numel()
    chunks = whole.numel() // text.CHUNK
    held_out_chunks = chunks // text.HELD_OUT_EVERY
    assert held_out_chunks * text.CHUNK <= test.numel() <= (held_out_chunks + 1) * text.CHUNK
    # the first held-out chunk is chunk 9, exactly
    start = (text.HELD_OUT_EVERY - 1) * text.CHUNK
    assert torch.equal(test[: text.CHUNK], whole[start:start + text.CHUNK])
    assert torch.equal(train[:start], whole[:start])


def test_code_bytes_is_python_source_and_not_documentation():
    code = text.code_bytes()
    assert code.numel() > 100_000
    assert "def " in text.decode(code[:20_000]) and "import" in text.decode(code[:20_000])


def test_windows_consecutive_and_seeded():
    ids = torch.arange(1000) % 256
    w = text.windows(ids, 10)
    assert w.shape == (99, 11)
    assert torch.equal(w[1], ids[10:21])  # non-overlapping inputs, target shifted by one
    assert text.windows(ids, 10, count=3).shape == (3, 11)
    a = text.windows(ids, 10, count=5, seed=3)
    assert torch.equal(a, text.windows(ids, 10, count=5, seed=3))
    assert not torch.equal(a, text.windows(ids, 10, count=5, seed=4))
    assert all(torch.equal(r, ids[int(r[0]):int(r[0]) + 11]) for r in a)  # contiguous slices


@pytest.mark.parametrize("call, match", [
    (lambda: text.docs_bytes("valid"), "split"),
    (lambda: text.windows(torch.arange(5), 10), "at least length"),
    (lambda: text.windows(torch.zeros(2, 50, dtype=torch.long), 10), "1-D"),
    (lambda: text.windows(torch.arange(50), 0), "length"),
    (lambda: text.windows(torch.arange(50), 5, count=0, seed=1), "count"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_encode_refuses_bytes():
    with pytest.raises(TypeError, match="str"):
        text.encode(b"abc")
