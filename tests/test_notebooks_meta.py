"""Every chapter notebook is listed, executed, error-free, cites, and installs from _config's URL."""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())


def _toc_files(node) -> list[str]:
    files = []
    if isinstance(node, dict):
        if "file" in node:
            files.append(node["file"])
        for value in node.values():
            files += _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            files += _toc_files(item)
    return files


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebooks found"
    assert (ROOT / "notebooks" / "00_foundations.ipynb") in NOTEBOOKS


def test_toc_files_exist():
    for entry in [TOC["root"], *_toc_files(TOC["parts"])]:
        candidates = [ROOT / f"{entry}{ext}" for ext in ("", ".md", ".ipynb")]
        assert any(c.exists() for c in candidates), f"_toc.yml lists missing file {entry}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_named_and_listed(path):
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), path.name
    assert f"notebooks/{path.stem}" in _toc_files(TOC["parts"]), f"{path.name} is not in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_executed_without_errors(path):
    nb = _load(path)
    for i, cell in enumerate(_code_cells(nb)):
        if _source(cell).strip():
            assert cell["execution_count"] is not None, f"{path.name}: code cell {i} was not executed"
        errors = [o for o in cell["outputs"] if o["output_type"] == "error"]
        assert not errors, f"{path.name}: code cell {i} has a stored error"
    counts = [c["execution_count"] for c in _code_cells(nb) if _source(c).strip()]
    assert counts == sorted(counts), f"{path.name}: cells were executed out of order"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_setup_cell_uses_config_url(path):
    first = _source(_code_cells(_load(path))[0])
    assert '"google.colab" in sys.modules' in first, f"{path.name}: first code cell is not the Colab setup"
    urls = re.findall(r'REPO_URL = "([^"]+)"', first)
    assert urls == [CONFIG["repository"]["url"]], f"{path.name}: {urls} != _config.yml repository.url"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_cites_and_checks(path):
    nb = _load(path)
    markdown = "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    keys = re.findall(r"\{(?:foot)?cite(?::\w+)?\}`([^`]+)`", markdown)
    assert keys, f"{path.name}: no {{cite}} / {{footcite}} reference"
    assert "{footbibliography}" in markdown, f"{path.name}: no references section (footbibliography)"
    bib = (ROOT / "book" / "references.bib").read_text()
    for key in ",".join(keys).split(","):
        assert f"{{{key.strip()}," in bib, f"{path.name}: citation key {key!r} is not in references.bib"
    assert any("assert " in _source(c) for c in _code_cells(nb)), f"{path.name}: no assert cell"
    assert "seed_everything(0)" in "".join(_source(c) for c in _code_cells(nb)), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_glued_names_exist(path):
    """Every {glue} in the prose has a value stored by an executed glue() call (names may be computed)."""
    nb = _load(path)
    markdown = "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    used = set(re.findall(r"\{glue(?::\w+)?\}`([^`]+)`", markdown))
    stored = {
        o["metadata"]["scrapbook"]["name"]
        for c in _code_cells(nb) for o in c["outputs"]
        if "scrapbook" in o.get("metadata", {})
    }
    missing = sorted(used - stored)
    assert not missing, f"{path.name}: glued in the text but never stored: {missing}"
