"""Seeded training and evaluation loops with ``tqdm.auto`` progress.

The *train* step of the pipeline. Masks live in the model (parametrizations), so this
loop needs nothing special to keep pruned weights at zero; ``step_hook`` is where
gradual pruning, movement scores or rewinding checkpoints plug in.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import _validate

LossFn = Callable[[Tensor, Tensor], Tensor]
StepHook = Callable[[int, nn.Module], None]


@dataclass
class History:
    """What happened during training, one entry per evaluation."""

    steps: list[int] = field(default_factory=list)        # iteration of each evaluation
    train_loss: list[float] = field(default_factory=list)  # mean loss since the previous one
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)

    @property
    def final_acc(self) -> float:
        """Accuracy at the last evaluation."""
        if not self.val_acc:
            raise ValueError("history is empty: no evaluation was recorded")
        return self.val_acc[-1]

    @property
    def early_stop_step(self) -> int:
        """Iteration of minimum validation loss (Frankle & Carbin 2019's early-stopping criterion)."""
        if not self.val_loss:
            raise ValueError("history is empty: no evaluation was recorded")
        best = min(range(len(self.val_loss)), key=self.val_loss.__getitem__)
        return self.steps[best]


def _summed_loss(loss_fn: LossFn) -> Callable[[Tensor, Tensor], float]:
    """``(logits, y) -> summed loss over the batch`` for any two-argument ``loss_fn``.

    A ``LossFn`` is called with two arguments and returns the batch *mean* (as
    ``F.cross_entropy`` does by default), so the sum is ``mean * batch size``. A loss
    that also takes a ``reduction`` keyword (``F.cross_entropy``, ``F.nll_loss``, a
    ``functools.partial`` of them, a wrapper with ``reduction`` or ``**kwargs``) is asked
    for ``reduction="sum"`` directly: the exact sum, and a wrapper may leave a training
    penalty out of the evaluation sum (as :func:`sparsekit.movement.apply_gradual_pruning` does).
    """
    try:
        target = loss_fn.forward if isinstance(loss_fn, nn.Module) else loss_fn  # Module.__call__ takes **kwargs
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        params = []
    if any(p.name == "reduction" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return lambda logits, y: float(loss_fn(logits, y, reduction="sum"))  # type: ignore[call-arg]
    return lambda logits, y: float(loss_fn(logits, y)) * len(y)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run the block with every submodule in eval mode, then give each its own mode back.

    ``model.train(was_training)`` would switch a BatchNorm the user froze (``bn.eval()``
    inside a training model) back to training; this restores module by module, also when
    the block raises.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, loss_fn: LossFn = F.cross_entropy) -> tuple[float, float]:
    """``(mean loss, accuracy)`` of ``model`` over ``loader``, in eval mode (mode restored).

    ``loss_fn(logits, targets)`` returns the batch mean (any two-argument loss, e.g.
    ``nn.CrossEntropyLoss()``); batches are weighted by their size.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (logits, targets) -> mean loss, got {type(loss_fn).__name__}")
    summed = _summed_loss(loss_fn)
    device = next(model.parameters()).device
    total_loss, correct, count = 0.0, 0, 0
    with eval_mode(model):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            total_loss += summed(logits, y)
            correct += int((logits.argmax(dim=-1) == y).sum())
            count += len(y)
    if count == 0:
        raise ValueError("loader is empty")
    return total_loss / count, correct / count


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Accuracy on in-memory tensors, in eval mode (mode restored)."""
    with eval_mode(model), torch.no_grad():
        return float((model(x).argmax(dim=-1) == y).float().mean())


def make_optimizer(model: nn.Module, name: str = "adam", lr: float = 1e-3, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """``"adam"``, ``"adamw"`` or ``"sgd"`` (with momentum) over all parameters."""
    params = model.parameters()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {name!r}")


def train(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    loss_fn: LossFn = F.cross_entropy,
    val_loader: DataLoader | None = None,
    eval_every: int | None = None,
    step_hook: StepHook | None = None,
    progress: bool = True,
    desc: str = "train",
) -> History:
    """Train for ``epochs`` passes (or exactly ``steps`` iterations); return a :class:`History`.

    Args:
        optimizer: defaults to Adam(lr) over ``model.parameters()``.
        val_loader: evaluated every ``eval_every`` iterations (default: once per epoch)
            and after the last one.
        step_hook: called as ``step_hook(step, model)`` after every optimizer step
            (``step`` counts from 1), e.g. to update masks on a schedule.
        progress: show a ``tqdm.auto`` bar over iterations.
    """
    if (epochs is None) == (steps is None):
        raise ValueError("give exactly one of epochs or steps")
    if steps is not None:
        steps = _validate.positive_int(steps, "steps")
    else:
        epochs = _validate.positive_int(epochs, "epochs")
    per_epoch = len(train_loader)
    if per_epoch == 0:
        raise ValueError("train_loader is empty")
    total = steps if steps is not None else epochs * per_epoch  # type: ignore[operator]
    eval_every = per_epoch if eval_every is None else _validate.positive_int(eval_every, "eval_every")
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    device = next(model.parameters()).device
    history = History()
    model.train()
    step, running, seen = 0, 0.0, 0
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    while step < total:
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            running += loss.item()
            seen += 1
            if step_hook is not None:
                step_hook(step, model)
            bar.update(1)
            if step % eval_every == 0 or step == total:
                history.steps.append(step)
                history.train_loss.append(running / seen)
                running, seen = 0.0, 0
                if val_loader is not None:
                    vl, va = evaluate(model, val_loader, loss_fn)
                    history.val_loss.append(vl)
                    history.val_acc.append(va)
                    bar.set_postfix(val_acc=f"{va:.3f}")
                model.train()
            if step == total:
                break
    bar.close()
    return history
