"""Pruning beyond one machine: global selection on sharded weights, data-parallel calibration.

Launch (CPU, gloo): ``.venv/bin/torchrun --nproc-per-node 2 benchmarks/dist_prune.py``

Runs :mod:`sparsekit.shard_demo` (the experiment of the chapter "Pruning beyond one machine":
FSDP2-sharded global selection of 90 % of 50.3 M weights, and data-parallel calibration with
SparseGPT checked against one process) and writes its tables to
``benchmarks/results/dist_cpu.md``. Exits non-zero if a distributed result differs from one
process.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from sparsekit import shard_demo

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "dist_cpu.md"


def main() -> None:
    out = Path(tempfile.gettempdir()) / f"dist_prune_{os.environ.get('TORCHELASTIC_RUN_ID', os.getpid())}.json"
    shard_demo.main(["--out", str(out)])
    if int(os.environ.get("RANK", "0")) != 0:
        return
    results = json.loads(out.read_text())
    RESULTS.write_text(shard_demo.results_markdown(results))
    print(RESULTS.read_text())
    ok = results["selection"]["equal"] and results["calibration"]["masks_equal"]
    sys.exit(0 if ok and results["calibration"]["counts_equal"] else "distributed results differ from one process")


if __name__ == "__main__":
    main()
