"""What chapter 2's short training budget changes: its ResNet and Transformer sections, converged.

Chapter 2 trains its residual CNN and its Transformers for a fixed 10 epochs (Adam 3e-3) to stay
within its run-time budget. This script repeats those two sections per seed with both budgets:
the chapter's 10 epochs and the book's recipe (``sk.recipes.RECIPES["rescnn"]`` /
``["transformer"]``: early stopping on validation accuracy with one plateau drop of the learning
rate). For the ResNet: dense accuracy, then half of every channel group removed
(``shrink_channels``), before and after the chapter's 6 epochs of fine-tuning. For the
Transformer: dense accuracy and the chapter's head-pruning curves (2 heads at a time, re-scored
after every step, ``structured.prune_heads_iteratively``) for Michel et al.'s importance, weight
magnitude and a random order, and whether the chapter's asserted claims hold.

    python benchmarks/short_budgets.py [--seeds 3]

Writes ``benchmarks/results/short_budgets_cpu.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import sparsekit as sk
from sparsekit import structured
from sparsekit.bench import cpu_name

RES = {"channels": 32, "blocks": 2}
TF = {"d_model": 32, "num_heads": 8, "d_ff": 64, "num_layers": 2}
SHORT_EPOCHS, SHORT_LR, RES_FT_EPOCHS = 10, 3e-3, 6  # chapter 2's values
ORDERS = ("importance", "magnitude", "random")


def train(name: str, kwargs: dict[str, object], budget: str, splits: sk.data.Splits, seed: int) -> nn.Module:
    """Chapter 2's short budget, or the book's recipe for ``name``."""
    if budget == "recipe":
        return sk.recipes.train_baseline(name, splits, seed, progress=False, **kwargs)[0].eval()
    sk.seed_everything(seed)
    model = sk.models.build(name, **kwargs)
    sk.train.train(model, sk.data.loaders(splits, seed=seed)[0], epochs=SHORT_EPOCHS, lr=SHORT_LR, progress=False)
    return model.eval()


def head_curve(model: nn.Module, order: str, seed: int, accuracy: Callable[[nn.Module], float],
               x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Test accuracy after removing 0, 2, 4, ... heads in ``order`` (chapter 2, section 5)."""
    gen = torch.Generator().manual_seed(seed)
    scores = {"importance": lambda m: structured.head_importance(m, x, y),
              "magnitude": structured.head_magnitude,
              "random": lambda m: [torch.rand(a.num_heads, generator=gen) for a in structured.attention_layers(m)]}
    return [accuracy(m) for _, m in structured.prune_heads_iteratively(model, scores[order], heads_per_step=2)]


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} +- {statistics.stdev(values):.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "short_budgets_cpu.md")
    args = parser.parse_args()
    splits = sk.data.mnist1d(val_size=500)
    x_ex = splits.x_train[:64]
    x_imp, y_imp = splits.x_train[:1024], splits.y_train[:1024]

    def accuracy(model: nn.Module) -> float:
        return 100 * sk.train.accuracy(model, splits.x_test, splits.y_test)

    seeds = list(range(args.seeds))
    start, load = time.perf_counter(), os.getloadavg()[0]
    res: dict[str, dict[str, list[float]]] = {}
    heads: dict[str, dict[str, list[list[float]]]] = {}
    for budget in ("10 epochs", "recipe"):
        res[budget] = {"dense": [], "before": [], "after": []}
        heads[budget] = {"dense": [], **{o: [] for o in ORDERS}}
        for seed in seeds:
            model = train("rescnn", RES, budget, splits, seed)
            small = structured.shrink_channels(model, 0.5, x_ex)
            before = accuracy(small)
            sk.train.train(small, sk.data.loaders(splits, seed=seed + 1000)[0], epochs=RES_FT_EPOCHS, lr=1e-3,
                           progress=False)
            for key, value in zip(("dense", "before", "after"), (accuracy(model), before, accuracy(small.eval()))):
                res[budget][key].append(value)
            tf = train("transformer", TF, budget, splits, seed)
            heads[budget]["dense"].append([accuracy(tf)])
            for order in ORDERS:
                heads[budget][order].append(head_curve(tf, order, seed, accuracy, x_imp, y_imp))
            print(budget, seed, {k: v[-1] for k, v in res[budget].items()},
                  {k: round(statistics.mean(v[-1]), 1) for k, v in heads[budget].items()}, flush=True)

    lines = [f"# Chapter 2's short budget against the book's recipe\n\n`benchmarks/short_budgets.py`; MNIST-1D "
             f"(3500 / 500 / 1000), seeds {seeds}; mean +- sample std over seeds, test accuracy in %. "
             f"{cpu_name()}, load average {load:.1f} at start, "
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {time.perf_counter() - start:.0f} s in all.\n",
             "## ResCNN1d (32 channels, 2 blocks): half of every channel group removed\n",
             "| training | dense | pruned, before fine-tuning | after 6 epochs of fine-tuning |",
             "|---|---:|---:|---:|"]
    for budget, r in res.items():
        lines.append(f"| {budget} | {mean_std(r['dense'])} | {mean_std(r['before'])} | {mean_std(r['after'])} |")
    lines += ["\n## TinyTransformer (2 layers x 8 heads): heads removed 2 at a time, re-scored, no fine-tuning\n",
              "Curve mean = mean accuracy over the curve (0 to 14 heads removed). Gaps are paired by seed "
              "(importance minus the other order, points).\n",
              "| training | dense | curve mean: importance / magnitude / random | lost after 2 heads: importance / "
              "magnitude / random | importance - magnitude, per seed | importance - random, per seed |",
              "|---|---:|---|---|---|---|"]
    claims = []
    for budget, h in heads.items():
        curve_mean = {o: [statistics.mean(c) for c in h[o]] for o in ORDERS}
        lost2 = {o: [c[0] - c[1] for c in h[o]] for o in ORDERS}
        gap = {o: [a - b for a, b in zip(curve_mean["importance"], curve_mean[o])] for o in ORDERS[1:]}
        lines.append(f"| {budget} | {mean_std([d[0] for d in h['dense']])} | "
                     + " / ".join(f"{statistics.mean(curve_mean[o]):.1f}" for o in ORDERS) + " | "
                     + " / ".join(f"{statistics.mean(lost2[o]):.1f}" for o in ORDERS) + " | "
                     + ", ".join(f"{g:+.1f}" for g in gap["magnitude"]) + " | "
                     + ", ".join(f"{g:+.1f}" for g in gap["random"]) + " |")
        claims.append((budget, {
            "importance beats magnitude over the curve in every seed": all(g > 0 for g in gap["magnitude"]),
            "importance beats random over the curve by > 5 points on average": statistics.mean(gap["random"]) > 5,
            "the first 2 heads cost less by importance than at random":
                statistics.mean(lost2["importance"]) < statistics.mean(lost2["random"]),
            "removing 2 heads by importance costs accuracy": statistics.mean(lost2["importance"]) > 0}))
    lines += ["\n## Chapter 2's asserted head claims, by budget\n",
              "| claim | " + " | ".join(b for b, _ in claims) + " |", "|---|" + "---|" * len(claims)]
    for claim in claims[0][1]:
        lines.append(f"| {claim} | " + " | ".join("holds" if c[claim] else "**fails**" for _, c in claims) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
