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


# --- What strict nbval may compare ------------------------------------------------------
# Strict nbval compares every saved output of a cell that is not tagged `nbval-ignore-output`.
# That is right only for outputs that are the same on every machine. Training, timing and
# evaluation take other floating-point paths on other CPUs, so anything derived from them
# must sit in an ignored cell. The rule, checked by a small data-flow analysis over the cells:
#   1. a cell that calls a training, evaluation or timing entry point is *tainted*;
#   2. a cell that reads a name a tainted cell wrote (assigned, or mutated through a method
#      call or an in-place sparsekit function) is tainted too, and so are the names it writes;
#   3. a tainted cell with text output (printed text, results, glue values, widgets) must be
#      tagged `nbval-ignore-output`. Figures are not compared (nbval skips images, and a
#      figure's text is only its size), so a cell whose only outputs are figures may stay strict.
# A cell whose printed output is machine-independent although it reads trained objects (names
# of state_dict keys, shapes) says so with a comment `# nbval: strict (<why>)` and stays strict.

import ast  # noqa: E402

TAINT_SOURCES = {
    # training (sparsekit.train, chapter loops that train inside)
    "fine_tune", "apply_iterative_pruning", "imp", "retrain", "random_reinit", "random_mask", "one_shot",
    "instability", "apply_gradual_pruning", "make_pretrained",
    # sparsekit.recipes: training with early stopping
    "train_baseline", "fit",
    # evaluation of a model: float accumulation
    "evaluate", "accuracy", "sensitivity_scan",
    # one-shot pruning and language models (sparsekit.posttrain, sparsekit.lm): float accumulation
    "calibrate", "prune", "sparsegpt", "wanda_mask", "perplexity", "generate", "train_lm", "make_pretrained_lm",
    # timing
    "time_fn", "interleaved_times", "compare", "perf_counter", "monotonic", "process_time",
    "cuda_graph_time",
}
# sparsekit functions that change their first argument in place
IN_PLACE = {
    "apply_masks", "remove_masks", "apply_magnitude_pruning", "apply_nm", "apply_ste", "rewind",
    "load_masked_state_dict", "attach_scores", "freeze_masks", "permute_for_nm", "permute_channels", "fine_tune",
    "train", "apply_iterative_pruning", "recalibrate_batchnorm",
}
MUTATING_METHODS = {"append", "extend", "update", "add", "insert", "setdefault", "copy_", "load_state_dict",
                    "__setitem__"}
STRICT_MARK = "# nbval: strict"


