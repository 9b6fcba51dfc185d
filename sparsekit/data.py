"""Data for the *train* step (score -> select -> mask -> train -> finalize), and for the
scores that need a batch: offline datasets, MNIST-1D (generated here, never downloaded)
and sklearn's digits, and seeded in-memory loaders.

MNIST-1D (Greydanus & Kobak 2024) draws each example from one of ten 1-D digit
templates, then pads, shears, scales, translates and adds correlated and i.i.d. noise:
40 samples per sequence, 4000 train / 1000 test examples with the default arguments. It
is small enough to train on a laptop CPU in seconds yet separates MLPs, CNNs and
Transformers the way MNIST no longer does. We always *regenerate* it from the
``mnist1d`` package's generator (``make_dataset``); nothing is fetched.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, TensorDataset

from . import _validate

NUM_CLASSES = 10
SEQ_LEN = 40


@dataclass(frozen=True)
class Splits:
    """Tensors of one dataset: ``x_*`` float32, ``y_*`` int64. ``x_val`` may be empty."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    templates: Tensor | None = None  # MNIST-1D only: the ten clean templates [10, 12]

    @property
    def num_classes(self) -> int:
        return int(self.y_train.max()) + 1

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


@functools.lru_cache(maxsize=8)
def _mnist1d_arrays(seed: int, overrides: tuple[tuple[str, object], ...]) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    for key, value in overrides:
        if not hasattr(args, key):
            raise ValueError(f"unknown MNIST-1D argument {key!r}")
        setattr(args, key, value)
    return make_dataset(args)  # regenerate, never download


def _split_validation(x: Tensor, y: Tensor, val_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    val_size = _validate.integer(val_size, "val_size", low=0, high=len(y) - 1)
    cut = len(y) - val_size
    return x[:cut], y[:cut], x[cut:], y[cut:]


def mnist1d(seed: int = 42, val_size: int = 0, **overrides: object) -> Splits:
    """MNIST-1D, generated in memory (about 6 s the first time, cached afterwards).

    Args:
        seed: the generator's seed (42 is the published dataset's).
        val_size: examples moved from the *end* of the training set to a validation set.
        **overrides: arguments of ``mnist1d.data.get_dataset_args`` (e.g.
            ``corr_noise_scale=0.5``, ``num_samples=10000``) to build related tasks.
    """
    data = _mnist1d_arrays(_validate.seed(seed, low=0), tuple(sorted(overrides.items())))
    x = torch.as_tensor(data["x"], dtype=torch.float32)
    y = torch.as_tensor(data["y"], dtype=torch.int64)
    x_tr, y_tr, x_val, y_val = _split_validation(x, y, val_size)
    return Splits(
        x_tr, y_tr, x_val, y_val,
        torch.as_tensor(data["x_test"], dtype=torch.float32),
        torch.as_tensor(data["y_test"], dtype=torch.int64),
        templates=torch.as_tensor(data["templates"]["x"], dtype=torch.float32),
    )


def digits(test_size: int = 297, val_size: int = 0, seed: int = 0) -> Splits:
    """scikit-learn's 8x8 digits (1797 images, shipped with sklearn), flattened to 64 features.

    Pixel values are scaled to [0, 1]; the split is a seeded permutation.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    test_size = _validate.integer(test_size, "test_size", low=1, high=len(y) - 1)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(_validate.seed(seed)))
    x, y = x[perm], y[perm]
    x_tr, y_tr, x_val, y_val = _split_validation(x[:-test_size], y[:-test_size], val_size)
    return Splits(x_tr, y_tr, x_val, y_val, x[-test_size:], y[-test_size:])


def loader(x: Tensor, y: Tensor, batch_size: int = 128, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A ``DataLoader`` that yields whole batches by fancy indexing (fast for in-memory data).

    With ``shuffle=True`` the order comes from a private generator seeded with ``seed``,
    so two loaders with the same seed yield the same batches in the same order. The
    generator advances with every epoch: for two identical runs, build two loaders.
    """
    batch_size = _validate.positive_int(batch_size, "batch_size")
    seed = _validate.seed(seed)
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    dataset = TensorDataset(x, y)
    base = (
        RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        if shuffle
        else SequentialSampler(dataset)
    )
    # batch_size=None: the sampler yields index lists and TensorDataset indexes with them.
    return DataLoader(dataset, batch_size=None, sampler=BatchSampler(base, batch_size, drop_last=False))


def loaders(splits: Splits, batch_size: int = 128, seed: int = 0) -> tuple[DataLoader, DataLoader, DataLoader | None]:
    """``(train, test, val)`` loaders: train shuffled with ``seed``; ``val`` is None if empty."""
    if not isinstance(splits, Splits):
        raise TypeError(f"splits must be a sparsekit.data.Splits (from mnist1d() or digits()), "
                        f"got {type(splits).__name__}")
    train = loader(splits.x_train, splits.y_train, batch_size, shuffle=True, seed=seed)
    test = loader(splits.x_test, splits.y_test, 1024)
    val = loader(splits.x_val, splits.y_val, 1024) if len(splits.y_val) else None
    return train, test, val


def batch_input(batch: object, index: int | None = None) -> Tensor:
    """The model input of one batch: the batch itself if it is a tensor, else the first element of
    an ``(input, target, ...)`` tuple or list (what a ``DataLoader`` yields). ``index`` (the
    batch's position) only makes the error message point at the bad batch."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    where = "a batch" if index is None else f"batch {index}"
    raise TypeError(f"batches must yield tensors or (input, target) pairs with a tensor input; "
                    f"{where} is {type(batch).__name__}")
