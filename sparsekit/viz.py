"""Plots of every step's results (score -> select -> mask -> train -> finalize): masks,
per-layer sparsity, accuracy-vs-sparsity curves, weight histograms. matplotlib only;
``import sparsekit`` imports neither this module nor matplotlib until ``sk.viz`` is used.

Each function draws into an ``Axes`` (a new figure when ``ax`` is None) and returns it,
so a chapter can compose small multiples and call ``plt.show()`` once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from torch import Tensor


def _axes(ax: Axes | None, figsize: tuple[float, float] = (5, 3.5)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, standard deviation)`` over seeds (population std; 0 for one value)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("mean_spread needs at least one value")
    return float(arr.mean()), float(arr.std())


def plot_mask(mask: Tensor, ax: Axes | None = None, title: str | None = None) -> Axes:
    """A 2-D mask (or weight) as an image: kept entries dark, pruned entries white."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a Tensor, got {type(mask).__name__}")
    ax = _axes(ax, (4, 4))
    m = mask.detach().cpu()
    m = m.reshape(m.shape[0], -1) if m.dim() > 2 else m
    ax.imshow((m != 0).float().numpy(), cmap="Greys", interpolation="nearest", aspect="auto", vmin=0, vmax=1)
    ax.set_xlabel("input index")
    ax.set_ylabel("output index")
    if title:
        ax.set_title(title)
    return ax


def plot_layer_sparsity(masks_by_label: Mapping[str, Mapping[str, Tensor]], ax: Axes | None = None) -> Axes:
    """Grouped bars: sparsity of each layer (x) for each labelled set of masks."""
    ax = _axes(ax, (6, 3.5))
    labels = list(masks_by_label)
    if not labels:
        raise ValueError("masks_by_label is empty")
    layers = list(masks_by_label[labels[0]])
    width = 0.8 / len(labels)
    x = np.arange(len(layers))
    for i, label in enumerate(labels):
        masks = masks_by_label[label]
        if set(masks) != set(layers):
            raise ValueError(f"masks_by_label[{label!r}] must have the layers of masks_by_label[{labels[0]!r}] "
                             f"({layers}), got {list(masks)}")
        vals = [1.0 - float(masks[n].float().mean()) for n in layers]
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=label)
    ax.set_xticks(x, layers, rotation=30, ha="right")
    ax.set_ylabel("sparsity (fraction pruned)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize="small")
    return ax


def plot_curves(x: Sequence[float], curves: Mapping[str, Sequence[Sequence[float]]], ax: Axes | None = None,
                xlabel: str = "sparsity", ylabel: str = "test accuracy", logx: bool = False) -> Axes:
    """Mean +- std over seeds for each method. ``curves[label][i]`` holds the seeds at ``x[i]``."""
    for label, per_x in curves.items():
        if len(per_x) != len(x):
            raise ValueError(f"curves[{label!r}] must hold one list of seeds per x ({len(x)}), got {len(per_x)}")
    ax = _axes(ax)
    for label, per_x in curves.items():
        stats = np.array([mean_spread(v) for v in per_x])
        ax.plot(x, stats[:, 0], marker="o", ms=3, label=label)
        ax.fill_between(x, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1], alpha=0.2)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def plot_weight_histogram(weights: Mapping[str, Tensor], threshold: float | None = None,
                          ax: Axes | None = None, bins: int = 100) -> Axes:
    """Histogram of all weights (log count) with an optional magnitude threshold ``+-t``."""
    ax = _axes(ax)
    for name, w in weights.items():
        ax.hist(w.detach().flatten().cpu().numpy(), bins=bins, histtype="step", label=name)
    if threshold is not None:
        for t in (-threshold, threshold):
            ax.axvline(t, color="k", ls="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    ax.legend(fontsize="small")
    return ax
