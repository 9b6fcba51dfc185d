"""One training recipe per model of the book, trained until validation loss stops improving.

Every chapter compares a pruned network against *its* dense baseline, so the baseline must
be the same everywhere and converged: a pruned model that "matches dense" means little when
dense was stopped early. A :class:`Recipe` fixes the optimizer, learning rate, batch size
and the early-stopping rule; :func:`fit` trains any model (dense or masked: masks live in
the model, so they hold during training) until the validation accuracy (or loss) has not
improved for ``patience`` epochs, then restores the weights of the best epoch: early
stopping with patience, as in Prechelt's "Early stopping -- but when?" (1998), evaluated
once per epoch. Before it stops, a recipe may drop the learning rate on the plateau
(``lr_drops`` times, by ``lr_drop_factor``, from the best epoch's weights), as
``torch.optim.lr_scheduler.ReduceLROnPlateau`` does; the book's MLP gains about 2 points
from one drop (``benchmarks/results/recipes_cpu.md``).

``fit`` needs a validation split (``sk.data.mnist1d(val_size=500)``): the test set stays
for reporting. ``train_baseline(name, splits, seed)`` builds the model from the seed and
fits it with ``RECIPES[name]``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from . import _validate, models
from .data import Splits, loader
from .train import History, evaluate, make_optimizer
from .train import train as train_steps

__all__ = ["Recipe", "RECIPES", "Fit", "fit", "train_baseline"]


@dataclass(frozen=True)
class Recipe:
    """How to train one model: optimizer, learning rate, batch size and when to stop.

    Training runs epoch by epoch, evaluating on the validation split after each; it stops once
    ``patience`` epochs in a row have not improved on the best value of ``monitor`` (by more
    than ``min_delta``), or after ``max_epochs``, and the best epoch's weights are restored.
    While ``lr_drops`` remain, a plateau does not stop training: the best epoch's weights are
    restored, the learning rate is multiplied by ``lr_drop_factor`` and patience starts again
    (a step schedule triggered by the plateau, like ``ReduceLROnPlateau``; Adam's moments are kept).

    ``monitor="val_acc"`` is the book's default: on MNIST-1D the validation *loss* bottoms out
    within 5-15 epochs, while accuracy still climbs for 20-40 more (the network grows more
    confident on the examples it gets wrong); stopping at the loss minimum leaves the MLP at
    63.9 +- 0.4 % test accuracy where stopping on accuracy gives 67.0 +- 1.1 % (3 seeds, one
    plateau drop, ``benchmarks/results/reference_gap_cpu.md``).
    """

    model: str
    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    max_epochs: int = 200
    patience: int = 20
    min_delta: float = 0.0
    monitor: str = "val_acc"
    lr_drops: int = 0
    lr_drop_factor: float = 0.1

    def __post_init__(self) -> None:
        if self.model not in models.MODELS:
            raise ValueError(f"model must be one of {sorted(models.MODELS)}, got {self.model!r}")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {self.optimizer!r}")
        _validate.real(self.lr, "lr", low=0.0, low_open=True)
        _validate.positive_int(self.batch_size, "batch_size")
        _validate.real(self.weight_decay, "weight_decay", low=0.0)
        _validate.positive_int(self.max_epochs, "max_epochs")
        _validate.positive_int(self.patience, "patience")
        _validate.real(self.min_delta, "min_delta", low=0.0)
        _validate.integer(self.lr_drops, "lr_drops", low=0)
        _validate.real(self.lr_drop_factor, "lr_drop_factor", low=0.0, high=1.0, low_open=True, high_open=True)
        if self.monitor not in ("val_acc", "val_loss"):
            raise ValueError(f"monitor must be 'val_acc' or 'val_loss', got {self.monitor!r}")

    @property
    def final_lr(self) -> float:
        """The learning rate once every plateau drop has happened (where a converged run of this recipe ended)."""
        return self.lr * self.lr_drop_factor ** self.lr_drops

    def but(self, **changes: object) -> Recipe:
        """A copy with some fields changed, e.g. ``RECIPES["mlp"].but(lr=1e-4)`` to fine-tune."""
        return replace(self, **changes)  # type: ignore[arg-type]


# Calibrated on MNIST-1D (4000 training examples less 500 for validation; see
# benchmarks/results/recipes_cpu.md and reference_gap_cpu.md for epochs and accuracies per seed).
# The MLP's and CNN's learning rates were chosen against lr / 3 and lr * 3; chapter 2's residual CNN
# and Transformer keep the 3e-3 that chapter used (checked with and without the drop, not neighbours).
RECIPES: dict[str, Recipe] = {
    "mlp": Recipe("mlp", lr=1e-2, lr_drops=1),
    "cnn": Recipe("cnn", lr=1e-2, lr_drops=1),
    "rescnn": Recipe("rescnn", lr=3e-3, lr_drops=1),
    "transformer": Recipe("transformer", lr=3e-3, lr_drops=1),
}
"""The book's recipe per model name of :data:`sparsekit.models.MODELS` (``"mlp"``, ``"cnn"``, ...)."""


@dataclass
class Fit:
    """What :func:`fit` did: the per-epoch history and where it stopped."""

    history: History      # val_loss / val_acc on the *validation* split, one entry per epoch
    best_epoch: int       # 1-based epoch whose weights the model now holds (best ``monitor``)
    epochs_run: int
    drop_epochs: list[int] = field(default_factory=list)  # epochs after which the learning rate dropped

    @property
    def best_step(self) -> int:
        """Optimizer steps up to the restored epoch."""
        return self.history.steps[self.best_epoch - 1]


def fit(model: nn.Module, splits: Splits, recipe: Recipe, *, seed: int = 0, progress: bool = True,
        desc: str = "fit") -> Fit:
    """Train ``model`` on ``splits`` with ``recipe`` until ``recipe.monitor`` stops improving.

    The training order comes from ``seed`` (one shuffling generator for the whole run).
    The model ends holding the weights (and BatchNorm statistics) of the best epoch.
    Raises if ``splits`` has no validation examples.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    if len(splits.y_val) == 0:
        raise ValueError("splits has no validation set: early stopping needs one "
                         "(e.g. sk.data.mnist1d(val_size=500))")
    seed = _validate.seed(seed)
    train_loader = loader(splits.x_train, splits.y_train, recipe.batch_size, shuffle=True, seed=seed)
    val_loader = loader(splits.x_val, splits.y_val, 1000)
    optimizer = make_optimizer(model, recipe.optimizer, recipe.lr, recipe.weight_decay)
    history = History()
    sign = -1.0 if recipe.monitor == "val_acc" else 1.0  # minimise sign * monitored value
    best, best_epoch, best_state = float("inf"), 0, copy.deepcopy(model.state_dict())
    drop_epochs: list[int] = []
    patience_from = 0  # patience counts from the later of the best epoch and the last drop
    bar = tqdm(range(1, recipe.max_epochs + 1), desc=desc, disable=not progress, leave=False)
    for epoch in bar:
        epoch_history = train_steps(model, train_loader, epochs=1, optimizer=optimizer, progress=False)
        val_loss, val_acc = evaluate(model, val_loader)
        history.steps.append((history.steps[-1] if history.steps else 0) + epoch_history.steps[-1])
        history.train_loss.append(epoch_history.train_loss[-1])
        history.val_loss.append(val_loss)
        history.val_acc.append(val_acc)
        value = sign * (val_acc if recipe.monitor == "val_acc" else val_loss)
        if value < best - recipe.min_delta:
            best, best_epoch, best_state = value, epoch, copy.deepcopy(model.state_dict())
        bar.set_postfix(val_loss=f"{val_loss:.3f}", val_acc=f"{val_acc:.3f}", best=best_epoch,
                        lr=f"{optimizer.param_groups[0]['lr']:.0e}")
        if epoch - max(best_epoch, patience_from) >= recipe.patience:
            if len(drop_epochs) == recipe.lr_drops:
                break
            model.load_state_dict(best_state)  # continue from the best epoch at a lower rate
            for group in optimizer.param_groups:
                group["lr"] *= recipe.lr_drop_factor
            drop_epochs.append(epoch)
            patience_from = epoch
    bar.close()
    model.load_state_dict(best_state)
    return Fit(history, best_epoch, epoch, drop_epochs)


def train_baseline(name: str, splits: Splits, seed: int, *, progress: bool = True,
                   **model_kwargs: object) -> tuple[nn.Module, Fit]:
    """``RECIPES[name]``'s model built from ``seed`` (``torch.manual_seed``) and fitted."""
    if name not in RECIPES:
        raise ValueError(f"no recipe for {name!r}; recipes: {sorted(RECIPES)}")
    recipe = RECIPES[name]
    torch.manual_seed(_validate.seed(seed))
    model = models.build(recipe.model, **model_kwargs)
    return model, fit(model, splits, recipe, seed=seed, progress=progress, desc=f"{name} seed {seed}")
