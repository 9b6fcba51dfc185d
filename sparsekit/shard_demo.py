"""Pruning beyond one machine: the experiment of its chapter, run with ``torchrun``.

``python -m torch.distributed.run --nproc-per-node 2 -m sparsekit.shard_demo --out results.json``
(CPU, gloo; ``benchmarks/dist_prune.py`` runs the same and writes its Markdown table):

(a) **Sharded model.** 12 x ``Linear(2048, 2048)`` (50.3 M weights) is sharded over the
    ranks with FSDP2 (``torch.distributed.fsdp.fully_shard``, ``Shard(0)``: each rank holds
    a block of rows of every weight; it works on CPU with gloo in torch 2.13). Each rank
    scores its local rows (``|w|``) and ``sk.select_masks(..., group=)`` selects 90 %
    globally. Checked: the masks equal one process's ``select_masks`` on the union of the
    shards (rank 0's first); the bytes each rank puts into and gets out of collectives
    (``sparsekit.distributed.count_bytes``) against the bytes of the scores; the time
    against one process selecting on the union.
(b) **Data-parallel calibration.** Each rank runs its half of 16 calibration batches through
    a two-layer MLP; ``sk.posttrain.calibrate(..., group=)`` all-reduces the Gram matrices;
    SparseGPT at 50 % on every rank is checked against one process on all 16 batches.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from . import distributed, posttrain
from .bench import cpu_name
from .select import select_masks

LAYERS, WIDTH, SPARSITY, REPEATS = 12, 2048, 0.9, 3


def timed(fn, group) -> tuple[object, float]:
    """``fn()``'s result and the median wall time of REPEATS calls (ranks start together)."""
    times, result = [], None
    for _ in range(REPEATS):
        if group is not None:
            dist.barrier(group)
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def sharded_selection(rank: int, world: int, seed: int) -> dict[str, object]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)  # every rank builds the same model, then keeps its rows
    model = nn.Sequential(*[nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(LAYERS)])
    mesh = init_device_mesh("cpu", (world,))
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    local = {name: p.to_local().detach().abs() for name, p in model.named_parameters()}
    group = dist.group.WORLD
    with distributed.count_bytes() as log:
        select_masks(local, SPARSITY, group=group)
    rounds = list(log.rounds)
    masks, seconds = timed(lambda: select_masks(local, SPARSITY, group=group), group)
    score_bytes = sum(v.numel() * v.element_size() for v in local.values())
    score_bytes = int(distributed.all_sum([score_bytes], group)[0])

    # verification only (not counted): every rank's scores and masks to rank 0
    gathered_scores = [None] * world if rank == 0 else None
    gathered_masks = [None] * world if rank == 0 else None
    dist.gather_object(local, gathered_scores, dst=0)
    dist.gather_object(masks, gathered_masks, dst=0)
    out = {"bytes_sent": log.sent, "bytes_received": log.received, "calls": log.calls, "seconds": seconds,
           "score_bytes": score_bytes, "weights": score_bytes // 4, "rounds": rounds, "world": world}
    if rank == 0:
        union = {f"rank{r}.{k}": v for r, shard in enumerate(gathered_scores) for k, v in shard.items()}
        expected, single_seconds = timed(lambda: select_masks(union, SPARSITY), None)
        got = {f"rank{r}.{k}": v for r, shard in enumerate(gathered_masks) for k, v in shard.items()}
        out["equal"] = list(got) == list(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
        out["pruned"] = sum(int((~m).sum()) for m in got.values())
        out["single_seconds"] = single_seconds
    return out


def data_parallel_calibration(rank: int, world: int, seed: int) -> dict[str, object]:
    torch.manual_seed(seed + 1)
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256))
    g = torch.Generator().manual_seed(seed + 2)
    batches = [torch.randn(64, 256, generator=g) for _ in range(16)]
    group = dist.group.WORLD
    with distributed.count_bytes() as log:
        stats, seconds = timed(lambda: posttrain.calibrate(model, batches[rank::world], group=group), group)
    pruned = {name: posttrain.sparsegpt(getattr(model, name).weight, s.gram, 0.5) for name, s in stats.items()}
    out = {"calib_seconds": seconds, "calib_bytes": log.sent // REPEATS}
    if rank == 0:
        single, single_seconds = timed(lambda: posttrain.calibrate(model, batches), None)
        out["calib_single_seconds"] = single_seconds
        out["gram_max_rel"] = max(float((stats[n].gram - single[n].gram).abs().max() / single[n].gram.abs().max())
                                  for n in single)
        out["counts_equal"] = all(stats[n].count == single[n].count for n in single)
        reference = {n: posttrain.sparsegpt(getattr(model, n).weight, s.gram, 0.5) for n, s in single.items()}
        out["masks_equal"] = all(torch.equal(pruned[n][1], reference[n][1]) for n in reference)
        out["weight_max_diff"] = max(float((pruned[n][0] - reference[n][0]).abs().max()) for n in reference)
    return out


def results_markdown(results: dict[str, dict[str, object]], *, title: bool = True) -> str:
    """The two result tables of :func:`main` as Markdown (the book and the benchmark show the same);
    ``title=False`` leaves out the heading (for a notebook output)."""
    a, b = results["selection"], results["calibration"]
    world = a["world"]
    share = (a["bytes_sent"] + a["bytes_received"]) / a["score_bytes"]
    lines = [
        *(["# Pruning beyond one machine (CPU, gloo)", ""] if title else []),
        f"Run {results['date']} on {results['cpu']}, torch {results['torch']}, "
        f"`torchrun --nproc-per-node {world}` on one machine (gloo over loopback), median of {REPEATS}.",
        "",
        f"**(a) Global selection on FSDP2-sharded weights** ({LAYERS} x Linear({WIDTH}, {WIDTH}), "
        f"{a['weights']:,} weights, {SPARSITY:.0%} pruned):",
        "",
        "| | value |",
        "| --- | --- |",
        f"| masks equal to one process on the union | {a['equal']} |",
        f"| pruned entries (exact target {round(SPARSITY * a['weights']):,}) | {a['pruned']:,} |",
        f"| bytes rank 0 sent / received in collectives | {a['bytes_sent']:,} / {a['bytes_received']:,} |",
        f"| bytes of all scores (float32) | {a['score_bytes']:,} |",
        f"| rank 0's traffic as a share of the scores' bytes | {share:.4%} |",
        f"| collective calls | {a['calls']} |",
        f"| time, {world} ranks (each on its shard) | {a['seconds']:.2f} s |",
        f"| time, one process on the union | {a['single_seconds']:.2f} s |",
        "",
        "**(b) Data-parallel calibration** (MLP 256-512-256, 16 batches of 64 rows, half per rank), "
        "then SparseGPT at 50 % on every rank:",
        "",
        "| | value |",
        "| --- | --- |",
        f"| token counts equal | {b['counts_equal']} |",
        f"| max relative difference of the Gram matrices (float64, summation order) | {b['gram_max_rel']:.1e} |",
        f"| SparseGPT masks equal to one process | {b['masks_equal']} |",
        f"| max abs difference of SparseGPT's weights | {b['weight_max_diff']:.1e} |",
        f"| bytes rank 0 sent in the all-reduce | {b['calib_bytes']:,} |",
        f"| calibration time, {world} ranks / one process | {b['calib_seconds']:.3f} s / "
        f"{b['calib_single_seconds']:.3f} s |",
        "",
        "Both ranks share one 2-core machine here, so the times show the overhead of the protocol, "
        "not the speedup of more machines.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run both experiments on every rank; rank 0 writes the results as JSON to ``--out``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Distributed selection and calibration (launch with torchrun).")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for rank 0's results")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    try:
        results = {"selection": sharded_selection(rank, world, args.seed),
                   "calibration": data_parallel_calibration(rank, world, args.seed)}
        if rank == 0:
            results |= {"date": f"{dt.datetime.now():%Y-%m-%d %H:%M}", "cpu": cpu_name(), "torch": torch.__version__}
            args.out.write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