def _python(source: str) -> ast.Module:
    """The cell as Python: IPython magics and shell escapes are dropped."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    return ast.parse("\n".join(lines))


def _base_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _call_name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _is_source(call: ast.Call) -> bool:
    name = _call_name(call)
    if name == "train":  # sk.train.train(...) / train.train(...), not model.train()
        owner = call.func.value if isinstance(call.func, ast.Attribute) else None
        owner_name = owner.attr if isinstance(owner, ast.Attribute) else owner.id if isinstance(owner, ast.Name) else ""
        return owner_name == "train" and _base_name(owner) in {"sk", "train"}
    return name in TAINT_SOURCES or (name == "time" and _base_name(call.func) == "time")


def _local_names(tree: ast.Module) -> set[str]:
    """Names the cell binds before it uses them: loop and comprehension variables, arguments,
    and names whose first appearance is an assignment. Reading them reads no earlier cell."""
    local: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.comprehension):
            local |= {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.arguments):
            local |= {a.arg for a in node.posonlyargs + node.args + node.kwonlyargs}
            local |= {a.arg for a in (node.vararg, node.kwarg) if a}
    first: dict[str, bool] = {}
    names = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Name)), key=lambda n: (n.lineno, n.col_offset))
    for n in names:
        first.setdefault(n.id, isinstance(n.ctx, ast.Store))
    return local | {name for name, stored in first.items() if stored}


def _reads_and_writes(tree: ast.Module, source_fns: set[str]) -> tuple[set[str], set[str], bool]:
    """(names read from earlier cells, names written, whether top-level code calls a source).

    A call to a source inside a function body does not taint the cell: it makes the function
    itself a source (added to ``source_fns``), so the cells that call it are tainted.
    """
    reads, writes, source = set(), set(), False
    in_def = {id(n) for d in ast.walk(tree) if isinstance(d, (ast.FunctionDef, ast.Lambda))
              for n in ast.walk(d) if n is not d}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (writes if isinstance(node.ctx, ast.Store) else reads).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            writes.add(node.name)
            if any(isinstance(n, ast.Call) and (_is_source(n) or _call_name(n) in source_fns) for n in ast.walk(node)):
                source_fns.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for t in ast.walk(target):
                    if isinstance(t, (ast.Subscript, ast.Attribute)) and _base_name(t):
                        writes.add(_base_name(t))
        elif isinstance(node, ast.Call):
            if id(node) not in in_def and (_is_source(node) or _call_name(node) in source_fns):
                source = True
            name = _call_name(node)
            if isinstance(node.func, ast.Attribute) and name in MUTATING_METHODS and _base_name(node.func.value):
                writes.add(_base_name(node.func.value))
            if name in IN_PLACE and node.args and _base_name(node.args[0]):
                writes.add(_base_name(node.args[0]))
    return reads - _local_names(tree), writes, source


def _text_outputs(cell: dict) -> list[str]:
    kinds = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "display_data" and any(k.startswith("image/") for k in out.get("data", {})):
            continue  # a figure
        kinds.append(out["output_type"])
    return kinds


def strict_but_machine_dependent(nb: dict) -> list[str]:
    """Cells whose outputs nbval compares strictly although they derive from training or timing."""
    tainted: set[str] = set()
    source_fns: set[str] = set()
    problems = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = _source(cell)
        reads, writes, calls_source = _reads_and_writes(_python(source), source_fns)
        if calls_source or reads & tainted:
            tainted |= writes
            ignored = "nbval-ignore-output" in cell.get("metadata", {}).get("tags", [])
            if _text_outputs(cell) and not ignored and STRICT_MARK not in source:
                why = "calls training/timing" if calls_source else f"reads {sorted(reads & tainted)[:4]}"
                problems.append(f"cell {i} ({why}): {source.strip().splitlines()[0][:60]!r}")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_derived_from_training_or_timing_are_not_compared(path):
    problems = strict_but_machine_dependent(_load(path))
    assert not problems, (f"{path.name}: tag these cells nbval-ignore-output (their outputs differ between CPUs), "
                          f"or mark a machine-independent output '{STRICT_MARK} (why)':\n" + "\n".join(problems))


def _nb(*cells: tuple[str, list[str], list[dict]]) -> dict:
    return {"cells": [{"cell_type": "code", "source": src, "metadata": {"tags": tags}, "outputs": outs}
                      for src, tags, outs in cells]}


def test_taint_rule_catches_what_it_should():
    printed = [{"output_type": "stream", "name": "stdout", "text": "0.65"}]
    figure = [{"output_type": "display_data", "data": {"image/png": "", "text/plain": "<Figure>"}}]
    nb = _nb(
        ("splits = sk.data.mnist1d()\nprint(len(splits.y_train))", [], printed),  # 0 deterministic: fine
        ("model = sk.models.MLP()\nsk.train.train(model, loader)", [], []),         # 1 trains, prints nothing
        ("print(sk.train.accuracy(model, x, y))", [], printed),                     # 2 evaluation: flagged
        ("masks = sk.select_masks(sk.scores.magnitude(model), 0.9)", [], []),       # 3 tainted via model
        ("print(int(masks['w'].sum()))", [], printed),                              # 4 flagged (trained masks)
        ("print(int(masks['w'].sum()))", ["nbval-ignore-output"], printed),         # 5 tagged: fine
        ("plt.plot(masks['w'])", [], figure),                                       # 6 figure only: fine
        ("results = []", [], []),                                                   # 7
        ("results.append(model)", [], []),                                          # 8 mutation taints results
        ("print(len(results))", [], printed),                                       # 9 flagged
        ("print(list(model.state_dict()))  # nbval: strict (key names)", [], printed),  # 10 marked: fine
        ("t = time.perf_counter()\nprint(t)", [], printed),                         # 11 timing: flagged
        ("m2 = sk.models.MLP()\nsk.apply_masks(m2, masks)", [], []),                 # 12 in-place: m2 tainted
        ("print(m2)", [], printed),                                                 # 13 flagged
        ("net = sk.models.MLP()\nnet.train()\nprint(net)", [], printed),            # 14 mode switch only: fine
        ("for m2 in range(3):\n    print(m2)", [], printed),                       # 15 loop variable: fine
        ("print([masks for masks in range(2)])", [], printed),                     # 16 comprehension: fine
        ("def f(model):\n    return model\nprint(f(1))", [], printed),              # 17 argument: fine
        ("def g():\n    return model\n", [], []),                                  # 18 reads model: g tainted
        ("print(g())", [], printed),                                                # 19 flagged
        ("def acc(m):\n    return sk.train.accuracy(m, x, y)\ndata = 1\nprint(data)", [], printed),  # 20 fine
        ("print(acc(net))", [], printed),                                           # 21 calls a source: flagged
        ("print(data)", [], printed),                                               # 22 fine
    )
    flagged = [int(p.split()[1]) for p in strict_but_machine_dependent(nb)]
    assert flagged == [2, 4, 9, 11, 13, 19, 21]


# --- Seeds come from one place ------------------------------------------------------------

# Functions that only build a fixed demo tensor (a timing weight, a mask pattern): a literal
# seed there picks no experiment, so it is allowed.
FIXED_TENSOR_FNS = {"unstructured_mask", "block_mask", "manual_seed"}


def _literal_seeds(tree: ast.Module) -> list[str]:
    """Calls that pick an experiment seed by hand: seed_everything(<int>) or seed=<int>."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _call_name(node)
        if name in FIXED_TENSOR_FNS:
            continue
        if name == "seed_everything" and node.args and isinstance(node.args[0], ast.Constant):
            found.append(f"seed_everything({node.args[0].value})")
        for kw in node.keywords:
            if kw.arg in {"seed", "head_seed"} and isinstance(kw.value, ast.Constant):
                found.append(f"{name}(seed={kw.value.value})")
            if kw.arg in {"seed", "head_seed"} and isinstance(kw.value, ast.BinOp) \
                    and all(isinstance(v, ast.Constant) for v in (kw.value.left, kw.value.right)):
                found.append(f"{name}(seed={ast.unparse(kw.value)})")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_experiment_seeds_come_from_sk_seeds(path):
    """Every training seed comes from sk.seeds(n) ($SPARSEKIT_SEED_BASE), so `make robust` can move them.

    The setup cell's seed_everything(0) and generators seeded for a fixed demo tensor
    (torch.Generator().manual_seed(0)) are fine: they never feed training.
    """
    nb = _load(path)
    code = _code_cells(nb)
    assert "sk.seeds(" in "".join(_source(c) for c in code), f"{path.name}: never calls sk.seeds"
    setup = next(i for i, c in enumerate(code) if "seed_everything(0)" in _source(c))
    tainted_seeds = []
    for i, cell in enumerate(code):
        if i == setup:
            continue
        tainted_seeds += [f"code cell {i}: {s}" for s in _literal_seeds(_python(_source(cell)))]
    assert not tainted_seeds, f"{path.name}: seeds picked by hand (use sk.seeds):\n" + "\n".join(tainted_seeds)


