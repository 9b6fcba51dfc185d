"""`make robust`: execute every chapter on other seeds and another floating-point path.

A chapter's asserts are its claims. They must hold for a reader whose seeds or CPU differ
from ours, so this script executes each notebook (plain execution, not nbval: the asserts
must pass; outputs are not compared) under

* ``seed100`` / ``seed200``: ``SPARSEKIT_SEED_BASE=100`` / ``200`` (``sk.seeds`` moves every
  experiment seed of the chapter);
* ``aten-default``: ``ATEN_CPU_CAPABILITY=default``, ATen's portable kernels instead of the
  AVX2/AVX-512 ones, i.e. the float path another processor takes (seed base 0);

and prints a table chapter x run -> pass (seconds) or the failing assert. In the
``aten-default`` run it also compares what strict nbval compares (the text outputs of cells
not tagged ``nbval-ignore-output``, after ``tests/nbval_sanitize.cfg``) with the committed
notebook: those outputs must be the same on every CPU. The executed
copies go to ``_build/robust/<run>/`` (the committed notebooks are never touched), the table
to ``benchmarks/results/robust_cpu.md``.

Results are cached in ``_build/robust/results.json`` under a fingerprint of the notebook and
of ``sparsekit/``'s sources, so one chapter can be re-run alone; the table is written when
every (chapter, run) pair has a result for the current notebooks and library.

Usage: ``python tests/robust.py [--jobs 2] [--runs seed100,seed200,aten-default] [notebooks ...]``
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from sparsekit.bench import cpu_name

ROOT = Path(__file__).resolve().parents[1]
RUNS: dict[str, dict[str, str]] = {
    "seed0": {"SPARSEKIT_SEED_BASE": "0"},
    "seed100": {"SPARSEKIT_SEED_BASE": "100"},
    "seed200": {"SPARSEKIT_SEED_BASE": "200"},
    "aten-default": {"SPARSEKIT_SEED_BASE": "0", "ATEN_CPU_CAPABILITY": "default"},
}
DEFAULT_RUNS = ("seed100", "seed200", "aten-default")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def failing_line(traceback: str) -> str:
    """The source line the traceback's arrow points at in the cell (the assert that failed)."""
    lines = [ANSI.sub("", line) for line in traceback.splitlines()]
    arrows = [line for line in lines if re.match(r"\s*-+>\s*\d+", line)]
    if not arrows:
        return ""
    return re.sub(r"^\s*-+>\s*\d+\s*", "", arrows[0]).strip()


def _sanitizers() -> list[tuple[re.Pattern, str]]:
    rules, regex = [], None
    for line in (ROOT / "tests" / "nbval_sanitize.cfg").read_text().splitlines():
        if line.startswith("regex:"):
            regex = line.split(":", 1)[1].strip()
        elif line.startswith("replace:") and regex is not None:
            rules.append((re.compile(regex), line.split(":", 1)[1].strip()))
            regex = None
    return rules


def strict_text(cell: dict, rules: list[tuple[re.Pattern, str]]) -> list[str]:
    """The text outputs strict nbval compares for one cell (figures are not compared).

    Consecutive stream outputs are joined, as nbval does: where one print is split into two
    stream messages depends on timing, not on the computation.
    """
    texts = []
    previous = None
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            text = "".join(out["text"]) if isinstance(out["text"], list) else out["text"]
            if previous == "stream":
                texts[-1] += text
            else:
                texts.append(text)
            previous = "stream"
            continue
        previous = out["output_type"]
        if out["output_type"] in ("execute_result", "display_data"):
            data = out.get("data", {})
            if any(k.startswith("image/") for k in data):
                continue
            texts += ["".join(v) if isinstance(v, list) else str(v) for k, v in sorted(data.items())
                      if k.startswith("text/") or k.startswith("application/papermill")]
    for pattern, replacement in rules:
        texts = [pattern.sub(replacement, t) for t in texts]
    return texts


def strict_differences(committed: dict, executed: dict) -> list[int]:
    """Indices of cells whose strictly compared outputs differ between two copies of a notebook."""
    rules = _sanitizers()
    differ = []
    for i, (a, b) in enumerate(zip(committed["cells"], executed["cells"], strict=True)):
        if a["cell_type"] != "code" or "nbval-ignore-output" in a.get("metadata", {}).get("tags", []):
            continue
        if strict_text(a, rules) != strict_text(b, rules):
            differ.append(i)
    return differ


