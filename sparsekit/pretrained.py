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

``make_pretrained()`` is the recipe; running ``python -m sparsekit.pretrained`` writes
``sparsekit/assets/tiny_transformer_pretrained.pt`` and prints its SHA-256 and its
:func:`reconstruction_error`. :func:`load_pretrained` loads the shipped file with
``torch.load(weights_only=True)`` after checking that hash.

**The shipped file is the reference.** Re-running the recipe reproduces it bit for bit on
the same kind of CPU with the same thread count, but not on another processor: MKL and
ATen take other floating-point paths there (``ATEN_CPU_CAPABILITY=default`` shows it on
one machine), and a few ulps early become other weights after 1500 steps. Such a model has
the same *quality* (``benchmarks/pretrain_paths.py`` measures it on two float paths), not
the same bits. Shipping the weights is what makes every reader start from the same model.
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
from .train import eval_mode

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


@torch.no_grad()
def reconstruction_error(model: TinyTransformer, *, fit_samples: int = 2000, seed: int = 0) -> float:
    """Held-out masked-patch MSE of ``model`` with a least-squares linear decoder.

    The quality of a pre-trained encoder that needs no shipped decoder: hide
    ``MASK_FRACTION`` of the patches of ``fit_samples`` source training sequences, fit the
    decoder from the hidden tokens' final states to the true patches by least squares
    (float64, with a bias), then report the mean squared reconstruction error of the hidden
    patches of the source *test* sequences. Masks come from a generator seeded with ``seed``.
    An untrained encoder scores near the data's variance; lower is better.
    """
    fit_samples = _validate.positive_int(fit_samples, "fit_samples")
    seed = _validate.seed(seed)
    with eval_mode(model):
        source = mnist1d(**SOURCE)
        gen = torch.Generator().manual_seed(seed)

        def hidden_states_and_targets(x: Tensor) -> tuple[Tensor, Tensor]:
            p = model.patch_size
            patches = x.view(x.shape[0], -1, p)
            hidden = torch.rand(patches.shape[:2], generator=gen) < MASK_FRACTION
            corrupted = patches.masked_fill(hidden.unsqueeze(-1), 0.0).reshape_as(x)
            states = token_states(model, corrupted)[hidden].double()
            return torch.cat([states, torch.ones(len(states), 1, dtype=states.dtype)], dim=1), patches[hidden].double()

        a, b = hidden_states_and_targets(source.x_train[:fit_samples])
        decoder = torch.linalg.lstsq(a, b).solution
        a_test, b_test = hidden_states_and_targets(source.x_test)
        return float(((a_test @ decoder - b_test) ** 2).mean())


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


UNVERIFIED = "unverified"
"""Pass ``sha256=UNVERIFIED`` to load a file of your own without a hash check, on purpose."""


def load_pretrained(path: str | Path | None = None, *, sha256: str | None = None,
                    head_seed: int | None = None) -> TinyTransformer:
    """The shipped pre-trained ``TinyTransformer(**CONFIG)``, hash-checked.

    ``path=None`` (or the package asset's own path) loads the shipped weights and verifies
    them against :data:`SHA256`. A file of your own needs ``sha256=`` (its expected hex
    digest, checked) or ``sha256=UNVERIFIED`` (said out loud: loaded unchecked). A
    mismatch, a truncated or foreign file raises ``ValueError``. ``head_seed``
    re-initialises the classification head from that seed, one fresh head per fine-tuning
    run. The global RNG is left as it was.
    """
    if head_seed is not None:
        head_seed = _validate.seed(head_seed, "head_seed")
    state = verified_state(path, ASSET, SHA256, sha256)
    with torch.random.fork_rng(devices=[]):  # building the model must not advance the global RNG
        model = TinyTransformer(**CONFIG)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"{path} does not hold TinyTransformer(**CONFIG) weights: {err}") from err
        if head_seed is not None:
            torch.manual_seed(head_seed)
            model.head.reset_parameters()
    return model


def verified_state(path: str | Path | None, asset: Path, asset_sha256: str, sha256: str | None) -> dict:
    """The state dict in ``path`` (default: the package ``asset``), loaded with
    ``torch.load(weights_only=True)`` after its SHA-256 was checked.

    The asset is checked against ``asset_sha256``; any other file needs ``sha256=`` (its
    expected hex digest) or ``sha256=UNVERIFIED``. Missing, mismatching, truncated or
    foreign files raise ``ValueError``.
    """
    path = Path(asset if path is None else path)
    if not path.is_file():
        raise ValueError(f"path {str(path)!r} is not a file")
    expected = _expected_sha256(path, sha256, asset, asset_sha256)
    if expected is not None and file_sha256(path) != expected:
        raise ValueError(f"{path} has SHA-256 {file_sha256(path)}, expected {expected}: the file is corrupt or stale")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError) as err:  # truncated or not a torch.save archive
        raise ValueError(f"{path} is not a readable torch.save checkpoint ({type(err).__name__}: {err})") from err


def _expected_sha256(path: Path, sha256: str | None, asset: Path, asset_sha256: str) -> str | None:
    """The digest ``path`` must have, or ``None`` when the caller chose ``UNVERIFIED``."""
    if sha256 is not None and not isinstance(sha256, str):
        raise TypeError(f"sha256 must be a hex string or {UNVERIFIED!r}, got {type(sha256).__name__}")
    shipped = path.resolve() == asset.resolve()
    if sha256 is None:
        if shipped:
            return asset_sha256
        raise ValueError(
            f"{path} is not the shipped asset: pass sha256=<its hex digest> to check it, or "
            f"sha256={UNVERIFIED!r} to load it unchecked"
        )
    if sha256 == UNVERIFIED:
        return None
    digest = sha256.lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"sha256 must be 64 hex digits or {UNVERIFIED!r}, got {sha256!r}")
    return digest


def main(argv: list[str] | None = None) -> None:
    """Write the weights and print their SHA-256 and quality (``python -m sparsekit.pretrained``).

    ``--out PATH`` writes elsewhere than the package asset (to compare a re-run with the
    shipped file without replacing it); ``--json`` prints one JSON line for scripts.
    """
    import argparse
    import json
    import os
    import time

    parser = argparse.ArgumentParser(description="Pre-train the tiny Transformer of chapter 6.")
    parser.add_argument("--out", type=Path, default=ASSET, help="where to write the weights (default: the asset)")
    parser.add_argument("--json", action="store_true", help="print one JSON line (sha256, error, seconds)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread: the same float summation order on every run
    start = time.perf_counter()
    model = make_pretrained(progress=not args.json)
    seconds = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    result = {"sha256": file_sha256(args.out), "reconstruction_error": reconstruction_error(model),
              "seconds": round(seconds, 1), "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY", "native"),
              "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {args.out} in {seconds:.0f} s; SHA-256 {result['sha256']}; "
              f"held-out reconstruction error {result['reconstruction_error']:.4f}")


if __name__ == "__main__":
    main()
