"""The models every step works on (score -> select -> mask -> train -> finalize), all
sized for MNIST-1D on a laptop CPU.

* :class:`MLP` — fully connected, the lottery-ticket and unstructured-pruning workhorse.
* :class:`CNN1d` — three Conv1d + BatchNorm + ReLU blocks and a linear head
  (the MNIST-1D paper's CNN with BatchNorm added, for channel pruning).
* :class:`ResCNN1d` — a small residual 1-D CNN: channels tied by skip connections.
* :class:`TinyTransformer` — a pre-norm Transformer encoder over patches of the
  sequence, with explicit per-head q/k/v/out projections so heads can be pruned.

All are plain ``nn.Module`` subclasses that ``torch.fx`` can trace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _validate
from .data import NUM_CLASSES, SEQ_LEN


def _widths(value: object, name: str, length: int | None = None) -> list[int]:
    """A sequence of positive ints (layer widths), ``length`` of them when given."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        what = ("positive ints (one width per layer, e.g. (256, 256) or [8])" if length is None
                else f"{length} positive ints")
        raise _validate.ArgumentTypeError(f"{name} must be a sequence of {what}, got {type(value).__name__} {value!r}")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must be {length} positive ints, got {len(value)}: {value!r}")
    return [_validate.positive_int(v, f"{name}[{i}]") for i, v in enumerate(value)]


class MLP(nn.Sequential):
    """``Linear -> ReLU -> ... -> Linear``; weights are named ``"0.weight"``, ``"2.weight"``, ..."""

    def __init__(self, in_features: int = SEQ_LEN, hidden: Sequence[int] = (256, 256),
                 num_classes: int = NUM_CLASSES) -> None:
        in_features = _validate.positive_int(in_features, "in_features")
        num_classes = _validate.positive_int(num_classes, "num_classes")
        hidden = _widths(hidden, "hidden")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class CNN1d(nn.Module):
    """Conv1d(k=5, stride 2) + BatchNorm + ReLU, three times, then a linear classifier.

    Input ``[batch, 40]`` (or ``[batch, 1, 40]``); feature lengths 40 -> 19 -> 9 -> 4.
    """

    def __init__(self, channels: Sequence[int] = (32, 32, 32), num_classes: int = NUM_CLASSES,
                 seq_len: int = SEQ_LEN) -> None:
        super().__init__()
        c1, c2, c3 = _widths(channels, "channels", 3)
        num_classes = _validate.positive_int(num_classes, "num_classes")
        seq_len = _validate.positive_int(seq_len, "seq_len")
        self.conv1, self.bn1 = nn.Conv1d(1, c1, 5, stride=2, padding=1), nn.BatchNorm1d(c1)
        self.conv2, self.bn2 = nn.Conv1d(c1, c2, 5, stride=2, padding=1), nn.BatchNorm1d(c2)
        self.conv3, self.bn3 = nn.Conv1d(c2, c3, 5, stride=2, padding=1), nn.BatchNorm1d(c3)
        length = seq_len
        for _ in range(3):
            length = (length + 2 - 5) // 2 + 1
        if length < 1:
            raise ValueError(f"seq_len must be >= 15 (three stride-2 convolutions of width 5), got {seq_len}")
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c3 * length, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], 1, -1)  # [batch, 40] or [batch, 1, 40] -> [batch, 1, 40]
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(self.flatten(x))


