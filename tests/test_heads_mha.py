"""Issue 15: attention heads of ``torch.nn.MultiheadAttention`` (packed ``in_proj_weight``, as in torchvision's ViT)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsekit import structured as S


class _Encoder(nn.Module):
    """Two pre-norm blocks with ``nn.MultiheadAttention``, mean-pooled into a classifier."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Linear(6, 16)
        self.ln = nn.ModuleList([nn.LayerNorm(16) for _ in range(2)])
        self.attn = nn.ModuleList([nn.MultiheadAttention(16, 4, batch_first=batch_first) for _ in range(2)])
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        for ln, attn in zip(self.ln, self.attn, strict=True):
            z = ln(h)
            h = h + attn(z, z, z, need_weights=False)[0]
        if not self.batch_first:
            h = h.transpose(0, 1)
        return self.head(h.mean(1))


def _model(batch_first: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return _Encoder(batch_first).eval()


X = torch.randn(5, 7, 6, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 1, 2, 1, 0])


def _masked(model: nn.Module, prune: dict[int, list[int]]) -> nn.Module:
    """The original with the pruned heads' columns of out_proj zeroed: their outputs contribute nothing."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for i, heads in prune.items():
            a = ref.attn[i]
            d = a.embed_dim // a.num_heads
            for h in heads:
                a.out_proj.weight[:, h * d:(h + 1) * d] = 0.0
    return ref


@pytest.mark.parametrize("batch_first", [True, False])
def test_shrink_heads_of_multihead_attention_equals_masking(batch_first: bool) -> None:
    model = _model(batch_first)
    prune = {0: [1, 3], 1: [0, 1, 2, 3]}
    small = S.shrink_heads(model, prune)
    assert isinstance(model.attn[0], nn.MultiheadAttention)  # the original is untouched
    a0, a1 = small.attn
    assert isinstance(a0, S.ShrunkMultiheadAttention) and (a0.num_heads, a1.num_heads) == (2, 0)
    assert a0.in_proj_weight.shape == (3 * 8, 16) and a0.out_proj.weight.shape == (16, 8)
    with torch.no_grad():
        torch.testing.assert_close(small(X), _masked(model, prune)(X), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(small(X[:2, :3]), _masked(model, prune)(X[:2, :3]), rtol=1e-5, atol=1e-6)
        # nothing pruned: the stand-in computes what nn.MultiheadAttention computes
        same = S.shrink_heads(model, {0: []})
        torch.testing.assert_close(same(X), model(X), rtol=1e-5, atol=1e-6)


def test_shrunk_attention_weights_and_masks_match_the_original() -> None:
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    full = S.ShrunkMultiheadAttention(mha, [0, 1, 2, 3]).eval()
    q = torch.randn(2, 5, 16)
    pad = torch.tensor([[False] * 4 + [True], [False] * 5])
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    with torch.no_grad():
        for kwargs in [{}, {"key_padding_mask": pad}, {"attn_mask": causal}, {"average_attn_weights": False}]:
            want, w_want = mha(q, q, q, **kwargs)
            got, w_got = full(q, q, q, **kwargs)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(w_got, w_want, rtol=1e-5, atol=1e-6)


def test_head_importance_of_multihead_attention_is_mean_abs_gate_gradient() -> None:
    """Oracle: central finite differences of each example's loss in the head's gate, in float64."""
    model = _model().double()
    x, y = X.double(), Y
    imp = S.head_importance(model, x, y, batch_size=1, normalize=False)
    assert [t.shape for t in imp] == [(4,), (4,)]
    eps = 1e-6
    for i in range(2):
        a = model.attn[i]
        d = a.embed_dim // a.num_heads
        for h in range(4):
            grads = []
            for n in range(len(x)):
                vals = []
                for sign in (1, -1):
                    m = copy.deepcopy(model)
                    with torch.no_grad():
                        m.attn[i].out_proj.weight[:, h * d:(h + 1) * d] *= 1 + sign * eps
                        vals.append(F.cross_entropy(m(x[n:n + 1]), y[n:n + 1]).item())
                grads.append(abs(vals[0] - vals[1]) / (2 * eps))
            assert imp[i][h].item() == pytest.approx(sum(grads) / len(grads), rel=1e-5, abs=1e-9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    S.head_importance(model, x, y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_head_magnitude_and_selection_on_multihead_attention() -> None:
    model = _model()
    mag = S.head_magnitude(model)
    a = model.attn[0]
    w, o = a.in_proj_weight.detach().abs(), a.out_proj.weight.detach().abs()
    want = torch.stack([w[[r + j * 16 for j in range(3) for r in range(h * 4, h * 4 + 4)]].sum() +
                        o[:, h * 4:h * 4 + 4].sum() for h in range(4)])
    torch.testing.assert_close(mag[0], want)
    chosen = S.select_heads(S.head_importance(model, X, Y), 3)
    small = S.shrink_heads(model, chosen)
    assert sum(m.num_heads for m in small.attn) == 5


def test_multihead_attention_bad_input() -> None:
    class Separate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 4, kdim=8, vdim=8, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x[..., :8], x[..., :8])[0].mean((1, 2))

    with pytest.raises(ValueError, match="separate q/k/v"):
        S.head_importance(Separate(), torch.randn(2, 3, 16), torch.zeros(2))
    with pytest.raises(ValueError, match=r"heads_to_prune\[0\]"):
        S.shrink_heads(_model(), {0: [4]})
    with pytest.raises(ValueError, match="no MultiHeadSelfAttention or nn.MultiheadAttention"):
        S.attention_layers(nn.Linear(2, 2))
    small = S.shrink_heads(_model(), {0: [0]})
    with pytest.raises(ValueError, match="once"):
        S.shrink_heads(small, {0: [1]})