def execute_one(notebook: Path, run: str, out_dir: Path) -> dict:
    """Execute ``notebook`` in this process's environment; return the outcome as a dict."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    start = time.perf_counter()
    result = {"notebook": notebook.name, "run": run, "ok": True, "error": ""}
    try:
        client.execute()
    except CellExecutionError as err:
        line = failing_line(err.traceback or "")
        message = f"{err.ename}: {err.evalue}".strip().rstrip(":")
        result.update(ok=False, error=f"`{line}` ({message[:160]})" if line else message[:200])
    result["seconds"] = round(time.perf_counter() - start, 1)
    if result["ok"] and "ATEN_CPU_CAPABILITY" in RUNS[run]:
        differ = strict_differences(nbformat.read(notebook, as_version=4), nb)
        if differ:
            result.update(ok=False, error=f"strict nbval outputs differ from the committed ones in cells {differ}")
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / notebook.name)
    return result


def launch(notebook: Path, run: str) -> dict:
    """Run one (notebook, run) pair in a child process whose environment sets the run."""
    env = {**os.environ, **RUNS[run]}
    if "ATEN_CPU_CAPABILITY" not in RUNS[run]:
        env.pop("ATEN_CPU_CAPABILITY", None)
    out_dir = ROOT / "_build" / "robust" / run
    proc = subprocess.run([sys.executable, __file__, "--one", str(notebook), run, str(out_dir)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"notebook": notebook.name, "run": run, "ok": False, "seconds": 0.0,
                "error": "runner crashed: " + proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "?"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


CACHE = ROOT / "_build" / "robust" / "results.json"


def fingerprint(notebook: Path) -> str:
    """SHA-256 of the notebook's code cells and of every sparsekit source file."""
    import hashlib

    import nbformat

    h = hashlib.sha256()
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            h.update(cell.source.encode())
    for path in sorted((ROOT / "sparsekit").rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()


def load_cache() -> dict:
    return json.loads(CACHE.read_text()) if CACHE.is_file() else {}


def record(entry: dict) -> dict:
    """Add one result to the cache under an exclusive lock (several robust.py may run at once)."""
    import fcntl

    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(CACHE.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache = load_cache()
        cache[f"{entry['notebook']}|{entry['run']}"] = entry
        tmp = CACHE.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(CACHE)
    return cache


def table(results: list[dict], runs: list[str], notebooks: list[Path]) -> str:
    by_key = {(r["notebook"], r["run"]): r for r in results}
    lines = ["| chapter | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for nb in notebooks:
        cells = []
        for run in runs:
            r = by_key[(nb.name, run)]
            seconds = f"{r['seconds']:.0f} s"
            cells.append(f"pass ({seconds})" if r["ok"] else f"**FAIL** ({seconds}): {r['error']}")
        lines.append(f"| {nb.stem} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS), help=f"comma-separated, of {sorted(RUNS)}")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks executed at once (each uses 1 thread)")
    parser.add_argument("--one", nargs=3, metavar=("NOTEBOOK", "RUN", "OUT_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "robust_cpu.md")
    args = parser.parse_args(argv)
    if args.one:
        notebook, run, out_dir = args.one
        print(json.dumps(execute_one(Path(notebook), run, Path(out_dir))))
        return 0
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in RUNS]
    if unknown or not runs:
        parser.error(f"--runs: unknown {unknown}; allowed: {sorted(RUNS)}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    notebooks = sorted(args.notebooks or (ROOT / "notebooks").glob("*.ipynb"))
    missing = [str(p) for p in notebooks if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {missing}")
    start = time.perf_counter()
    jobs = [(nb, run) for run in runs for nb in notebooks]
    prints = {nb.name: fingerprint(nb) for nb in notebooks}
    cache = load_cache()
    results = []
    with cf.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(launch, nb, run): (nb, run) for nb, run in jobs}
        for fut in cf.as_completed(futures):
            r = fut.result()
            results.append(r)
            cache = record({**r, "fingerprint": prints[r["notebook"]], "date": f"{dt.datetime.now():%Y-%m-%d %H:%M}"})
            status = "pass" if r["ok"] else f"FAIL {r['error']}"
            print(f"[{len(results)}/{len(jobs)}] {r['notebook']} {r['run']}: {status} ({r['seconds']:.0f} s)",
                  flush=True)
    print("\n" + table(results, runs, notebooks))
    print(f"{len(jobs)} runs in {time.perf_counter() - start:.0f} s")
    ok = all(r["ok"] for r in results)
    # The recorded table: every chapter x every default run, from the cache, for the current files.
    chapters = sorted((ROOT / "notebooks").glob("*.ipynb"))
    current = {nb.name: fingerprint(nb) for nb in chapters}
    cached = [cache.get(f"{nb.name}|{run}") for nb in chapters for run in DEFAULT_RUNS]
    if all(c is not None and c["fingerprint"] == current[c["notebook"]] for c in cached):
        dates = sorted(c["date"] for c in cached)
        header = (f"# make robust: every chapter's asserts on other seeds and another float path\n\n"
                  f"Runs from {dates[0]} to {dates[-1]} on {cpu_name()} ({os.cpu_count()} cores), possibly over "
                  f"several invocations (results are cached), for the current notebooks and sparsekit sources. "
                  f"Times are wall-clock seconds per notebook (longer when two share the machine).\n\n")
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(header + table(cached, list(DEFAULT_RUNS), chapters) + "\n")
        print(f"\nwrote {args.results.relative_to(ROOT)}")
    else:
        print("\n(not every chapter x run has a result for the current files yet: the recorded table is unchanged)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
