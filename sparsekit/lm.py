"""A small byte-level language model, pre-trained on Python's own documentation, and how it was made.

The one-shot pruning chapter needs a *trained* language model that every reader has, offline.
``ByteLM`` is a decoder-only Transformer in the GPT-2 layout (Radford et al. 2019: pre-norm
blocks, causal self-attention with one fused ``qkv`` projection, a GELU MLP of width
``4 * d_model``) over UTF-8 bytes; :func:`make_pretrained_lm` trains it on the
documentation text of :mod:`sparsekit.text`, and ``python -m sparsekit.lm`` writes
``sparsekit/assets/byte_lm_pretrained.pt`` and prints its SHA-256 and held-out perplexity.
:func:`load_pretrained_lm` loads that file with ``torch.load(weights_only=True)`` after
checking the hash.

As with chapter 6's asset, **the shipped file is the reference**: the recipe reproduces it
bit for bit on the same kind of CPU with the same thread count, not on another processor
(MKL and ATen take other floating-point paths there).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from . import _validate, text
from .pretrained import file_sha256, verified_state
from .train import eval_mode

CONFIG: dict[str, int] = {"d_model": 128, "num_heads": 4, "num_layers": 4, "context": 128}
"""Size of the shipped model (about 0.9 M parameters, 16 ``nn.Linear`` layers, 4 per block)."""

ASSET = Path(__file__).parent / "assets" / "byte_lm_pretrained.pt"
SHA256 = "49a29c737e3cac9cdbeffd1add84dd78a5815fab8032bcf4a14e96a9dbf8d5bc"
"""SHA-256 of the shipped weights file (float16), checked on every load."""


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position ``t`` sees positions ``<= t`` (Vaswani et al. 2017)."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [b, heads, t, head_dim]
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(ln1(x))``, then ``x + fc2(gelu(fc1(ln2(x))))``."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, num_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ByteLM(nn.Module):
    """Decoder-only Transformer over bytes: ``[batch, time]`` int64 -> ``[batch, time, 256]`` logits."""

    def __init__(self, d_model: int = 128, num_heads: int = 4, num_layers: int = 4, context: int = 128) -> None:
        super().__init__()
        d_model = _validate.positive_int(d_model, "d_model")
        num_heads = _validate.positive_int(num_heads, "num_heads")
        num_layers = _validate.positive_int(num_layers, "num_layers")
        self.context = _validate.positive_int(context, "context")
        self.embed = nn.Embedding(text.VOCAB_SIZE, d_model)
        self.pos = nn.Parameter(torch.zeros(self.context, d_model))
        self.blocks = nn.ModuleList([Block(d_model, num_heads) for _ in range(num_layers)])
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, text.VOCAB_SIZE, bias=False)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, ids: Tensor) -> Tensor:
        if ids.dim() != 2 or ids.shape[1] > self.context:
            raise ValueError(f"ids must be [batch, time] with time <= context={self.context}, got {tuple(ids.shape)}")
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))

    def block_linears(self) -> list[str]:
        """Names of the Linear layers inside the blocks: what one-shot pruning prunes (not the head)."""
        return [name for name, m in self.named_modules() if isinstance(m, nn.Linear) and name.startswith("blocks.")]


@torch.no_grad()
def perplexity(model: ByteLM, ids: Tensor, *, windows: int | None = None, batch_size: int = 32) -> float:
    """``exp`` of the mean next-byte cross-entropy over non-overlapping windows of ``ids``
    (``text.windows``, length ``model.context``): perplexity per byte; ``log2`` of it is bits per
    byte. ``windows``: use only that many windows, evenly spaced over the text (faster, and
    still drawn from all of it)."""
    data = text.windows(ids, model.context)
    if windows is not None:
        windows = _validate.positive_int(windows, "windows")
        data = data[torch.linspace(0, data.shape[0] - 1, min(windows, data.shape[0])).round().long()]
    total, count = 0.0, 0
    with eval_mode(model), parametrize.cached():
        for chunk in data.split(batch_size):
            logits = model(chunk[:, :-1])
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1),
                                           reduction="sum"))
            count += chunk[:, 1:].numel()
    return math.exp(total / count)


@torch.no_grad()
def generate(model: ByteLM, prompt: str, length: int = 80, *, seed: int = 0, temperature: float = 0.8) -> str:
    """``prompt`` continued by ``length`` sampled bytes (seeded; the global RNG is untouched)."""
    length = _validate.integer(length, "length", low=0)
    temperature = _validate.real(temperature, "temperature", low=0.0, low_open=True)
    gen = torch.Generator().manual_seed(_validate.seed(seed, low=0))
    ids = text.encode(prompt).unsqueeze(0)
    with eval_mode(model), parametrize.cached():  # masked weights computed once, not once per byte
        for _ in range(length):
            logits = model(ids[:, -model.context:])[0, -1] / temperature
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
            ids = torch.cat([ids, nxt.unsqueeze(0)], dim=1)
    return text.decode(ids[0])


def train_lm(model: ByteLM, steps: int, *, seed: int = 0, batch_size: int = 16, lr: float = 2e-3,
             warmup: int = 100, ids: Tensor | None = None, progress: bool = True) -> ByteLM:
    """Train ``model`` in place for ``steps`` steps of next-byte prediction and return it (eval mode).

    AdamW (betas 0.9 / 0.95, weight decay 0.1 on matrices only), linear warm-up over ``warmup``
    steps then cosine decay of ``lr`` to 0, gradient clipping at 1, ``batch_size`` random
    windows of ``ids`` (default: the training text) per step, drawn from ``seed``. Masks applied
    with ``sk.apply_masks`` stay in force: the optimizer moves the stored weights, the model
    uses them masked (fine-tuning a pruned model).
    """
    steps = _validate.positive_int(steps, "steps")
    ids = text.docs_bytes("train") if ids is None else ids
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    for step in tqdm(range(steps), desc="training", disable=not progress):
        batch = text.windows(ids, model.context, count=batch_size, seed=seed * 1_000_003 + step)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
    return model.eval()


def make_pretrained_lm(steps: int = 3000, seed: int = 0, batch_size: int = 16, lr: float = 2e-3,
                       warmup: int = 100, progress: bool = True, config: dict[str, int] | None = None) -> ByteLM:
    """The recipe of the shipped model: a fresh ``ByteLM(**CONFIG)`` from ``seed``, trained by
    :func:`train_lm` on the documentation text. ``config`` (default :data:`CONFIG`) sizes the model."""
    from .seeding import seed_everything

    steps = _validate.positive_int(steps, "steps")
    seed_everything(seed)
    model = ByteLM(**(CONFIG if config is None else config))
    return train_lm(model, steps, seed=seed, batch_size=batch_size, lr=lr, warmup=warmup, progress=progress)


def load_pretrained_lm(path: str | Path | None = None, *, sha256: str | None = None) -> ByteLM:
    """The shipped pre-trained ``ByteLM(**CONFIG)`` (float32, eval mode), hash-checked.

    ``path=None`` loads the package asset and checks it against :data:`SHA256`; a file of
    your own needs ``sha256=`` (checked) or ``sha256="unverified"``, as
    :func:`sparsekit.pretrained.load_pretrained`.
    """
    state = verified_state(path, ASSET, SHA256, sha256)
    with torch.random.fork_rng(devices=[]):
        model = ByteLM(**CONFIG)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"the file does not hold ByteLM(**CONFIG) weights: {err}") from err
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    """Write the weights (float16) and print their SHA-256 and held-out perplexity (``python -m sparsekit.lm``)."""
    import argparse
    import json
    import time

    parser = argparse.ArgumentParser(description="Pre-train the byte-level LM of the one-shot pruning chapter.")
    parser.add_argument("--out", type=Path, default=ASSET, help="where to write the weights (default: the asset)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--json", action="store_true", help="print one JSON line (sha256, perplexity, seconds)")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 unless the written file has the shipped SHA-256")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)  # a fixed thread count: the same float summation order on every run
    start = time.perf_counter()
    model = make_pretrained_lm(steps=args.steps, progress=not args.json)
    seconds = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() for k, v in model.state_dict().items()}, args.out)
    half = load_pretrained_lm(args.out, sha256="unverified")
    result = {"sha256": file_sha256(args.out), "seconds": round(seconds, 1),
              "test_perplexity": perplexity(half, text.docs_bytes("test")),
              "code_perplexity": perplexity(half, text.code_bytes()[:65536]),
              "parameters": sum(p.numel() for p in model.parameters()),
              "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    print(json.dumps(result) if args.json else
          f"wrote {args.out} in {seconds:.0f} s; SHA-256 {result['sha256']}; held-out perplexity "
          f"{result['test_perplexity']:.3f} per byte; {result['parameters']} parameters")
    if args.check and result["sha256"] != SHA256:
        raise SystemExit(f"SHA-256 {result['sha256']} differs from the shipped {SHA256} (another CPU or thread "
                         f"count takes another float path; see the module docstring)")


if __name__ == "__main__":
    main()
