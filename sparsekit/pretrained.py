"""A pre-trained tiny Transformer for the movement-pruning chapter, and how it was made.

Movement pruning is about *transfer*: a model pre-trained on one task is fine-tuned and
pruned on another. Our stand-in for BERT's masked-language-model pre-training is
**masked-patch modelling** on unlabelled MNIST-1D sequences: the Transformer sees a
sequence with some of its patches (tokens) zeroed and must reconstruct them from the
rest (the same objective as BERT, Devlin et al. 2019, with regression instead of a
vocabulary). The source sequences come from the MNIST-1D generator with a different
seed and a different noise level than the target task's, and no labels are used, so
the source task is distinct from the target task (the standard MNIST-1D
classification).

``make_pretrained()`` is the deterministic recipe; running ``python -m
sparsekit.pretrained`` writes ``sparsekit/assets/tiny_transformer_pretrained.pt`` and
prints its SHA-256. :func:`load_pretrained` loads the shipped file with
``torch.load(weights_only=True)`` after checking that hash, so Colab readers get exactly
the weights the book was built with, without the minute of pre-training.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _validate
from .data import mnist1d
from .models import TinyTransformer
from .seeding import seed_everything

CONFIG: dict[str, int] = {"d_model": 32, "num_heads": 2, "num_layers": 2, "d_ff": 64, "patch_size": 4}
"""The Transformer that is pre-trained (smaller than the default, so fine-tuning runs take seconds)."""

SOURCE: dict[str, object] = {"seed": 7, "num_samples": 8000, "corr_noise_scale": 0.1, "iid_noise_scale": 0.05}
"""MNIST-1D generator settings of the *source* data (the target task uses the defaults, seed 42)."""

MASK_FRACTION = 0.3
"""Fraction of tokens hidden in each sequence during pre-training."""

ASSET = Path(__file__).parent / "assets" / "tiny_transformer_pretrained.pt"
SHA256 = "1daaab49e91cc36756858d1416d3fd21d81c98bf76c5944abf8bc63b9da09b14"
"""SHA-256 of the shipped weights file, checked on every load."""


def token_states(model: TinyTransformer, x: Tensor) -> Tensor:
    """The final normalised token representations ``[batch, tokens, d_model]`` of ``model``.

    Captured with a forward hook on ``model.ln``, so the model's own forward is used as is.
    """
    out: list[Tensor] = []
    handle = model.ln.register_forward_hook(lambda _m, _i, o: out.append(o))
    try:
        model(x)
    finally:
        handle.remove()
    return out[0]


def masked_patch_loss(model: TinyTransformer, decoder: nn.Linear, x: Tensor, generator: torch.Generator) -> Tensor:
    """Mean squared error of reconstructing the hidden patches of ``x`` (masked-patch modelling).

    A random ``MASK_FRACTION`` of the ``40 / patch_size`` tokens of every sequence are set
    to zero at the input; ``decoder`` maps each final token state back to ``patch_size``
    samples and the loss is taken over the hidden tokens only.
    """
    p = model.patch_size
    patches = x.view(x.shape[0], -1, p)
    hidden = torch.rand(patches.shape[:2], generator=generator) < MASK_FRACTION
    corrupted = patches.masked_fill(hidden.unsqueeze(-1), 0.0).reshape_as(x)
    recon = decoder(token_states(model, corrupted))
    return F.mse_loss(recon[hidden], patches[hidden])


def make_pretrained(steps: int = 1500, seed: int = 0, batch_size: int = 128, lr: float = 2e-3,
                    progress: bool = True) -> TinyTransformer:
    """Pre-train ``TinyTransformer(**CONFIG)`` by masked-patch modelling on the source data.

    Deterministic on a given machine: everything is seeded with ``seed``. Returns the
    model (its classification head is untouched: fine-tuning trains it from scratch).
    """
    from tqdm.auto import tqdm

    steps = _validate.positive_int(steps, "steps")
    seed_everything(seed)
    x = mnist1d(**SOURCE).x_train  # labels are never used
    model = TinyTransformer(**CONFIG)
    decoder = nn.Linear(CONFIG["d_model"], CONFIG["patch_size"])
    params = list(model.parameters()) + list(decoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(steps), desc="pre-train", disable=not progress, leave=False):
        idx = torch.randint(len(x), (batch_size,), generator=gen)
        loss = masked_patch_loss(model, decoder, x[idx], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_pretrained(path: str | Path | None = None, *, head_seed: int | None = None) -> TinyTransformer:
    """The shipped pre-trained ``TinyTransformer(**CONFIG)``, hash-checked.

    ``path=None`` loads the package asset and verifies it against :data:`SHA256`
    (a mismatch raises ``ValueError``). ``head_seed`` re-initialises the classification
    head from that seed, one fresh head per fine-tuning run. The global RNG is left as it was.
    """
    check = path is None
    path = Path(ASSET if path is None else path)
    if not path.is_file():
        raise ValueError(f"path {str(path)!r} is not a file")
    if check and file_sha256(path) != SHA256:
        raise ValueError(f"{path} has SHA-256 {file_sha256(path)}, expected {SHA256}: the file is corrupt or stale")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if head_seed is not None:
        head_seed = _validate.seed(head_seed, "head_seed")
    with torch.random.fork_rng(devices=[]):  # building the model must not advance the global RNG
        model = TinyTransformer(**CONFIG)
        model.load_state_dict(state)
        if head_seed is not None:
            torch.manual_seed(head_seed)
            model.head.reset_parameters()
    return model


def main() -> None:
    """Write the asset and print its SHA-256 (``python -m sparsekit.pretrained``)."""
    import time

    torch.set_num_threads(1)  # one thread: the same float summation order on every run
    start = time.perf_counter()
    model = make_pretrained()
    ASSET.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), ASSET)
    print(f"wrote {ASSET} in {time.perf_counter() - start:.0f} s; SHA-256 {file_sha256(ASSET)}")


if __name__ == "__main__":
    main()
