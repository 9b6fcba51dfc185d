"""Compatibility check (issue 19): run ``tests/`` under the torch and numpy versions pip promises.

For each environment below: a throwaway venv under /tmp, ``pip install`` of the pinned
torch/numpy together with this repository (so pip resolves ``pyproject.toml``'s own floors
against them) and the test tools, then ``tests/`` (unit tests; the notebooks are not run)
with ``nice -n 10``; the venv is deleted afterwards. The table goes to stdout and to
``benchmarks/results/compat.md``.

Not in CI: torch's wheels on the package index are CUDA builds, 5-7 GB per environment
with their NVIDIA libraries, and each suite takes minutes. ``make compat`` runs it;
``--find-links DIR`` points pip at wheels downloaded beforehand (``pip download``).

Environments: the declared floors (torch 2.7.1, whose pinned triton 3.3 is also what
``sparsekit[kernels]`` needs, with numpy 1.24), the same torch with the newest numpy its Triton's
CPU interpreter accepts (< 2.4; Triton < 3.7 fails with numpy 2.4) and the newest torch and
numpy the index offers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "compat.md"

ENVS: list[tuple[str, list[str]]] = [
    ("floor: torch 2.7.1 + numpy 1.24", ["torch==2.7.1", "numpy==1.24.*"]),
    ("floor torch + newest numpy the Triton 3.3 interpreter takes (< 2.4)", ["torch==2.7.1", "numpy<2.4"]),
    ("newest torch and numpy", ["torch", "numpy"]),
]
# torch 2.5.1 + numpy 1.24, the floor first declared, passed everything but tests/test_distributed.py,
# which hung in 3 of 8 runs: Gloo's process-group destructor holds the GIL while it joins a worker
# thread that needs it (destroy_process_group). torch 2.7.1 ran it 7 times without a hang, and its
# triton (3.3) is what the kernels need anyway: the floor is torch 2.7.
TEST_TOOLS = ["pytest>=8", "hypothesis>=6", "PyYAML", "pytest-timeout"]
TEST_TIMEOUT_S = 900
"""per test: a hang (torch 2.5's Gloo can deadlock in destroy_process_group) fails that test, not the run"""
SUMMARY = re.compile(r"^(?:=+ )?(\d+ \w+.*?) in [\d.]+s", flags=re.M)


def run(cmd: list[str], log: Path, **kw) -> int:
    """Run ``cmd``, appending its output to ``log``; return the exit status."""
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, **kw).returncode


def counts(summary: str) -> dict[str, int]:
    """``"3 failed, 400 passed, 11 skipped"`` -> ``{"failed": 3, "passed": 400, "skipped": 11}``."""
    return {k: int(n) for n, k in re.findall(r"(\d+) (\w+)", summary)}


def causes(output: str, limit: int = 3) -> str:
    """The most frequent (test file, message) pairs of a pytest ``-rfE`` summary, with their counts."""
    found: dict[str, int] = {}
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            kind, rest = line.split(" ", 1)
            where = rest.split("::", 1)[0]
            msg = rest.split(" - ", 1)[1].strip()[:90] if " - " in rest else kind.lower()
            key = f"{where}: {msg}"
            found[key] = found.get(key, 0) + 1
    top = sorted(found.items(), key=lambda kv: -kv[1])[:limit]
    return "; ".join(f"{n} x `{m}`" for m, n in top) or "—"


def skip_reasons(output: str, limit: int = 2) -> str:
    """The skip reasons of a pytest ``-rs`` summary (``SKIPPED [n] file:line: reason``)."""
    found: dict[str, int] = {}
    for m in re.finditer(r"^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$", output, flags=re.M):
        found[m.group(2)[:120]] = found.get(m.group(2)[:120], 0) + int(m.group(1))
    top = sorted(found.items(), key=lambda kv: -kv[1])[:limit]
    return "; ".join(f"{n} x {r}" for r, n in top) or "—"


def install(venv: Path, pins: list[str], find_links: list[str], log: Path) -> float | None:
    """Create ``venv`` with the pins, this repository and the test tools; seconds taken, or None."""
    start = time.perf_counter()
    if run([sys.executable, "-m", "venv", str(venv)], log):
        return None
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    pip += [f"--find-links={d}" for d in find_links]
    had_build = (ROOT / "build").exists()
    try:
        if run(pip + pins + [str(ROOT)] + TEST_TOOLS, log):
            return None
    finally:
        if not had_build:  # setuptools builds the local project in place
            shutil.rmtree(ROOT / "build", ignore_errors=True)
    seconds = time.perf_counter() - start
    (venv / ".compat-installed").write_text(f"{seconds:.0f}")
    return seconds


