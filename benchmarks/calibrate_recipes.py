"""Calibrate ``sparsekit.recipes``: the shipped recipe per model (and learning-rate neighbours), 3 seeds.

For each model and learning rate: train with early stopping on MNIST-1D's validation split
(``mnist1d(val_size=500)``), then report the epoch it stopped at, the restored best epoch and the
test accuracy (mean +- sample std over seeds). The shipped learning rate should sit where test
accuracy is highest within the seed spread.

    python benchmarks/calibrate_recipes.py [--models mlp,cnn] [--seeds 3]

Writes ``benchmarks/results/recipes_cpu.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
from pathlib import Path

import sparsekit as sk
from sparsekit import recipes
from sparsekit.bench import cpu_name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(recipes.RECIPES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "recipes_cpu.md")
    args = parser.parse_args()
    splits = sk.data.mnist1d(val_size=500)
    lines = [f"# Training recipes, calibrated\n\nMNIST-1D (3500 train / 500 validation / 1000 test), "
             f"early stopping on the recipe's monitor ({recipes.RECIPES[args.models.split(',')[0]].monitor}); "
             f"{cpu_name()}, load average {os.getloadavg()[0]:.1f} at start, "
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. Test accuracy mean +- sample std "
             f"over seeds {list(range(args.seeds))}; **bold** = the shipped recipe.\n",
             "| model | optimizer | lr | patience | stopped at epoch (mean) | best epoch (mean) "
             "| best step (mean) | test acc % | s per run |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in args.models.split(","):
        shipped = recipes.RECIPES[name]
        for lr in sorted({shipped.lr / 3, shipped.lr, shipped.lr * 3}):
            recipe = shipped.but(lr=lr)
            accs, stops, bests, steps, secs = [], [], [], [], []
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                sk.seed_everything(seed)
                model = sk.models.build(recipe.model)
                fit = recipes.fit(model, splits, recipe, seed=seed, progress=False)
                secs.append(time.perf_counter() - t0)
                accs.append(100 * sk.train.accuracy(model, splits.x_test, splits.y_test))
                stops.append(fit.epochs_run)
                bests.append(fit.best_epoch)
                steps.append(fit.best_step)
            mark = "**" if lr == shipped.lr else ""
            row = (f"| {name} | {recipe.optimizer} | {mark}{lr:g}{mark} | {recipe.patience} | "
                   f"{statistics.mean(stops):.0f} | {statistics.mean(bests):.0f} | {statistics.mean(steps):,.0f} | "
                   f"{mark}{statistics.mean(accs):.1f} +- {statistics.stdev(accs):.1f}{mark} | "
                   f"{statistics.mean(secs):.1f} |")
            print(row, flush=True)
            lines.append(row)
            args.out.write_text("\n".join(lines) + "\n")  # row by row: a long run can be read as it goes
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
