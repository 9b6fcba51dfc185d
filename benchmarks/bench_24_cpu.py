"""A 2:4 (50 %) sparse matrix-vector product on the CPU at batch 1: can it beat dense? (issue 20, stretch)

At batch 1 a Linear layer is bound by the bytes of its weight (chapter 1, section 9). A 2:4
weight compressed as ``sk.compress_24`` keeps half the values plus a 4-bit nibble per group of
four (two 2-bit indices): for float32, ``4 * K/2 + K/8`` bytes per row against ``4 * K``, so
the byte-ratio bound is ``1 / (1/2 + 1/32) = 1.88x`` (for float16 values 9/16 of the bytes,
1.78x). CSR of the same 50 % weight reads 8 bytes per kept value, as many as dense: bound 1x.

No CPU library ships a 2:4 kernel. The candidate here is the *reference* decompress-and-
multiply written in torch ops (unpack the nibbles, gather the input, multiply, sum) and handed
to ``torch.compile``, whose Inductor backend generates one fused C++/OpenMP loop on CPU that
reads ``values`` and ``meta`` once. Timed interleaved against ``F.linear`` (MKL) and
``sk.execute`` CSR, median of repeats, on a ``[4096 x 4096]`` float32 weight.

    python benchmarks/bench_24_cpu.py [--repeats 15] [--n 4096]

Writes ``benchmarks/results/24_cpu.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import sparsekit as sk
from sparsekit import execute as ex
from sparsekit.bench import cpu_name


def matvec_24(values: torch.Tensor, meta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``W @ x`` for ``W`` given as ``sk.compress_24``'s ``(values [N, K/2], meta [N, K/8])``, ``x [K]``.

    Per group ``g`` of four columns, its nibble (low nibble of byte ``g // 2`` for even ``g``,
    high for odd) holds ``i0 | (i1 << 2)``; the group's two values sit at ``values[:, 2g]`` and
    ``values[:, 2g + 1]`` and multiply ``x[4g + i0]`` and ``x[4g + i1]``.
    """
    n, half = values.shape
    m = meta.to(torch.int32)
    nibbles = torch.stack([m & 15, m >> 4], dim=-1).reshape(n, half // 2)  # one per group
    within = torch.stack([nibbles & 3, nibbles >> 2], dim=-1).reshape(n, half)  # index inside the group
    group_start = torch.arange(half, device=values.device) // 2 * 4
    return (values * x[group_start + within]).sum(-1)


def matvec_24_select(values: torch.Tensor, meta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The same product without a gather: each kept value's input is *selected* from its group's
    four inputs with ``torch.where`` (elementwise, so Inductor can vectorize it)."""
    n, half = values.shape
    groups = half // 2
    m = meta.to(torch.int32)
    nibbles = torch.stack([m & 15, m >> 4], dim=-1).reshape(n, groups)
    x4 = x.view(groups, 4)
    v = values.view(n, groups, 2)

    def pick(i: torch.Tensor) -> torch.Tensor:
        return torch.where(i == 0, x4[:, 0], torch.where(i == 1, x4[:, 1], torch.where(i == 2, x4[:, 2], x4[:, 3])))

    return (v[..., 0] * pick(nibbles & 3) + v[..., 1] * pick(nibbles >> 2)).sum(-1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "24_cpu.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
    n = args.n
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, n, generator=gen)
    w = w * sk.nm_mask(w)
    values, meta = sk.compress_24(w)
    x = torch.randn(n, generator=gen)
    csr = ex.to_layout(w, "csr")

    compiled = torch.compile(matvec_24, dynamic=False)
    start = time.perf_counter()
    with torch.no_grad():
        y24 = compiled(values, meta, x)
        compiled_sel = torch.compile(matvec_24_select, dynamic=False)
        torch.testing.assert_close(compiled_sel(values, meta, x), w @ x, rtol=1e-4, atol=1e-3)
    compile_s = time.perf_counter() - start
    ref = w @ x
    torch.testing.assert_close(y24, ref, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(matvec_24(values, meta, x), ref, rtol=1e-4, atol=1e-3)

    x2 = x.unsqueeze(0)
    fns = {"dense (F.linear, MKL)": lambda: F.linear(x2, w),
           "CSR (sk.execute)": lambda: ex.sparse_matmul(csr, x2),
           "2:4, eager torch ops": lambda: matvec_24(values, meta, x),
           "2:4, torch.compile": lambda: compiled(values, meta, x),
           "2:4, torch.compile, select (no gather)": lambda: compiled_sel(values, meta, x)}
    load0 = os.getloadavg()
    times = sk.bench.interleaved_times(fns, warmup=3, repeats=args.repeats, inner=5)
    load1 = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    dense = med["dense (F.linear, MKL)"]
    dense_bytes = w.numel() * 4
    nbytes = {"dense (F.linear, MKL)": dense_bytes, "CSR (sk.execute)": ex.layout_bytes(csr),
              "2:4, eager torch ops": values.numel() * 4 + meta.numel(),
              "2:4, torch.compile": values.numel() * 4 + meta.numel(),
              "2:4, torch.compile, select (no gather)": values.numel() * 4 + meta.numel()}
    rows = ["| kernel | weight MB | byte bound | ms | speedup over dense | GB/s of weight |",
            "|---|---:|---:|---:|---:|---:|"]
    for k, t in med.items():
        rows.append(f"| {k} | {nbytes[k] / 2**20:.1f} | {dense_bytes / nbytes[k]:.2f}x | {t * 1e3:.3f} | "
                    f"{dense / t:.2f}x | {nbytes[k] / t / 1e9:.1f} |")
    best24 = dense / min(med["2:4, torch.compile"], med["2:4, torch.compile, select (no gather)"])
    verdict = ("beats dense" if best24 > 1.05 else "does NOT beat dense" if best24 < 0.95 else "ties with dense")
    text = (f"# A 2:4 matrix-vector product on CPU (batch 1)\n\n"
            f"[{n} x {n}] float32 weight, 2:4 (50 %), times one input vector; median of {args.repeats} "
            f"interleaved repeats (5 calls each).\n\n"
            f"device: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
            f"date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; load average (1, 5, 15 min) "
            f"{', '.join(f'{v:.1f}' for v in load0)} before, {', '.join(f'{v:.1f}' for v in load1)} after; "
            f"torch.compile took {compile_s:.0f} s.\n\n" + "\n".join(rows) +
            f"\n\nThe faster compiled 2:4 product {verdict}: {best24:.2f}x against a byte bound of "
            f"{dense_bytes / nbytes['2:4, torch.compile']:.2f}x.\n")
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