# --- One thread policy --------------------------------------------------------------------

@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_setup_sets_the_thread_count(path):
    code = _code_cells(_load(path))
    setup = next(c for c in code if "seed_everything(0)" in _source(c))
    assert "torch.set_num_threads(" in _source(setup), f"{path.name}: the setup cell does not set the thread count"


def test_references_bib_parses():
    """A broken entry (a merge that drops a brace) fails here, not only in the book build."""
    pybtex = pytest.importorskip("pybtex.database")
    entries = pybtex.parse_file(ROOT / "book" / "references.bib").entries
    text = (ROOT / "book" / "references.bib").read_text()
    assert len(entries) == text.count("\n@") + text.startswith("@")


# --- Figures that read on a phone ---------------------------------------------------------

MAX_FIGURE_PX = 800
"""Widest saved figure, in pixels (8 in at the inline backend's 100 dpi). The book scales a
figure to the page; at 400 px (a phone) an 800 px figure keeps half its size, so a 10 pt label
stays about 7 px tall. Wider figures are multi-panel rows: stack them (two panels per row at
most) instead (issue 19)."""


def _png_sizes(cell: dict) -> list[tuple[int, int]]:
    import base64
    import struct

    sizes = []
    for out in cell.get("outputs", []):
        png = out.get("data", {}).get("image/png")
        if png:
            head = base64.b64decode("".join(png)[:64])
            sizes.append(struct.unpack(">II", head[16:24]))  # IHDR width, height
    return sizes


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_figures_fit_a_phone_screen(path):
    wide = [f"code cell {i}: {w} x {h} px" for i, cell in enumerate(_load(path)["cells"])
            for w, h in _png_sizes(cell) if w > MAX_FIGURE_PX]
    assert not wide, f"{path.name}: figures wider than {MAX_FIGURE_PX} px (stack the panels):\n" + "\n".join(wide)
