"""Issue 15: the default channel-pruning call on small torchvision families, exact against the zero-channel model.

torchvision is optional (not a sparsekit dependency): imported through the workaround in
``benchmarks/_torchvision.py`` (a CUDA build on CPU torch), and the tests are skipped
where it cannot be imported. The full coverage table of twelve families is
``benchmarks/bench_structured_models.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsekit import structured as S

_tvmod = pytest.importorskip("benchmarks._torchvision")
_tv = _tvmod.import_torchvision()
if _tv is None:
    pytest.skip("torchvision cannot be imported", allow_module_level=True)


def _build(name: str) -> nn.Module:
    return _tvmod.randomized_model(_tv, name, num_classes=10)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_0"])
def test_default_call_prunes_every_group_exactly(name: str) -> None:
    model = _build(name)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    small = S.shrink_channels(model, 0.5, x)
    assert small.channel_plan.skipped == {}
    groups = S.channel_groups(model, x)
    prunable = [g for g in groups if g.prunable]
    assert len(prunable) == len(groups) - 1  # all but the classifier's
    assert set(small.channel_plan.removed) <= {s for g in prunable for s in g.sources}
    for size in (64, 96):
        check = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        ref = S.cut_removed_inputs(model, small.channel_plan, check)
        with torch.no_grad():
            want, got = ref(check), small(check)
        assert float((got - want).norm() / want.norm()) < 1e-5
    assert S.cost(small, x).flops < 0.45 * S.cost(model, x).flops


def test_heads_of_torchvision_vit() -> None:
    """Michel et al.'s head importance and head removal on torchvision's ViT (nn.MultiheadAttention)."""
    torch.manual_seed(0)
    vit = _tv.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32,
                                       mlp_dim=64, num_classes=10).eval()
    with torch.no_grad():
        vit.heads.head.weight.normal_(0, 0.1)  # zero-initialized: no gradient would reach the heads
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6) % 10
    imp = S.head_importance(vit, x, y, batch_size=3)
    assert [t.shape for t in imp] == [(4,), (4,)] and all(bool((t > 0).all()) for t in imp)
    prune = S.select_heads(imp, 3)
    small = S.shrink_heads(vit, prune)
    ref = S.shrink_heads(vit, {})  # the same architecture, nothing removed
    with torch.no_grad():
        for i, heads in prune.items():  # masking = zeroing the heads' columns of out_proj
            a = ref.encoder.layers[i].self_attention
            for h in heads:
                a.out_proj.weight[:, h * 8:(h + 1) * 8] = 0.0
        torch.testing.assert_close(small(x), ref(x), rtol=1e-5, atol=1e-5)
    assert sum(layer.self_attention.num_heads for layer in small.encoder.layers) == 5
