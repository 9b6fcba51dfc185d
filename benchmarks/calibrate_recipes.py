"""Calibrate ``sparsekit.recipes``: the shipped recipe per model (and learning-rate neighbours), 3 seeds.

For each model and learning rate: train with early stopping on MNIST-1D's validation split
(``mnist1d(val_size=500)``), then report the epoch it stopped at, the restored best epoch and the
test accuracy (mean +- sample std over seeds). The shipped learning rate should sit where test
accuracy is highest within the seed spread, and the shipped plateau drop (``lr_drops``) should
help: each model is also run with the drop switched off. Chapter 3's narrower MLP (40-100-100-10)
is calibrated beside the book's 40-256-256-10, since it borrows that recipe.

    python benchmarks/calibrate_recipes.py [--models mlp,mlp100,cnn] [--seeds 3] [--no-neighbours] [--append]

Chapter 2's residual CNN and Transformer take 20-40 s per run here, so they are calibrated without
learning-rate neighbours: ``--models rescnn,transformer --no-neighbours --append``.

Writes ``benchmarks/results/recipes_cpu.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
from pathlib import Path

from short_budgets import RES, TF  # chapter 2's sizes (this script's folder is on sys.path)

import sparsekit as sk
from sparsekit import recipes
from sparsekit.bench import cpu_name

# Calibration name -> (recipe name, model keyword arguments, label).
VARIANTS: dict[str, tuple[str, dict[str, object], str]] = {
    "mlp": ("mlp", {}, "mlp 40-256-256-10"),
    "mlp100": ("mlp", {"hidden": (100, 100)}, "mlp 40-100-100-10 (chapter 3)"),
    "cnn": ("cnn", {}, "cnn"),
    "rescnn": ("rescnn", RES, "rescnn 32 x 2 blocks (chapter 2)"),
    "transformer": ("transformer", TF, "transformer 2 x 8 heads (chapter 2)"),
}


def candidates(shipped: recipes.Recipe, neighbours: bool) -> list[recipes.Recipe]:
    """The shipped recipe, the same without its plateau drop, and (optionally) lr / 3 and lr * 3."""
    out = [shipped]
    if shipped.lr_drops:
        out.append(shipped.but(lr_drops=0))
    if neighbours:
        out += [shipped.but(lr=shipped.lr / 3), shipped.but(lr=shipped.lr * 3)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp,mlp100,cnn")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-neighbours", dest="neighbours", action="store_false",
                        help="only the shipped recipe and its no-drop twin")
    parser.add_argument("--append", action="store_true", help="add rows to an existing table")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "recipes_cpu.md")
    args = parser.parse_args()
    splits = sk.data.mnist1d(val_size=500)
    lines = [f"# Training recipes, calibrated\n\nMNIST-1D (3500 train / 500 validation / 1000 test), "
             f"early stopping on validation accuracy with patience; {cpu_name()}, load average "
             f"{os.getloadavg()[0]:.1f} at start, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. "
             f"Test accuracy mean +- sample std over seeds {list(range(args.seeds))}; **bold** = the "
             f"shipped recipe. `drops` = plateau drops of the learning rate (x0.1) before stopping.\n",
             "| model | optimizer | lr | drops | patience | stopped at epoch (mean) | best epoch (mean) "
             "| best step (mean) | test acc % | s per run |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    if args.append and args.out.exists():
        lines = args.out.read_text().rstrip("\n").split("\n")
    for variant in args.models.split(","):
        name, kwargs, label = VARIANTS[variant]
        shipped = recipes.RECIPES[name]
        for recipe in candidates(shipped, args.neighbours):
            accs, stops, bests, steps, secs = [], [], [], [], []
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                sk.seed_everything(seed)
                model = sk.models.build(recipe.model, **kwargs)
                fit = recipes.fit(model, splits, recipe, seed=seed, progress=False)
                secs.append(time.perf_counter() - t0)
                accs.append(100 * sk.train.accuracy(model, splits.x_test, splits.y_test))
                stops.append(fit.epochs_run)
                bests.append(fit.best_epoch)
                steps.append(fit.best_step)
            mark = "**" if recipe == shipped else ""
            row = (f"| {label} | {recipe.optimizer} | {mark}{recipe.lr:g}{mark} | {recipe.lr_drops} | "
                   f"{recipe.patience} | {statistics.mean(stops):.0f} | {statistics.mean(bests):.0f} | "
                   f"{statistics.mean(steps):,.0f} | {mark}{statistics.mean(accs):.1f} +- "
                   f"{statistics.stdev(accs):.1f}{mark} | {statistics.mean(secs):.1f} |")
            print(row, flush=True)
            lines.append(row)
            args.out.write_text("\n".join(lines) + "\n")  # row by row: a long run can be read as it goes
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