def check(index: int, find_links: list[str], logdir: Path, keep: bool, install_only: bool = False) -> dict[str, str]:
    """Build environment ``index`` (or reuse one built by ``--install-only``), run ``tests/`` in it,
    return one row of the table."""
    label, pins = ENVS[index]
    venv = Path(tempfile.gettempdir()) / f"sparsekit-compat-{index}"
    log = logdir / (re.sub(r"[^a-z0-9.]+", "_", label.lower()).strip("_") + ".log")
    row = {"env": label, "torch": "?", "triton": "—", "numpy": "?", "result": "install failed",
           "causes": "see " + log.name, "skips": "—", "time": "—"}
    marker = venv / ".compat-installed"
    try:
        py = venv / "bin" / "python"
        if marker.exists():
            install_s = float(marker.read_text())
        else:
            shutil.rmtree(venv, ignore_errors=True)
            log.write_text("")
            install_s = install(venv, pins, find_links, log)
            if install_s is None:
                return row
        if install_only:
            keep = True
            row["result"], row["time"] = "installed", f"{install_s:.0f} s"
            return row
        probe = ("import importlib.metadata as m, torch, numpy\n"
                 "try: t = m.version('triton')\nexcept m.PackageNotFoundError: t = '—'\n"
                 "print(torch.__version__, t, numpy.__version__)")
        out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
        if out.returncode == 0:
            row["torch"], row["triton"], row["numpy"] = out.stdout.split()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "240"}
        env.pop("SPARSEKIT_SEED_BASE", None)
        start = time.perf_counter()
        proc = subprocess.Popen(["nice", "-n", "10", str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 "-o", "addopts=", "-rfEs", f"--timeout={TEST_TIMEOUT_S}", "tests"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        stdout, stderr = proc.communicate()
        test = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        with contextlib.suppress(ProcessLookupError):  # worker processes a timed-out test left behind
            os.killpg(proc.pid, signal.SIGKILL)
        test_s = time.perf_counter() - start
        with log.open("a") as fh:
            fh.write(test.stdout + test.stderr)
        summary = SUMMARY.findall(test.stdout)
        c = counts(summary[-1]) if summary else {}
        failed = c.get("failed", 0) + c.get("error", 0) + c.get("errors", 0)
        row["result"] = f"{c.get('passed', 0)} / {failed} / {c.get('skipped', 0)}" if summary else "no summary"
        row["causes"] = causes(test.stdout)
        row["skips"] = skip_reasons(test.stdout)
        row["time"] = f"{install_s:.0f} s + {test_s:.0f} s"
        return row
    finally:
        if keep:
            print(f"kept {venv}", file=sys.stderr)
        else:
            shutil.rmtree(venv, ignore_errors=True)


def table(rows: list[dict[str, str]]) -> str:
    """The Markdown table of the rows."""
    lines = ["| environment | torch (its triton) | numpy | passed / failed / skipped | failures | skipped because "
             "| install + tests |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['env']} | {r['torch']} ({r['triton']}) | {r['numpy']} | {r['result']} | {r['causes']} "
                     f"| {r['skips']} | {r['time']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", type=int, action="append", help="run only environment i (0-based; repeatable)")
    ap.add_argument("--find-links", action="append", default=[], help="extra wheel folder for pip (repeatable)")
    ap.add_argument("--keep", action="store_true", help="keep the venvs (default: delete each after its run)")
    ap.add_argument("--install-only", action="store_true",
                    help="only build the venvs (kept; a later run without this flag tests and deletes them)")
    ap.add_argument("--logs", default="/tmp/sparsekit-compat-logs", help="where each environment's log goes")
    ap.add_argument("--out", default=str(RESULT), help="Markdown file for the table")
    args = ap.parse_args(argv)
    logdir = Path(args.logs)
    logdir.mkdir(parents=True, exist_ok=True)
    chosen = args.only if args.only else range(len(ENVS))
    rows = []
    for i in chosen:
        print(f"== {ENVS[i][0]}: {' '.join(ENVS[i][1])}", flush=True)
        rows.append(check(i, args.find_links, logdir, args.keep, args.install_only))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    if args.install_only:
        return 0
    text = (f"# `make compat`: tests/ under the declared floors and the newest torch\n\n"
            f"Measured {dt.date.today()} on {platform.machine()} CPU ({os.cpu_count()} cores), Python "
            f"{platform.python_version()}; torch wheels from the package index (CUDA builds with their pinned "
            f"triton; no GPU, so the Triton kernels run in the CPU interpreter). Failed includes errors.\n\n"
            f"{table(rows)}\n")
    print("\n" + table(rows))
    Path(args.out).write_text(text)
    ok = all(r["result"].split(" / ")[1:2] == ["0"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
