"""CPU benchmark (issue 15): the default structured-pruning call on torchvision's classification families.

For each family: random initialization (seed 0), BatchNorm statistics and affine
parameters randomized, all-zero parameters (ViT's head and class token) drawn small, so
that no channel is trivially constant. Then, as a new user would,
``sk.structured.shrink_channels(model, 0.5, x)`` with ``x`` one 224x224 image, and:

* **default call**: ran, and how many groups it skipped (listed with the reason);
* **exact**: relative L2 error of the shrunk model against the zero-channel model
  (``cut_removed_inputs``: the original with every weight that reads a removed channel
  zeroed), on two fresh images;
* **MACs / params after**: of the shrunk model, relative to the dense one, at 224x224
  (``sk.structured.cost``, ``FlopCounterMode``);
* **time**: one pruning call (the load of a shared machine inflates it);
* the same for Torch-Pruning (``MetaPruner``, L1 magnitude, ``pruning_ratio=0.5``, the
  classifier ignored), when installed.

Then the pruning-call time on resnet50, sparsekit vs Torch-Pruning, timed alternately
(``--rounds`` rounds, median and per-round ratio), and where sparsekit's time goes.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_structured_models.py [--models resnet18 ...] [--rounds 5]

torchvision 0.28.0 is a CUDA build; on CPU torch it is imported through
``benchmarks/_torchvision.py`` (see there). Writes ``benchmarks/results/structured_models_cpu.md``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import statistics
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparsekit as sk  # noqa: E402
from benchmarks._torchvision import import_torchvision, randomized_model  # noqa: E402
from sparsekit import graph as dep  # noqa: E402
from sparsekit.masking import copy_model  # noqa: E402
from sparsekit.structured import shrink as sh  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "structured_models_cpu.md"
FAMILIES = ["resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
            "regnet_x_400mf", "densenet121", "squeezenet1_0", "convnext_tiny", "vit_b_16", "shufflenet_v2_x0_5"]
SPARSITY = 0.5


def build(tv, name: str) -> nn.Module:
    """The family's model, randomly initialized, with non-trivial BatchNorm and no all-zero parameter."""
    g = torch.Generator().manual_seed(0)
    model = randomized_model(tv, name, generator=g)  # the BatchNorm draws, then the zero parameters'
    with torch.no_grad():
        for p in model.parameters():
            if bool((p == 0).all()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def classifier(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]


def tp_prune(tp, model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Torch-Pruning's default channel pruning of a copy: L1 magnitude, 50 % of every layer, classifier kept."""
    m = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(m, x, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=SPARSITY, ignored_layers=[classifier(m)])
    pruner.step()
    return m


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def measure(tv, tp, name: str) -> dict[str, object]:
    model = build(tv, name)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    check = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    dense = sk.structured.cost(model, x)
    row: dict[str, object] = {"model": name}
    t = time.perf_counter()
    try:
        small = sk.structured.shrink_channels(model, SPARSITY, x)
    except Exception as err:  # noqa: BLE001 - the table reports it
        row.update(ok=False, why=f"{type(err).__name__}: {str(err)[:120]}")
    else:
        row["time"] = time.perf_counter() - t
        ref = sk.structured.cut_removed_inputs(model, small.channel_plan, x)
        with torch.no_grad():
            row["err"] = rel_err(small(check), ref(check))
        c = sk.structured.cost(small, x)
        groups = sk.structured.channel_groups(model, x)
        row.update(ok=True, skipped=small.channel_plan.skipped, groups=len(groups),
                   pruned=len(groups) - 1 - len(small.channel_plan.skipped),
                   macs=c.flops / dense.flops, params=c.params / dense.params)
    if any(isinstance(m, nn.LayerNorm) for m in model.modules()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                loose = sk.structured.shrink_channels(model, SPARSITY, x, allow_inexact=True)
                row["inexact"] = (sk.structured.cost(loose, x).flops / dense.flops, len(loose.channel_plan.skipped))
            except Exception as err:  # noqa: BLE001
                row["inexact"] = f"{type(err).__name__}"
    if tp is not None:
        t = time.perf_counter()
        try:
            pruned = tp_prune(tp, model, x)
            tp_time = time.perf_counter() - t
            with torch.no_grad():
                pruned(check)
            row.update(tp_macs=sk.structured.cost(pruned, x).flops / dense.flops, tp_time=tp_time)
        except Exception as err:  # noqa: BLE001
            row["tp_why"] = f"{type(err).__name__}"
    return row


def phases(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Seconds of each step of one sparsekit pruning call."""
    out: dict[str, float] = {}

    def step(label: str, fn):
        t = time.perf_counter()
        value = fn()
        out[label] = time.perf_counter() - t
        return value

    new = step("copy the model", lambda: copy_model(model))
    graph = step("trace (torch.fx) + shapes (a real forward pass here, meta device for large models)",
                 lambda: dep.trace(new, x))
    deps = step("dependency analysis", lambda: dep.dependencies(new, x, graph))
    removed, _ = step("scores + selection", lambda: sh._plan(new, deps, SPARSITY, x, "l1", None, "layer", None, False))
    consts = step("constant channels", lambda: sh._constants(new, deps))
    step("fold + shrink tensors",
         lambda: (sh._fold_constants(new, deps, removed, consts), sh._apply(new, deps, removed)))
    step("check the shrunk model runs", lambda: sh._check_runs(new, model, x))
    return out


def speed(tv, tp, rounds: int) -> dict[str, object]:
    model = build(tv, "resnet50")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    fns = {"sparsekit": lambda: sk.structured.shrink_channels(model, SPARSITY, x)}
    if tp is not None:
        fns["torch-pruning"] = lambda: tp_prune(tp, model, x)
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    out: dict[str, object] = {"times": times}
    if tp is not None:
        out["ratio"] = statistics.median(a / b for a, b in zip(times["sparsekit"], times["torch-pruning"], strict=True))
    runs = [phases(model, x) for _ in range(3)]
    out["phases"] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return out


def pct(v: object) -> str:
    return f"{100 * float(v):.0f} %" if isinstance(v, float) else "—"


def render(rows: list[dict[str, object]], sp: dict[str, object] | None, tv, tp, load: tuple[float, ...]) -> str:
    lines = ["# Structured pruning on torchvision's classification families (CPU)", "",
             f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
             f"{os.cpu_count()} CPUs (load average {load[0]:.1f} at start: a shared machine, times are inflated), "
             f"torch {torch.__version__}, torchvision {tv.__version__}"
             + (f", Torch-Pruning {metadata.version('torch-pruning')}" if tp is not None else "") + ", one thread.", "",
             "Default call `sk.structured.shrink_channels(model, 0.5, x)`, x one 224x224 image, random weights "
             "with randomized BatchNorm. *exact*: relative L2 error against the zero-channel model "
             "(`cut_removed_inputs`); MACs and params of the shrunk model relative to the dense one at 224x224. "
             "Torch-Pruning: `MetaPruner`, L1 magnitude, `pruning_ratio=0.5`, classifier ignored.", "",
             "| model | default call | groups pruned | exact (rel. error) | MACs after | params after | time | "
             "Torch-Pruning MACs after | Torch-Pruning time |",
             "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for r in rows:
        if not r["ok"]:
            lines.append(f"| {r['model']} | raises: {r['why']} | | | | | | | |")
            continue
        skipped = r["skipped"]
        call = "runs" + (f", skips {len(skipped)}" if skipped else "")
        tp_macs = pct(r.get("tp_macs")) if "tp_macs" in r else f"fails ({r.get('tp_why', 'not run')})"
        tp_time = f"{r['tp_time']:.2f} s" if "tp_time" in r else "—"
        lines.append(f"| {r['model']} | {call} | {r['pruned']} of {r['groups'] - 1} | {r['err']:.1e} | "
                     f"{pct(r['macs'])} | {pct(r['params'])} | {r['time']:.2f} s | {tp_macs} | {tp_time} |")
        for label, why in list(skipped.items())[:3]:
            notes.append(f"* {r['model']}: {label[:70]}{'…' if len(label) > 70 else ''}: {why}")
        if len(skipped) > 3:
            notes.append(f"* {r['model']}: … and {len(skipped) - 3} more groups with the same kind of reason")
    lines += ["", "Groups counted without the classifier's (its channels are the model output).", ""]
    loose = [(r["model"], r["inexact"]) for r in rows if "inexact" in r]
    if loose:
        lines += ["With `allow_inexact=True` (LayerNorm over the channels pruned too: a different function, "
                  "to be fine-tuned): " + "; ".join(
                      f"{m}: MACs after {pct(v[0])}, {v[1]} groups still skipped" if isinstance(v, tuple)
                      else f"{m}: {v}" for m, v in loose) + ".", ""]
    if notes:
        lines += ["Skipped groups (the default call's report, `small.channel_plan.skipped`):", ""] + notes + [""]
    if sp is not None:
        lines += ["## Pruning-call time on resnet50", ""]
        for k, ts in sp["times"].items():
            lines.append(f"* {k}: median {statistics.median(ts):.2f} s over {len(ts)} alternating rounds "
                         f"({', '.join(f'{t:.2f}' for t in ts)})")
        if "ratio" in sp:
            lines.append(f"* sparsekit / Torch-Pruning: median per-round ratio {sp['ratio']:.2f}")
        lines += ["", "Both build a new pruned model from the original (Torch-Pruning's time includes the "
                  "`deepcopy`, as `shrink_channels` copies too).", "", "Where sparsekit's time goes (median of 3):", "",
                  "| step | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in sp["phases"].items()]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=FAMILIES)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tv = import_torchvision()
    if tv is None:
        raise SystemExit("torchvision cannot be imported")
    try:
        import torch_pruning as tp
    except ImportError:
        tp = None
    load = os.getloadavg()
    rows = []
    for name in args.models:
        rows.append(measure(tv, tp, name))
        print(rows[-1] | {"skipped": len(rows[-1].get("skipped", {}))}, flush=True)
    sp = None if args.no_speed else speed(tv, tp, args.rounds)
    text = render(rows, sp, tv, tp, load)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
