"""Why chapter 0's dense baselines differ from issue 13's independent reference (MNIST-1D, 3 seeds).

The reference (a plain-torch implementation, Adam, "trained until validation loss stops improving")
reports MLP 40-256-256-10 69.2 +- 0.4 %, 1-D CNN 92.2 +- 0.7 %, MLP 40-100-100-10 65.9 +- 0.7 %.
This script measures three candidate causes of the gap, per seed, with ``sk.recipes``:

* **the learning-rate drop**: the recipe divides the learning rate by 10 on the first plateau;
  ``no lr drop`` trains at the constant initial rate (``lr_drops=0``);
* **the validation hold-out**: the recipe trains on 3,500 examples (500 held out for early stopping);
  ``all 4000`` retrains on all 4,000 with the recipe run's schedule, without validation: as many
  epochs at the initial rate as the run kept before its drop, then as many at the lower rate as
  it kept after it;
* **the stopping rule**: ``monitor=val_loss`` stops on validation loss (the reference's rule) instead
  of validation accuracy (the book's).

    OMP_NUM_THREADS=1 python benchmarks/reference_gap.py [--seeds 3]

Writes ``benchmarks/results/reference_gap_cpu.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
from pathlib import Path

import torch

import sparsekit as sk
from sparsekit import recipes
from sparsekit.bench import cpu_name

REFERENCE = {"mlp": "69.2 +- 0.4", "cnn": "92.2 +- 0.7", "mlp 40-100-100-10": "65.9 +- 0.7"}  # issue 13


def schedule(fit: recipes.Fit, recipe: recipes.Recipe) -> list[tuple[int, float]]:
    """(epochs, learning rate) phases that reproduce a recipe run's restored weights without validation.

    The run went back to its best epoch before each drop, so a phase counts only the epochs the run kept
    (Adam's moments differ slightly: the run carried them over from the plateau's last epoch).
    """
    phases, kept, lr = [], 0, recipe.lr
    history = fit.history.val_acc
    for drop in fit.drop_epochs:
        if fit.best_epoch <= drop:
            break
        best_before = history.index(max(history[:drop])) + 1  # the epoch the run went back to
        phases.append((max(0, best_before - kept), lr))
        kept, lr = drop, lr * recipe.lr_drop_factor
    phases.append((fit.best_epoch - kept, lr))
    return phases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "reference_gap_cpu.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    splits = sk.data.mnist1d(val_size=500)
    x_all = torch.cat([splits.x_train, splits.x_val])
    y_all = torch.cat([splits.y_train, splits.y_val])
    acc: dict[str, list[float]] = {}

    def test(model: torch.nn.Module) -> float:
        return 100 * sk.train.accuracy(model, splits.x_test, splits.y_test)

    for seed in range(args.seeds):
        for name in ("mlp", "cnn"):
            recipe = recipes.RECIPES[name]
            model, fit = recipes.train_baseline(name, splits, seed, progress=False)
            acc.setdefault(f"{name} | recipe (val_acc, 3,500 examples)", []).append(test(model))
            torch.manual_seed(seed)
            model = sk.models.build(name)
            recipes.fit(model, splits, recipe.but(monitor="val_loss"), seed=seed, progress=False)
            acc.setdefault(f"{name} | monitor=val_loss", []).append(test(model))
            torch.manual_seed(seed)
            model = sk.models.build(name)
            recipes.fit(model, splits, recipe.but(lr_drops=0), seed=seed, progress=False)
            acc.setdefault(f"{name} | no lr drop", []).append(test(model))
            if name == "mlp":
                torch.manual_seed(seed)
                model = sk.models.build(name)
                all_loader = sk.data.loader(x_all, y_all, recipe.batch_size, shuffle=True, seed=seed)
                optimizer = sk.train.make_optimizer(model, recipe.optimizer, recipe.lr, recipe.weight_decay)
                for epochs, lr in schedule(fit, recipe):
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    if epochs:
                        sk.train.train(model, all_loader, epochs=epochs, optimizer=optimizer, progress=False)
                acc.setdefault(f"{name} | all 4000, the recipe run's schedule", []).append(test(model))
                torch.manual_seed(seed)
                model = sk.models.MLP(hidden=(100, 100))
                recipes.fit(model, splits, recipe, seed=seed, progress=False)
                acc.setdefault("mlp 40-100-100-10 | recipe (val_acc, 3,500 examples)", []).append(test(model))
        print(seed, {k: round(v[-1], 1) for k, v in acc.items()}, flush=True)
    lines = [f"# Chapter 0's baselines against issue 13's reference\n\nMNIST-1D (3,500 train / 500 validation / "
             f"1,000 test), `sk.recipes` (Adam 1e-2, batch 128, patience 20, one plateau drop x0.1), one thread; "
             f"{cpu_name()}, "
             f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC. Test accuracy %, mean +- sample std over "
             f"seeds {list(range(args.seeds))}.\n",
             "| model | variant | test acc % | per seed | reference % |", "|---|---|---:|---|---:|"]
    for key, values in acc.items():
        model, variant = key.split(" | ")
        lines.append(f"| {model} | {variant} | {statistics.mean(values):.1f} +- {statistics.stdev(values):.1f} "
                     f"| {', '.join(f'{v:.1f}' for v in values)} | {REFERENCE[model]} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
