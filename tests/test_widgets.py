"""Every chapter's widget cell builds and calls back under the installed ipywidgets (7.7 and 8).

Colab ships ipywidgets 7.x, the book's environment pins 8 (issue 19). For each chapter's
``widgets.interact(callback, **controls)`` call this test builds the very same controls
(the names they use are taken from the chapter's own assignments), with the chapter's
callback replaced by a recorder (the real callbacks need the chapter's trained models and
only plot or print), then moves every control through its values and checks that interact
calls back once per change with every control's current value. Run it under ipywidgets 7.7
in a throwaway venv as well (see benchmarks/results/compat.md).
"""

from __future__ import annotations

import ast
import builtins
import json
from pathlib import Path

import pytest

widgets = pytest.importorskip("ipywidgets")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _code(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def _interact_calls(cells: list[str]) -> list[tuple[int, ast.Call]]:
    found = []
    for i, src in enumerate(cells):
        try:
            tree = ast.parse(src)
        except SyntaxError:  # IPython magics
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "interact"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "widgets"):
                found.append((i, node))
    return found


def _names(node: ast.AST) -> set[str]:
    """Free names an expression reads (comprehension variables left out)."""
    names = [n for n in ast.walk(node) if isinstance(n, ast.Name)]
    return {n.id for n in names if isinstance(n.ctx, ast.Load)} - {n.id for n in names if isinstance(n.ctx, ast.Store)}


def _resolve(cells: list[str], upto: int, needed: set[str]) -> dict:
    """Values of ``needed`` from the chapter's own simple assignments up to cell ``upto`` (included)."""
    assigns: list[ast.Assign] = []
    for src in cells[:upto + 1]:
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        assigns += [s for s in tree.body if isinstance(s, ast.Assign)
                    and all(isinstance(t, ast.Name) for t in s.targets)]
    ns: dict = {"__builtins__": builtins}
    todo = set(needed)
    for _ in range(5):  # follow names an assignment depends on (TARGETS = tuple(LAMBDAS))
        deps = set()
        for s in assigns:
            if {t.id for t in s.targets} & todo:
                deps |= _names(s.value)
        if deps <= todo:
            break
        todo |= deps
    for s in assigns:  # in order, the last assignment wins as in the notebook
        if {t.id for t in s.targets} & todo:
            try:
                value = eval(compile(ast.Expression(s.value), "<nb>", "eval"), ns)
            except Exception:
                continue
            for t in s.targets:
                ns[t.id] = value
    return ns


def _values(control) -> list:
    if hasattr(control, "options") and control.options:
        opts = list(control.options)
        return [o[1] if isinstance(o, tuple) else o for o in opts]
    if isinstance(control, widgets.FloatSlider):
        return [control.min, (control.min + control.max) / 2, control.max]
    return list(range(control.min, control.max + 1))


@pytest.fixture
def shell():
    """An IPython shell, so ``display`` works as in a kernel (ipywidgets 7 calls back first on display)."""
    from IPython.core.interactiveshell import InteractiveShell

    had = InteractiveShell.initialized()
    yield InteractiveShell.instance()
    if not had:  # leave no shell behind for other tests (get_ipython() is None again)
        InteractiveShell.clear_instance()


CASES = [(p, i) for p in NOTEBOOKS for i in range(len(_interact_calls(_code(json.loads(p.read_text())))))]


@pytest.mark.parametrize("path, k", CASES, ids=[f"{p.stem[:2]}-{k}" for p, k in CASES])
def test_widget_cell_calls_back(shell, path, k):
    cells = _code(json.loads(path.read_text()))
    where, call = _interact_calls(cells)[k]
    needed = set().union(*(_names(kw.value) for kw in call.keywords)) - {"widgets"} - set(dir(builtins))
    ns = _resolve(cells, where, needed)
    missing = needed - set(ns)
    assert not missing, f"{path.name}: cannot evaluate {sorted(missing)} for the widget cell"
    ns["widgets"] = widgets
    controls = {kw.arg: eval(compile(ast.Expression(kw.value), path.name, "eval"), ns) for kw in call.keywords}
    seen: list[dict] = []

    def recorder(**kwargs):
        seen.append(kwargs)

    box = widgets.interact(recorder, **controls)
    assert seen and seen[-1] == {name: c.value for name, c in controls.items()}, "no first call with the defaults"
    for name, control in controls.items():
        for v in _values(control):
            if v == control.value:
                continue
            before = len(seen)
            control.value = v
            assert len(seen) == before + 1, f"{name}={v!r}: {len(seen) - before} calls"
            assert seen[-1][name] == v
            assert seen[-1] == {n: c.value for n, c in controls.items()}
    assert box is not None


def test_every_chapter_with_a_widget_is_covered():
    """The AST search finds the widget cell of every chapter that imports ipywidgets."""
    with_widgets = {p.name for p in NOTEBOOKS if "import ipywidgets" in "".join(_code(json.loads(p.read_text())))}
    covered = {p.name for p, _ in CASES}
    assert with_widgets <= covered, sorted(with_widgets - covered)
