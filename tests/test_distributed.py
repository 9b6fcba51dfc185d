"""sparsekit.distributed: global selection over the ranks of a gloo process group equals one process.

One fixture spawns two CPU processes once; each runs every scenario on its shard and saves
its masks; the tests compare them with ``select_masks`` run in this process on the union.
"""

from __future__ import annotations

import traceback

import pytest
import torch

import sparsekit as sk
from sparsekit import distributed

WORLD = 2


def shard(rank: int, scenario: str) -> dict[str, torch.Tensor]:
    """This rank's scores in a scenario (uneven sizes; many ties: integer-valued scores)."""
    g = torch.Generator().manual_seed(100 * rank + len(scenario))
    if scenario == "empty-rank" and rank == 1:
        return {}
    if scenario == "large":  # several bracketing rounds (more than CANDIDATE_LIMIT candidates)
        sizes = [(300, 400), (50_000,)] if rank == 0 else [(1000, 150)]
        return {f"r{rank}.t{i}": torch.randn(*s, generator=g) for i, s in enumerate(sizes)}
    sizes = [(7, 5), (13,)] if rank == 0 else [(3, 4, 2), (1,), (17,)]
    return {f"r{rank}.t{i}": torch.randint(0, 6, s, generator=g).float() for i, s in enumerate(sizes)}


def current_for(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (torch.arange(v.numel()) % 5 != 0).reshape(v.shape) for k, v in scores.items()}


CASES = {  # name -> (scenario, keyword arguments)
    "ties-global": ("ties", {"sparsity": 0.4}),
    "ties-current": ("ties", {"sparsity": 0.6, "current": True}),
    "ties-min-keep": ("ties", {"sparsity": 0.6, "min_keep": 0.25}),
    "ties-layer": ("ties", {"sparsity": 0.5, "scope": "layer"}),
    "empty-rank": ("empty-rank", {"sparsity": 0.3}),
    "large": ("large", {"sparsity": 0.9}),
}


def run_case(rank: int, case: str, group: object) -> dict[str, torch.Tensor]:
    scenario, kwargs = CASES[case]
    kwargs = dict(kwargs)
    scores = shard(rank, scenario)
    if kwargs.pop("current", False):
        kwargs["current"] = current_for(scores)
    return sk.select_masks(scores, group=group, **kwargs)


def worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    results: dict[str, object] = {}
    try:
        for case in CASES:
            with distributed.count_bytes() as log:
                results[case] = run_case(rank, case, dist.group.WORLD)
            results[f"{case}:bytes"] = (log.sent, log.received, log.calls)
        # bad arguments on one rank must raise on every rank, not hang the other
        for case, kwargs in {"mismatch": {"sparsity": 0.5 if rank == 0 else 0.6},
                             "scope-mismatch": {"sparsity": 0.5, "scope": "global" if rank == 0 else "layer"},
                             "bad-on-rank-1": {"sparsity": 0.5, "current": {"nope": torch.ones(1, dtype=torch.bool)}
                                               if rank == 1 else None}}.items():
            try:
                sk.select_masks(shard(rank, "ties"), group=dist.group.WORLD, **kwargs)
                results[case] = "no error"
            except ValueError as e:
                results[case] = str(e)
    except Exception:
        results["crash"] = traceback.format_exc()
    finally:
        torch.save(results, f"{out_dir}/rank{rank}.pt")
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    out = [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]
    for r, res in enumerate(out):
        assert "crash" not in res, f"rank {r}:\n{res.get('crash')}"
    return out


def single_process(case: str) -> dict[str, torch.Tensor]:
    """The reference: one process on the union, rank 0's tensors first."""
    scenario, kwargs = CASES[case]
    kwargs = dict(kwargs)
    union = {k: v for r in range(WORLD) for k, v in shard(r, scenario).items()}
    if kwargs.pop("current", False):
        kwargs["current"] = current_for(union)
    return sk.select_masks(union, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
def test_distributed_selection_equals_one_process_on_the_union(ranks, case):
    expected = single_process(case)
    got = {k: v for res in ranks for k, v in res[case].items()}
    assert list(got) == list(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_exact_global_count(ranks):
    total = sum(v.numel() for r in range(WORLD) for v in shard(r, "large").values())
    pruned = sum(int((~m).sum()) for res in ranks for m in res["large"].values())
    assert pruned == round(0.9 * total)


def test_only_a_small_fraction_of_the_scores_crosses_the_network(ranks):
    """The 'large' case: 470 000 float32 scores (1.9 MB) over two ranks."""
    score_bytes = 4 * sum(v.numel() for r in range(WORLD) for v in shard(r, "large").values())
    for res in ranks:
        sent, received, _ = res["large:bytes"]
        assert sent + received < 0.25 * score_bytes  # bounded by samples + candidates, not by the model
    sent, received, calls = ranks[0]["ties-layer:bytes"]
    assert (sent, received) == (0, 0)  # scope="layer": only the argument check (an object gather)


def test_bad_arguments_raise_on_every_rank(ranks):
    for res in ranks:
        assert "every rank must pass the same arguments" in res["mismatch"]
        assert "every rank must pass the same arguments" in res["scope-mismatch"]
        assert "rank 1: ValueError: current has names not in scores" in res["bad-on-rank-1"]


def test_a_group_without_torch_distributed_initialized_is_refused():
    with pytest.raises(ValueError, match="not initialized"):
        sk.select_masks({"w": torch.rand(4)}, 0.5, group=object())


def test_global_selection_agrees_on_its_counts_in_one_all_reduce(ranks):
    """Arguments (one object gather), the three counts (total, already pruned, protected: one
    all-reduce), then the bracketing: for the small cases everything fits in one candidate round."""
    calls = {case: ranks[0][f"{case}:bytes"][2] for case in CASES}
    # 1 argument check + 1 all-reduce of the three counts + 5 in lowest_k_parts, whose one round
    # gathers every candidate; 11 when each count had an all-reduce of its own
    assert {case: calls[case] for case in ("ties-global", "ties-current", "ties-min-keep", "empty-rank")} == {
        "ties-global": 7, "ties-current": 7, "ties-min-keep": 7, "empty-rank": 7}
    assert calls["large"] > 7  # more bracketing rounds
