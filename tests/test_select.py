"""select_masks: exact counts, ties, current masks, min_keep; schedules. Oracle: a full stable sort."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsekit as sk
import sparsekit.select as select


def _oracle_pruned(flat: torch.Tensor, k: int) -> torch.Tensor:
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.sort(flat, stable=True).indices[:k]] = True
    return chosen


score_shapes = st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4)


@st.composite
def score_dicts(draw):
    shapes = draw(score_shapes)
    seed = draw(st.integers(0, 2**16))
    levels = draw(st.sampled_from([None, 3]))  # None: continuous; 3: many ties
    gen = torch.Generator().manual_seed(seed)
    scores = {}
    for i, shape in enumerate(shapes):
        s = torch.rand(shape, generator=gen)
        scores[f"l{i}.weight"] = (s * levels).floor() if levels else s
    return scores


@settings(max_examples=60, deadline=None)
@given(score_dicts(), st.floats(0.0, 0.999))
def test_global_exact_count_and_matches_stable_sort_oracle(scores, sparsity):
    masks = sk.select_masks(scores, sparsity, scope="global")
    total = sum(s.numel() for s in scores.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * total)
    flat = torch.cat([s.flatten() for s in scores.values()])
    pruned = torch.cat([(~m).flatten() for m in masks.values()])
    assert torch.equal(pruned, _oracle_pruned(flat, round(sparsity * total)))
    for name, s in scores.items():
        assert masks[name].shape == s.shape and masks[name].dtype == torch.bool


@settings(max_examples=60, deadline=None)
@given(score_dicts(), st.floats(0.0, 0.999))
def test_layer_exact_count_per_tensor(scores, sparsity):
    masks = sk.select_masks(scores, sparsity, scope="layer")
    for name, s in scores.items():
        assert int((~masks[name]).sum()) == round(sparsity * s.numel())
        assert torch.equal((~masks[name]).flatten(), _oracle_pruned(s.flatten(), round(sparsity * s.numel())))


@settings(max_examples=40, deadline=None)
@given(score_dicts(), st.floats(0.0, 0.6), st.floats(0.0, 0.39))
def test_current_masks_stay_pruned_and_count(scores, first, extra):
    current = sk.select_masks(scores, first, scope="global")
    second = min(first + extra, 0.999)
    total = sum(s.numel() for s in scores.values())
    if round(second * total) < sum(int((~m).sum()) for m in current.values()):
        return  # rounding made the target smaller than what is already pruned
    masks = sk.select_masks(scores, second, scope="global", current=current)
    assert sum(int((~m).sum()) for m in masks.values()) == round(second * total)
    for name in scores:
        assert not (masks[name] & ~current[name]).any()  # pruned stays pruned


def test_current_prunes_even_high_scores():
    scores = {"w": torch.tensor([[5.0, 1.0, 2.0, 3.0]])}
    current = {"w": torch.tensor([[False, True, True, True]])}
    masks = sk.select_masks(scores, 0.5, current=current)
    assert masks["w"].tolist() == [[False, False, True, True]]


def test_ties_broken_by_lower_flat_index_across_tensors():
    scores = {"a": torch.ones(2, 2), "b": torch.ones(3)}
    masks = sk.select_masks(scores, 3 / 7)
    assert masks["a"].tolist() == [[False, False], [False, True]]
    assert masks["b"].tolist() == [True, True, True]
    assert sk.select_masks(scores, 3 / 7)["a"].tolist() == masks["a"].tolist()  # deterministic


def test_large_input_path_matches_oracle(monkeypatch):
    """The sampling path (normally above 2**20 entries) is exact, ties included."""
    monkeypatch.setattr(select, "_EXACT_SORT_LIMIT", 100)
    monkeypatch.setattr(select, "_SAMPLE_SIZE", 64)
    gen = torch.Generator().manual_seed(3)
    for trial in range(30):
        parts = [torch.randint(0, 4 if trial % 2 else 1000, (n,), generator=gen).float() for n in (300, 0, 500, 77)]
        n = sum(p.numel() for p in parts)
        k = int(torch.randint(0, n + 1, (1,), generator=gen))
        got = torch.cat(select.lowest_k_parts(parts, k))
        assert torch.equal(got, _oracle_pruned(torch.cat(parts), k)), trial


def test_min_keep_prevents_emptying_a_layer():
    scores = {"small": torch.full((4, 4), 1e-3), "big": torch.rand(10, 10) + 1.0}
    plain = sk.select_masks(scores, 0.5)
    assert not plain["small"].any()  # global pruning empties the low-magnitude layer
    guarded = sk.select_masks(scores, 0.5, min_keep=0.25)
    assert int(guarded["small"].sum()) == 4
    assert sum(int((~m).sum()) for m in guarded.values()) == round(0.5 * 116)


def test_min_keep_never_revives_current_pruned():
    scores = {"a": torch.rand(4, 4), "b": torch.rand(4, 4)}
    current = {"a": torch.zeros(4, 4, dtype=torch.bool), "b": torch.ones(4, 4, dtype=torch.bool)}
    masks = sk.select_masks(scores, 0.5, current=current, min_keep=0.5)
    assert not masks["a"].any()


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        sk.select_masks({"w": torch.rand(3, 3)}, sparsity)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(scores={"w": torch.rand(3)}, sparsity=0.5, scope="row"), ValueError, "scope"),
    (dict(scores={}, sparsity=0.5), ValueError, "non-empty"),
    (dict(scores={"w": torch.tensor([1.0, float("nan")])}, sparsity=0.5), ValueError, "NaN"),
    (dict(scores={"w": torch.arange(4)}, sparsity=0.5), TypeError, "float"),
    (dict(scores={"w": torch.rand(4)}, sparsity="0.5"), TypeError, "sparsity"),
    (dict(scores={"w": torch.rand(4)}, sparsity=0.5, current={"v": torch.ones(4, dtype=torch.bool)}),
     ValueError, "current"),
    (dict(scores={"w": torch.rand(4)}, sparsity=0.5, current={"w": torch.ones(3, dtype=torch.bool)}),
     ValueError, "shape"),
    (dict(scores={"w": torch.rand(4)}, sparsity=0.25, current={"w": torch.tensor([True, False, False, True])}),
     ValueError, "already pruned"),
    (dict(scores={"w": torch.rand(4)}, sparsity=0.5, min_keep=2.0), ValueError, "min_keep"),
    (dict(scores={"w": torch.rand(4)}, sparsity=0.9, min_keep=0.9), ValueError, "min_keep"),
])
def test_select_masks_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sk.select_masks(**kwargs)


def test_lowest_k_bad_k():
    with pytest.raises(ValueError, match="k must be"):
        select.lowest_k(torch.rand(5), 6)


def test_select_masks_leaves_scores_untouched():
    scores = {"w": torch.rand(5, 5)}
    before = scores["w"].clone()
    current = {"w": torch.arange(25).view(5, 5) % 5 != 0}  # 5 of 25 already pruned
    sk.select_masks(scores, 0.5, current=current, min_keep=0.1)
    assert torch.equal(scores["w"], before)


def test_imp_sparsity():
    assert sk.imp_sparsity(0.2, 0) == 0.0
    assert sk.imp_sparsity(0.2, 1) == pytest.approx(0.2)
    assert sk.imp_sparsity(0.2, 10) == pytest.approx(1 - 0.8**10)
    with pytest.raises(ValueError):
        sk.imp_sparsity(0.2, -1)
    with pytest.raises(ValueError):
        sk.imp_sparsity(1.2, 3)


def test_cubic_schedule_endpoints_monotone_and_formula():
    kw = dict(begin_step=10, end_step=110, initial_sparsity=0.0)
    assert sk.cubic_sparsity(0, 0.9, **kw) == 0.0
    assert sk.cubic_sparsity(10, 0.9, **kw) == 0.0
    assert sk.cubic_sparsity(110, 0.9, **kw) == 0.9
    assert sk.cubic_sparsity(500, 0.9, **kw) == 0.9
    assert sk.cubic_sparsity(60, 0.9, **kw) == pytest.approx(0.9 * (1 - 0.5**3))
    values = [sk.cubic_sparsity(t, 0.9, **kw) for t in range(0, 120)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    # prunes faster early: the first half of the schedule does most of the work
    assert sk.cubic_sparsity(60, 0.9, **kw) > 0.9 * 0.8


@pytest.mark.parametrize("kwargs", [dict(begin_step=5, end_step=5), dict(begin_step=5, end_step=2),
                                    dict(begin_step=0, end_step=10, initial_sparsity=1.0)])
def test_cubic_schedule_bad_input(kwargs):
    with pytest.raises(ValueError):
        sk.cubic_sparsity(3, 0.5, **kwargs)


# --- scores keep their dtype: current / min_keep never change the ranking (issue 12) ---


@pytest.mark.parametrize("values", [
    [1 + 3e-12, 1 + 2e-12, 1 + 1e-12, 1.0],  # distinct in float64, equal in float32
    [3e-50, 1e-50, 2e-50, 4e-50],  # below float32's smallest subnormal: all 0 in float32
])
def test_float64_scores_same_mask_with_and_without_current(values):
    scores = {"w": torch.tensor(values, dtype=torch.float64)}
    expected = ~_oracle_pruned(scores["w"], 2)
    plain = sk.select_masks(scores, 0.5)
    with_current = sk.select_masks(scores, 0.5, current={"w": torch.ones(4, dtype=torch.bool)})
    with_keep = sk.select_masks(scores, 0.5, min_keep=0.25)
    assert torch.equal(plain["w"], expected)
    assert torch.equal(with_current["w"], expected)
    assert torch.equal(with_keep["w"], expected)
    layer = sk.select_masks(scores, 0.5, scope="layer", current={"w": torch.ones(4, dtype=torch.bool)})
    assert torch.equal(layer["w"], expected)


def test_scores_above_float32_max_are_ordinary_scores():
    scores = {"w": torch.tensor([4e39, 1e39, 3e39, 2e39], dtype=torch.float64)}
    current = {"w": torch.ones(4, dtype=torch.bool)}
    masks = sk.select_masks(scores, 0.5, current=current)  # min_keep unused: no "protects the rest"
    assert masks["w"].tolist() == [True, False, True, False]


def test_user_minus_inf_scores_are_not_taken_for_already_pruned():
    scores = {"w": torch.tensor([-math.inf, -math.inf, -math.inf, 1.0])}
    current = {"w": torch.ones(4, dtype=torch.bool)}
    masks = sk.select_masks(scores, 0.5, current=current)
    assert masks["w"].tolist() == [False, False, True, True]
    # and +inf is not taken for "protected" by min_keep
    scores = {"w": torch.tensor([math.inf, math.inf, math.inf, 1.0])}
    assert sk.select_masks(scores, 0.75, min_keep=0.25)["w"].tolist() == [True, False, False, False]


def test_current_and_min_keep_keep_the_tie_rule():
    scores = {"a": torch.ones(2, 2), "b": torch.ones(3)}
    current = {"a": torch.tensor([[True, True], [True, False]])}
    masks = sk.select_masks(scores, 3 / 7, current=current)
    # the pre-pruned entry counts; then ties in flat order: a[0,0], a[0,1]
    assert masks["a"].tolist() == [[False, False], [True, False]]
    assert masks["b"].tolist() == [True, True, True]
    masks = sk.select_masks(scores, 3 / 7, min_keep=0.5)  # a keeps a[0,0], a[0,1]; b keeps b[0], b[1]
    assert masks["a"].tolist() == [[True, True], [False, False]]
    assert masks["b"].tolist() == [True, True, False]


def test_bfloat16_scores_ranked_in_their_dtype():
    scores = {"w": torch.tensor([3.0, 1.0, 2.0, 4.0], dtype=torch.bfloat16)}
    current = {"w": torch.tensor([True, True, True, False])}
    assert sk.select_masks(scores, 0.5, current=current)["w"].tolist() == [True, False, True, False]


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(sparsity=0.5, current={"w": [True] * 4}), TypeError, r"current\['w'\] must be a bool tensor"),
    (dict(sparsity=0.5, min_keep=True), TypeError, "min_keep"),
    (dict(sparsity=0.5, min_keep=False), TypeError, "min_keep"),
    (dict(sparsity=0.5, scope="layer", min_keep=0.1), ValueError, "min_keep.*scope='layer'"),
    (dict(sparsity=0.5, min_keep=float("nan")), ValueError, "min_keep"),
])
def test_select_masks_named_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sk.select_masks({"w": torch.rand(4)}, **kwargs)


def test_numpy_scalars_are_accepted_as_sparsity():
    np = pytest.importorskip("numpy")
    scores = {"w": torch.rand(8)}
    expected = sk.select_masks(scores, 0.5)
    for value in (np.float32(0.5), np.float64(0.5), np.float16(0.5)):
        assert torch.equal(sk.select_masks(scores, value)["w"], expected["w"])
    assert sk.cubic_sparsity(np.int64(200), np.float32(0.5), begin_step=0, end_step=100) == 0.5
    assert sk.imp_sparsity(np.float32(0.5), np.int32(1)) == 0.5


@pytest.mark.parametrize("args, kwargs, exc, match", [
    (("a", 0.5), dict(begin_step=0, end_step=10), TypeError, "step must be an int, got str 'a'"),
    ((3, 0.5), dict(begin_step=0, end_step=10, initial_sparsity=0.6), ValueError, "initial_sparsity.*<= final"),
    ((3, 0.5), dict(begin_step=0.5, end_step=10), TypeError, "begin_step"),
])
def test_cubic_schedule_named_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sk.cubic_sparsity(*args, **kwargs)


# --- geometric schedule (moved from at_init) ---


def test_geometric_schedule_shrinks_density_geometrically() -> None:
    sched = select.geometric_schedule(0.999, 3)
    assert sched[-1] == 0.999
    assert [1 - s for s in sched] == pytest.approx([0.1, 0.01, 0.001])
    sched = select.geometric_schedule(0.99, 4, initial_sparsity=0.9)
    assert [1 - s for s in sched] == pytest.approx([0.1 * 0.1 ** (k / 4) for k in range(1, 5)])
    assert select.geometric_schedule(0.5, 1) == [0.5]


@settings(max_examples=50, deadline=None)
@given(sparsity=st.floats(0.0, 0.9999), rounds=st.integers(1, 200))
def test_geometric_schedule_properties(sparsity: float, rounds: int) -> None:
    sched = select.geometric_schedule(sparsity, rounds)
    assert len(sched) == rounds and sched[-1] == sparsity
    assert all(a <= b + 1e-12 for a, b in zip(sched, sched[1:]))
    ratios = [(1 - b) / (1 - a) for a, b in zip([0.0, *sched[:-1]], sched)]
    assert ratios == pytest.approx([(1 - sparsity) ** (1 / rounds)] * rounds, rel=1e-6)


def test_geometric_schedule_bad_input() -> None:
    with pytest.raises(ValueError, match="rounds"):
        select.geometric_schedule(0.9, 0)
    with pytest.raises(ValueError, match="final_sparsity"):
        select.geometric_schedule(1.0, 3)
    with pytest.raises(ValueError, match="initial_sparsity"):
        select.geometric_schedule(0.5, 3, initial_sparsity=0.8)


def _remaining(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    return {n: int(m.sum()) for n, m in masks.items()}


# --- random masks --------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(p=st.floats(0.0, 0.99), seed=st.integers(0, 10_000))
def test_random_masks_keep_per_layer_counts(p: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    masks = {"a": torch.rand(20, 30, generator=gen) > p, "b": torch.rand(7, generator=gen) > p}
    rand = select.random_masks_like(masks, seed)
    assert _remaining(rand) == _remaining(masks)
    assert {n: m.shape for n, m in rand.items()} == {n: m.shape for n, m in masks.items()}
    assert all(torch.equal(rand[n], m) for n, m in select.random_masks_like(masks, seed).items())


def test_random_masks_differ_from_the_ticket() -> None:
    mask = torch.zeros(100, 100, dtype=torch.bool)
    mask[:, :20] = True  # a structured ticket
    rand = select.random_masks_like({"w": mask}, 0)["w"]
    assert int(rand.sum()) == 2000
    assert int((rand & mask).sum()) < 1000  # overlap ~ 400 by chance, never the whole ticket


def test_random_masks_bad_input() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        select.random_masks_like({}, 0)
    with pytest.raises(TypeError, match="seed"):
        select.random_masks_like({"w": torch.ones(3, dtype=torch.bool)}, 1.5)
    with pytest.raises(TypeError, match="bool"):
        select.random_masks_like({"w": torch.ones(3)}, 0)


def test_random_masks_like_is_the_layerwise_shuffle_keeps_per_layer_counts_and_moves_entries() -> None:
    torch.manual_seed(0)
    masks = sk.select_masks(sk.scores.magnitude(sk.models.MLP()), 0.9)
    shuffled = select.random_masks_like(masks, seed=1)
    assert list(shuffled) == list(masks)
    for k in masks:
        assert shuffled[k].shape == masks[k].shape and int(shuffled[k].sum()) == int(masks[k].sum())
        assert not torch.equal(shuffled[k], masks[k])
    again = select.random_masks_like(masks, seed=1)
    assert all(torch.equal(again[k], shuffled[k]) for k in masks)
    other = select.random_masks_like(masks, seed=2)
    assert any(not torch.equal(other[k], shuffled[k]) for k in masks)
    with pytest.raises(TypeError, match="seed"):
        select.random_masks_like(masks, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bool"):
        select.random_masks_like({"a": torch.ones(4)}, seed=0)


def test_random_mask_exact_count_and_seeded() -> None:
    m = select.random_mask((7, 11), 30, seed=3)
    assert m.shape == (7, 11) and m.dtype == torch.bool and int((~m).sum()) == 30
    assert torch.equal(m, select.random_mask((7, 11), 30, seed=3))
    assert not torch.equal(m, select.random_mask((7, 11), 30, seed=4))
    assert bool(select.random_mask((3,), 0, seed=0).all()) and not bool(select.random_mask((3,), 3, seed=0).any())
    with pytest.raises(ValueError, match="pruned"):
        select.random_mask((2, 2), 5, seed=0)
    with pytest.raises(ValueError, match="shape"):
        select.random_mask((2, -1), 1, seed=0)
    with pytest.raises(TypeError, match="seed"):
        select.random_mask((2, 2), 1, seed=None)  # type: ignore[arg-type]


# --- exact behaviour pinned by mutation testing (tests/MUTATION.md) -----------------------


def _sampled_positions(n: int, sample: int) -> torch.Tensor:
    """The positions ``lowest_k_parts`` samples from one part of ``n`` entries (seeded generator)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    return torch.randint(n, (max(1, sample * n // n),), generator=gen).unique()


@pytest.mark.parametrize("k", [1, 500, 999])
def test_large_input_path_with_an_unrepresentative_sample_is_still_exact(monkeypatch, k):
    """Scores built so that the sample misses the k-th value: the fallback sort answers, exactly."""
    monkeypatch.setattr(select, "_EXACT_SORT_LIMIT", 100)
    monkeypatch.setattr(select, "_SAMPLE_SIZE", 64)
    n = 1000
    for big_at_sample in (True, False):
        flat = (torch.arange(n) % 7).float()  # many ties outside the sample
        flat[_sampled_positions(n, 64)] = 1e6 if big_at_sample else -1e6
        got = select.lowest_k(flat, k)
        assert got.dtype == torch.bool and torch.equal(got, _oracle_pruned(flat, k)), (k, big_at_sample)
        parts = list(flat.split([300, 700]))
        assert torch.equal(torch.cat(select.lowest_k_parts(parts, k)), _oracle_pruned(flat, k))


def test_lowest_k_keeps_the_device_and_accepts_no_parts():
    assert select.lowest_k_parts([], 0) == []
    chosen = select.lowest_k(torch.arange(5.0, device="meta"), 2)
    assert chosen.device.type == "meta" and chosen.dtype == torch.bool and chosen.shape == (5,)


def test_current_for_a_later_tensor_only():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([5.0, 6.0, 7.0, 8.0])}
    current = {"b": torch.tensor([True, True, True, False])}  # b's largest is already pruned
    masks = sk.select_masks(scores, 0.25, current=current)
    assert masks["a"].tolist() == [False, True, True, True] and masks["b"].tolist() == [True, True, True, False]


def test_min_keep_protects_among_the_entries_current_left():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([10.0, 11.0, 12.0, 13.0])}
    current = {"a": torch.tensor([True, True, True, False])}  # a's largest is already pruned
    masks = sk.select_masks(scores, 0.5, current=current, min_keep=0.5)
    # a keeps its two largest remaining (2, 3); a[0] and then b's two smallest are pruned
    assert masks["a"].tolist() == [False, True, True, False]
    assert masks["b"].tolist() == [False, False, True, True]


def test_min_keep_of_one_keeps_everything():
    scores = {"a": torch.rand(4), "b": torch.rand(4)}
    assert all(m.all() for m in sk.select_masks(scores, 0.0, min_keep=1.0).values())
    with pytest.raises(ValueError, match=r"^all scores: cannot prune 1 entries while min_keep protects the rest "
                                         r"\(8 entries\)$"):
        sk.select_masks(scores, 0.125, min_keep=1.0)
    with pytest.raises(ValueError, match=r"^min_keep must be in \[0, 1\], got 1.5$"):
        sk.select_masks(scores, 0.5, min_keep=1.5)


def test_select_masks_constraint_messages_name_the_tensor():
    scores = {"a": torch.rand(4), "b": torch.rand(4)}
    current = {"a": torch.tensor([False, False, True, True])}
    with pytest.raises(ValueError, match=r"^a: 2 entries are already pruned by `current`, more than the 1 that the "
                                         r"requested sparsity allows; sparsity can only grow$"):
        sk.select_masks(scores, 0.25, scope="layer", current=current)
    with pytest.raises(ValueError, match=r"^all scores: 2 entries are already pruned by `current`, more than the 1 "
                                         r"that the requested sparsity allows; sparsity can only grow$"):
        sk.select_masks(scores, 0.125, current=current)


def test_select_masks_input_messages():
    with pytest.raises(ValueError, match=r"^sparsity must be in \[0, 1\), got 1.0$"):
        sk.select_masks({"w": torch.rand(4)}, 1.0)
    with pytest.raises(ValueError, match=r"^scores must be a non-empty mapping name -> score tensor$"):
        sk.select_masks({}, 0.5)
    with pytest.raises(TypeError, match=r"^scores\['w'\] must be a Tensor, got list$"):
        sk.select_masks({"w": [1.0]}, 0.5)
    with pytest.raises(TypeError, match=r"^current must be a mapping name -> bool mask, got list$"):
        sk.select_masks({"w": torch.rand(4)}, 0.5, current=[])
    with pytest.raises(TypeError, match=r"^current\['w'\] must be a bool tensor of shape \(4,\), got list$"):
        sk.select_masks({"w": torch.rand(4)}, 0.5, current={"w": [True] * 4})


def test_random_mask_edges_and_messages():
    assert select.random_mask((0, 3), 0, seed=0).shape == (0, 3)
    with pytest.raises(ValueError, match=r"^pruned must be an int in \[0, 4\], got -1$"):
        select.random_mask((4,), -1, seed=0)
    with pytest.raises(ValueError, match=r"^masks must be a non-empty mapping name -> bool tensor$"):
        select.random_masks_like({}, seed=0)
    with pytest.raises(TypeError, match=r"^masks\['a'\] must be a bool tensor, got torch.float32$"):
        select.random_masks_like({"a": torch.ones(3)}, seed=0)
    with pytest.raises(TypeError, match=r"^masks\['a'\] must be a bool tensor, got list$"):
        select.random_masks_like({"a": [True]}, seed=0)


def test_random_masks_like_seeds_tensor_i_with_seed_plus_i():
    mask = torch.tensor([True, False] * 8)
    out = select.random_masks_like({"a": mask, "b": mask, "c": mask}, seed=5)
    for i, name in enumerate("abc"):
        assert torch.equal(out[name], select.random_mask((16,), 8, seed=5 + i))


def test_schedule_messages_name_the_argument():
    with pytest.raises(ValueError, match=r"^final_sparsity must be in \[0, 1\), got 1.0$"):
        select.geometric_schedule(1.0, 3)
    with pytest.raises(ValueError, match=r"^initial_sparsity must be in \[0, 1\), got 1.5$"):
        select.geometric_schedule(0.5, 3, initial_sparsity=1.5)
    with pytest.raises(ValueError, match=r"^rounds must be a positive int, got 0$"):
        select.geometric_schedule(0.5, 0)
    with pytest.raises(ValueError, match=r"^rate must be in \[0, 1\), got 1.0$"):
        sk.imp_sparsity(1.0, 2)
    with pytest.raises(ValueError, match=r"^rounds must be a non-negative int, got -1$"):
        sk.imp_sparsity(0.2, -1)
    with pytest.raises(ValueError, match=r"^final_sparsity must be in \[0, 1\), got 1.0$"):
        sk.cubic_sparsity(3, 1.0, begin_step=0, end_step=10)
    with pytest.raises(ValueError, match=r"^initial_sparsity must be in \[0, 1\), got -0.5$"):
        sk.cubic_sparsity(3, 0.5, begin_step=0, end_step=10, initial_sparsity=-0.5)
    with pytest.raises(TypeError, match=r"^begin_step must be an int, got float 0.5$"):
        sk.cubic_sparsity(3, 0.5, begin_step=0.5, end_step=10)
    with pytest.raises(TypeError, match=r"^end_step must be an int, got float 10.0$"):
        sk.cubic_sparsity(3, 0.5, begin_step=0, end_step=10.0)
    with pytest.raises(ValueError, match=r"^need begin_step < end_step, got begin_step=3, end_step=3$"):
        sk.cubic_sparsity(3, 0.5, begin_step=3, end_step=3)


def test_cubic_schedule_is_exact_at_its_ends():
    # at begin_step the formula would give 0.7 + (0.1 - 0.7) = 0.09999999999999998: the endpoint is returned
    assert sk.cubic_sparsity(10, 0.7, begin_step=10, end_step=20, initial_sparsity=0.1) == 0.1
    assert sk.cubic_sparsity(20, 0.7, begin_step=10, end_step=20, initial_sparsity=0.1) == 0.7
    assert sk.cubic_sparsity(15, 0.5, begin_step=0, end_step=10, initial_sparsity=0.5) == 0.5  # initial == final
