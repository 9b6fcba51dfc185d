"""Argument checks shared by every sparsekit module (one place, one wording).

Each check returns the value converted to a plain Python ``float`` / ``int`` and raises a
:class:`ArgumentTypeError` for a value of the wrong type, ``ValueError`` for a value out
of range; every message names the argument, the value and what is allowed.

Rules, the same everywhere:

* ``bool`` is never a number here (``True`` is an ``int`` in Python, but ``min_keep=True``
  or ``rounds=True`` is a mistake);
* NumPy scalars are numbers (``np.float32(0.5)`` is accepted where ``0.5`` is; NumPy
  integers where ``int`` is), anything else that is not a real number is refused;
* NaN and infinities are never in range.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

__all__ = ["ArgumentTypeError", "is_int", "real", "fraction", "integer", "positive_int", "seed"]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type. A ``TypeError``; also a ``ValueError`` because some
    checks raised ``ValueError`` for a wrong type before they were gathered here."""


def _is_bool(value: object) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy.bool_


def is_int(value: object) -> bool:
    """True for an ``int`` (or NumPy integer) that is not a ``bool``: for checks over many values."""
    return isinstance(value, Integral) and not _is_bool(value)


def real(value: object, name: str, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False, what: str | None = None) -> float:
    """``value`` as a ``float``, checked against ``[low, high]`` (``low_open`` / ``high_open``
    make that end open). NaN and infinities are refused. ``what`` replaces the generated
    description of what is allowed (``"a finite number >= 1"``)."""
    if what is None:
        if low is not None and high is not None:
            what = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            what = f"a finite number {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            what = f"a finite number {'<' if high_open else '<='} {high:g}"
        else:
            what = "a finite number"
    if _is_bool(value) or not isinstance(value, Real):
        kind = f"a number {what}" if what.startswith("in ") else what
        raise ArgumentTypeError(f"{name} must be {kind}, got {type(value).__name__} {value!r}")
    v = float(value)
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return v


def fraction(value: object, name: str, *, allow_one: bool = False, allow_zero: bool = True) -> float:
    """A fraction: ``[0, 1)`` by default; ``allow_one`` closes the top, ``allow_zero=False``
    opens the bottom."""
    return real(value, name, low=0.0, high=1.0, low_open=not allow_zero, high_open=not allow_one)


def integer(value: object, name: str, *, low: int | None = None, high: int | None = None,
            what: str | None = None) -> int:
    """``value`` as an ``int`` (not a ``bool``, not a float), checked against ``[low, high]``."""
    if what is None:
        if low is not None and high is not None:
            what = f"an int in [{low}, {high}]"
        elif low == 1:
            what = "a positive int"
        elif low == 0:
            what = "a non-negative int"
        elif low is not None:
            what = f"an int >= {low}"
        else:
            what = "an int"
    if not is_int(value):
        raise ArgumentTypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{name} must be {what}, got {v!r}")
    return v


def positive_int(value: object, name: str) -> int:
    """An ``int >= 1``."""
    return integer(value, name, low=1)


def seed(value: object, name: str = "seed", *, low: int | None = None) -> int:
    """A seed for ``torch.Generator.manual_seed``: an ``int`` (``>= low`` when given)."""
    return integer(value, name, low=low, what="an int (a seed)" if low is None else f"an int >= {low} (a seed)")
