"""Compile sparsekit's Triton kernels for a GPU target without a GPU and count their memory ops.

Usage::

    python benchmarks/ptx_vectorization.py                 # sm_90 (H100/H200), prints a JSON summary
    python benchmarks/ptx_vectorization.py --all-configs fp16 bf16 fp32   # + compile every autotune config

Triton's compiler runs on the CPU: this builds the PTX of ``prune_compress_kernel`` and
``sparse24_linear_kernel`` (fp16, integer arguments specialized as divisible by 16, as Triton
does at launch for shapes like 4096 x 4096) and counts the width of each global load/store
and ``cp.async`` copy. It is a check of the *code*, not a measurement: it says whether the
loads are vectorized, not how fast anything runs; and, with ``--all-configs``, whether every
autotune config compiles at all (the interpreter cannot tell). ``tests/test_kernels.py`` runs
it with ``--all-configs fp16``.

Must run without ``TRITON_INTERPRET`` (the interpreter replaces the compiler); the script
drops the variable before importing triton.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def memory_ops(ptx: str) -> dict[str, dict[str, int]]:
    """``{"ld": {op: count}, "st": {...}, "cp.async": {bytes: count}}`` from PTX text."""
    ld = Counter(re.findall(r"ld\.global(?:\.[a-z0-9]+)*", ptx))
    st = Counter(re.findall(r"st\.global(?:\.[a-z0-9]+)*", ptx))
    cp = Counter(int(m, 0) for m in re.findall(r"cp\.async\.c[ag]\.shared\.global[^\n]*?\],\s*((?:0x)?[0-9a-f]+)", ptx))
    return {"ld": dict(ld), "st": dict(st), "cp.async": {str(k): v for k, v in sorted(cp.items())}}


def _builder(capability: int):  # noqa: ANN202
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from sparsekit.kernels import _triton_kernels as tk

    target = GPUTarget("cuda", capability, 32)
    div16 = [["tt.divisibility", 16]]

    def build(fn, types, consts, aligned, **options):  # noqa: ANN001, ANN202
        sig = dict(zip(fn.arg_names, types))
        attrs = {(fn.arg_names.index(a),): div16 for a in aligned}
        return triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=attrs), target=target,
                              options=options).asm["ptx"]

    return build, tk


def compile_every_config(build, tk, dtypes: tuple[str, ...] = ("fp16",)) -> dict[str, str]:  # noqa: ANN001
    """``{config: "ok" | "ERROR ..."}``: every autotune config of ``sparse24_linear_kernel``,
    compiled as a launch on 4096-aligned shapes would specialize it (strides divisible by 16)."""
    out = {}
    for dt in dtypes:
        for c in tk.CONFIGS:
            kw = c.kwargs
            name = (f"{dt} M{kw['BLOCK_M']}N{kw['BLOCK_N']}K{kw['BLOCK_K']}S{kw['SPLIT_K']}"
                    f"w{c.num_warps}s{c.num_stages}")
            try:
                build(tk.sparse24_linear_kernel,
                      [f"*{dt}", f"*{dt}", "*u8", f"*{dt}", f"*{dt}", "*fp32"] + ["i32"] * 9 + ["constexpr"] * 7,
                      dict(HAS_BIAS=True, UPCAST=False, IEEE=dt == "fp32", **kw),
                      ["x_ptr", "v_ptr", "m_ptr", "b_ptr", "y_ptr", "ws_ptr", "K", "KV", "MB",
                       "stride_xm", "stride_vn", "stride_mn", "stride_ym"],
                      num_warps=c.num_warps, num_stages=c.num_stages)
                out[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - reported, the caller decides
                out[name] = f"ERROR {type(exc).__name__}: {str(exc)[:120]}"
    return out


def compile_kernels(capability: int = 90, all_configs: tuple[str, ...] = ()) -> dict[str, object]:
    build, tk = _builder(capability)

    prune = build(tk.prune_compress_kernel,
                  ["*fp16", "*fp16", "*u8"] + ["i32"] * 7 + ["constexpr"] * 3,
                  {"BLOCK_R": 4, "BLOCK_J": 64, "BLOCK": 256},
                  ["w_ptr", "val_ptr", "meta_ptr", "K", "KV", "MB", "stride_w", "stride_v", "stride_m"],
                  num_warps=4)
    out = {"prune_compress_kernel": memory_ops(prune)}
    for split in (1, 4):
        linear = build(tk.sparse24_linear_kernel,
                       ["*fp16", "*fp16", "*u8", "*fp16", "*fp16", "*fp32"] + ["i32"] * 9 + ["constexpr"] * 7,
                       dict(HAS_BIAS=False, UPCAST=False, IEEE=False, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128,
                            SPLIT_K=split),
                       ["x_ptr", "v_ptr", "m_ptr", "b_ptr", "y_ptr", "ws_ptr", "M", "N", "K", "KV", "MB",
                        "stride_xm", "stride_vn", "stride_mn", "stride_ym"], num_warps=4, num_stages=4)
        out[f"sparse24_linear_kernel SPLIT_K={split}"] = memory_ops(linear)
    if all_configs:
        out["configs"] = compile_every_config(build, tk, all_configs)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--capability", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    p.add_argument("--all-configs", nargs="*", default=None, metavar="DTYPE",
                   help="also compile every autotune config for these dtypes (default fp16)")
    args = p.parse_args()
    dtypes = () if args.all_configs is None else tuple(args.all_configs or ("fp16",))
    print(json.dumps(compile_kernels(args.capability, dtypes), indent=1))