class ResidualBlock1d(nn.Module):
    """``relu(x + bn2(conv2(relu(bn1(conv1(x))))))`` with 'same' padding."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        channels = _validate.positive_int(channels, "channels")
        kernel_size = _validate.integer(kernel_size, "kernel_size", low=1, what="an odd positive int")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd positive int ('same' padding), got {kernel_size}")
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(out)))


class ResCNN1d(nn.Module):
    """A stem convolution, residual blocks, global average pooling and a linear head.

    Every block adds its output to its input, so the stem's output channels and every
    block's ``conv2`` output channels form one *dependency group*: pruning channel ``c``
    in one of them requires pruning it in all of them.
    """

    def __init__(self, channels: int = 32, blocks: int = 2, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        channels = _validate.positive_int(channels, "channels")
        blocks = _validate.integer(blocks, "blocks", low=0)
        num_classes = _validate.positive_int(num_classes, "num_classes")
        self.stem = nn.Conv1d(1, channels, 5, stride=2, padding=2, bias=False)
        self.stem_bn = nn.BatchNorm1d(channels)
        self.blocks = nn.Sequential(*[ResidualBlock1d(channels) for _ in range(blocks)])
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], 1, -1)  # [batch, 40] or [batch, 1, 40] -> [batch, 1, 40]
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.blocks(x)
        return self.fc(self.flatten(self.pool(x)))


class MultiHeadSelfAttention(nn.Module):
    """Scaled dot-product self-attention (Vaswani et al. 2017) with explicit projections.

    ``q``, ``k``, ``v`` map ``d_model -> num_heads * head_dim`` and ``out`` maps back, so
    removing head ``h`` means removing rows ``h*head_dim:(h+1)*head_dim`` of q/k/v and the
    same columns of ``out``. ``head_mask`` (shape ``[num_heads]``) scales each head's
    output: the gate whose gradient Michel et al. 2019 use as head importance.
    """

    def __init__(self, d_model: int, num_heads: int, head_dim: int | None = None) -> None:
        super().__init__()
        d_model = _validate.positive_int(d_model, "d_model")
        num_heads = _validate.positive_int(num_heads, "num_heads")
        head_dim = d_model // num_heads if head_dim is None else _validate.positive_int(head_dim, "head_dim")
        if head_dim < 1:
            raise ValueError(f"d_model={d_model} must be >= num_heads={num_heads} (head_dim = d_model // num_heads)")
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.q = nn.Linear(d_model, inner)
        self.k = nn.Linear(d_model, inner)
        self.v = nn.Linear(d_model, inner)
        self.out = nn.Linear(inner, d_model)

    def forward(self, x: Tensor, head_mask: Tensor | None = None) -> Tensor:
        b, t, _ = x.shape
        h, d = self.num_heads, self.head_dim

        def heads(z: Tensor) -> Tensor:
            return z.view(b, t, h, d).transpose(1, 2)  # [b, h, t, d]

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
        ctx = attn @ v  # [b, h, t, d]
        if head_mask is not None:
            ctx = ctx * head_mask.view(1, h, 1, 1)
        return self.out(ctx.transpose(1, 2).reshape(b, t, h * d))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int) -> None:
        super().__init__()
        d_ff = _validate.positive_int(d_ff, "d_ff")
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadSelfAttention(d_model, num_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor, head_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln1(x), head_mask)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """A Transformer classifier over MNIST-1D seen as ``seq_len / patch_size`` tokens.

    Each token embeds ``patch_size`` consecutive samples with a Linear layer, plus a
    learned position embedding; the class comes from the mean of the final tokens.
    """

    def __init__(self, d_model: int = 64, num_heads: int = 4, num_layers: int = 2, d_ff: int = 128,
                 patch_size: int = 4, seq_len: int = SEQ_LEN, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        d_model = _validate.positive_int(d_model, "d_model")
        num_heads = _validate.positive_int(num_heads, "num_heads")
        num_layers = _validate.integer(num_layers, "num_layers", low=0)
        patch_size = _validate.positive_int(patch_size, "patch_size")
        seq_len = _validate.positive_int(seq_len, "seq_len")
        num_classes = _validate.positive_int(num_classes, "num_classes")
        if seq_len % patch_size:
            raise ValueError(f"seq_len={seq_len} must be a multiple of patch_size={patch_size}")
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of num_heads={num_heads}")
        self.patch_size = patch_size
        self.embed = nn.Linear(patch_size, d_model)
        self.pos = nn.Parameter(torch.randn(seq_len // patch_size, d_model) * 0.02)
        self.layers = nn.ModuleList([TransformerBlock(d_model, num_heads, d_ff) for _ in range(num_layers)])
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: Tensor, head_masks: Sequence[Tensor] | None = None) -> Tensor:
        tokens = self.embed(x.reshape(x.shape[0], -1, self.patch_size)) + self.pos
        for i, layer in enumerate(self.layers):
            tokens = layer(tokens, None if head_masks is None else head_masks[i])
        return self.head(self.ln(tokens).mean(dim=1))


MODELS = {"mlp": MLP, "cnn": CNN1d, "rescnn": ResCNN1d, "transformer": TinyTransformer}


def build(name: str, **kwargs: object) -> nn.Module:
    """``build("mlp")`` etc.: a fresh model by short name (see ``MODELS``)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](**kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (masked weights count their full shape)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters())
