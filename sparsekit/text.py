"""Text that every Python installation has, as bytes: data for the one-shot pruning chapter.

Nothing is downloaded. The **in-domain** text is the documentation of the Python language
that ships with CPython for ``pydoc``: ``pydoc_data.topics.topics``, 79 topics and about
465 000 characters in Python 3.11 (other versions ship slightly different text, so numbers
measured on it move a little between Python versions). The topics are joined in sorted
order and cut into chunks of :data:`CHUNK` bytes; every tenth chunk is held out. The
**out-of-domain** text is Python source code from the standard library (:data:`CODE_MODULES`),
used to ask whether the calibration text matters.

Text is modelled as UTF-8 bytes: a vocabulary of 256 symbols and no tokenizer to ship.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor

from . import _validate

VOCAB_SIZE = 256
CHUNK = 4096
HELD_OUT_EVERY = 10
"""Chunk ``i`` of the documentation is held out when ``i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1``."""

CODE_MODULES = ("argparse", "textwrap", "heapq", "bisect", "fractions", "statistics", "string", "shlex")
"""Standard-library modules whose source is the out-of-domain text."""


def docs_bytes(split: str = "train") -> Tensor:
    """The in-domain text as bytes: ``"train"`` (nine chunks in ten) or ``"test"`` (the tenth)."""
    from pydoc_data.topics import topics

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    ids = encode("\n\n".join(body for _, body in sorted(topics.items())))
    chunk = torch.arange(ids.numel()) // CHUNK
    held_out = chunk % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    return ids[held_out if split == "test" else ~held_out]


def code_bytes() -> Tensor:
    """The out-of-domain text as bytes: the source files of :data:`CODE_MODULES`, concatenated."""
    parts = []
    for name in CODE_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"the standard-library module {name!r} has no source file here")
        parts.append(Path(spec.origin).read_text(encoding="utf-8"))
    return encode("\n\n".join(parts))


def encode(text: str) -> Tensor:
    """UTF-8 bytes of ``text`` as an int64 tensor of values in ``[0, 256)``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.int64)


def decode(ids: Tensor) -> str:
    """The text of a byte sequence (invalid UTF-8, e.g. a cut multi-byte character, shows as U+FFFD)."""
    return bytes(int(i) for i in ids.reshape(-1)).decode("utf-8", errors="replace")


def windows(ids: Tensor, length: int, *, count: int | None = None, seed: int | None = None) -> Tensor:
    """``[n, length + 1]`` windows of ``ids`` (input = ``[:, :-1]``, next-byte target = ``[:, 1:]``).

    ``seed=None``: consecutive non-overlapping windows from the start (evaluation; ``count``
    of them, default all that fit). With a ``seed``: ``count`` windows at random offsets
    (training batches, calibration samples), reproducible from the seed.
    """
    length = _validate.positive_int(length, "length")
    if ids.dim() != 1 or ids.numel() < length + 1:
        raise ValueError(f"ids must be 1-D with at least length + 1 = {length + 1} entries, got {tuple(ids.shape)}")
    if seed is None:
        n = (ids.numel() - 1) // length
        n = n if count is None else min(n, _validate.positive_int(count, "count"))
        starts = torch.arange(n) * length
    else:
        count = _validate.positive_int(1 if count is None else count, "count")
        gen = torch.Generator().manual_seed(_validate.seed(seed, low=0))
        starts = torch.randint(ids.numel() - length, (count,), generator=gen)
    return ids[starts.unsqueeze(1) + torch.arange(length + 1)]
