"""The book's plumbing, outside the pipeline (score -> select -> mask -> train -> finalize).

:func:`glue` records a computed value for the prose (``{glue:text}`` in MyST) the way
``myst_nb.glue`` does. It calls ``myst_nb.glue`` when myst-nb is installed (the book's
environment) and otherwise writes the same output itself, so a chapter opened in Colab
does not need myst-nb, which would pull Sphinx into the runtime just to record values.
Either way the cell's saved output is the same mime bundle, byte for byte, so the
book renders and nbval compares exactly what it did before.

:func:`results_tables` reads a file that a benchmark script wrote to
``benchmarks/results/``: some measurements take minutes (converged baselines,
torchvision's models), so a chapter shows the recorded tables instead of re-running them.
The files belong to the repository, not to the installed package: in Colab it returns
``None`` and the chapter says the file is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

Table = list[list[str]]
"""A Markdown table as rows of stripped cells, the header and the ``---`` row included."""

GLUE_PREFIX = "application/papermill.record/"
"""myst-nb's prefix for a glued value that is stored but not displayed (``display=False``)."""


def glue_bundle(name: str, variable: Any, display: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (mime bundle, metadata) that ``myst_nb.glue(name, variable, display)`` displays.

    The bundle is IPython's formatting of ``variable``, each mime type prefixed with
    :data:`GLUE_PREFIX` when ``display`` is false; the metadata names the value
    (``{"scrapbook": {"name": name, "mime_prefix": ...}}``), which is how myst-nb
    finds it when the book is built.
    """
    from IPython.core.formatters import format_display_data

    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not name.strip():
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if not isinstance(display, bool):
        raise TypeError(f"display must be a bool, got {type(display).__name__}")
    bundle, metadata = format_display_data(variable)
    prefix = "" if display else GLUE_PREFIX
    metadata["scrapbook"] = dict(name=name, mime_prefix=prefix)
    return {prefix + k: v for k, v in bundle.items()}, metadata


def _myst_nb_glue() -> Any | None:
    """``myst_nb.glue`` if myst-nb is installed, else ``None``."""
    try:
        from myst_nb import glue as myst_glue
    except ImportError:
        return None
    return myst_glue


def glue(name: str, variable: Any, display: bool = True) -> None:
    """Record ``variable`` under ``name`` for ``{glue}`` in the prose (and show it if ``display``).

    ``myst_nb.glue`` when myst-nb is installed; otherwise the same output (see
    :func:`glue_bundle`) without it. Bad ``name`` or ``display`` -> ``TypeError``/``ValueError``.
    """
    bundle, metadata = glue_bundle(name, variable, display)  # validates, also before myst-nb's glue
    myst_glue = _myst_nb_glue()
    if myst_glue is not None:
        myst_glue(name, variable, display=display)
        return
    from IPython.display import display as ipy_display

    ipy_display(bundle, raw=True, metadata=metadata)


def results_file(name: str) -> Path | None:
    """``benchmarks/results/<name>`` of the checkout this runs in, or ``None`` outside a checkout.

    Looked up from the working directory and its parents (a notebook runs in ``notebooks/``),
    then next to the imported package (an editable install).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not name or Path(name).name != name:
        raise ValueError(f"name must be a file name in benchmarks/results/, got {name!r}")
    roots = (Path.cwd(), *Path.cwd().parents, Path(__file__).resolve().parents[1])
    return next((r / "benchmarks" / "results" / name for r in roots
                 if (r / "benchmarks" / "results" / name).is_file()), None)


def markdown_tables(text: str) -> list[Table]:
    """Every table of a Markdown text (runs of lines starting with ``|``), in order."""
    tables: list[Table] = []
    current: Table = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def results_tables(name: str) -> list[Table] | None:
    """The tables of ``benchmarks/results/<name>`` (:func:`results_file`), or ``None`` if it is not there."""
    path = results_file(name)
    return markdown_tables(path.read_text()) if path is not None else None


def table_markdown(table: Table) -> str:
    """A :data:`Table` back as Markdown, for ``display(Markdown(...))``."""
    return "\n".join("| " + " | ".join(row) + " |" for row in table)
