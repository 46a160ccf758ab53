"""Compile the kernels ahead of time for a CUDA target, on a machine without a GPU.

    python -m qwenvl_min.kernels._aot [rotary] [window_attention] [--arch 90]

The Triton interpreter runs kernels as numpy code, so it never sees what only the compiler checks
(non-constexpr globals, unsupported ops or layouts, shared memory beyond the card's limit). This builds
the same `Launch` descriptions the launchers run, for representative shapes of every tile
configuration family, and compiles each to a cubin. It must run with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import argparse
import importlib

import torch
import triton
from triton.backends.compiler import GPUTarget

from ._launch import Launch, is_interpreted, signature

# opt-in shared memory per block: sm_80 (A100) 163 KB, sm_90 (H100/H200) 227 KB
SHARED_LIMIT = {80: 166912, 90: 232448}


def _window_attention_launches() -> list[tuple[str, Launch]]:
    wa = importlib.import_module("qwenvl_min.kernels.window_attention")
    cases = [  # (dtype, head_dim, max_seqlen): windows and per-frame segments, D 80 and the widest D
        (torch.float16, 80, 64),
        (torch.bfloat16, 80, 5476),
        (torch.bfloat16, 256, 1024),
        (torch.float32, 64, 64),
    ]
    out = []
    for dtype, head_dim, max_seqlen in cases:
        x = torch.empty(8, 2, head_dim, dtype=dtype)
        stats = torch.empty(2, 8)
        cu = torch.tensor([0, 8], dtype=torch.int32)
        label = f"{dtype} D={head_dim} max_seqlen={max_seqlen}"
        out.append((f"fwd {label}", wa._fwd_launch(x, x, x, x, stats, cu, max_seqlen, 0.1)))
        dkdv, dq = wa._bwd_launches(x, x, x, x, stats, stats, x, x, x, cu, max_seqlen, 0.1)
        out += [(f"bwd dk/dv {label}", dkdv), (f"bwd dq {label}", dq)]
    return out


def _rotary_launches() -> list[tuple[str, Launch]]:
    ro = importlib.import_module("qwenvl_min.kernels.rotary")
    out = []
    for dtype, lead, head_dim, conjugate in (
        (torch.bfloat16, (8,), 80, False),
        (torch.float16, (2, 8), 128, True),
    ):
        q, k = torch.empty(*lead, 16, head_dim, dtype=dtype), torch.empty(*lead, 2, head_dim, dtype=dtype)
        table = torch.empty(*lead, head_dim // 2)
        label = f"{dtype} {tuple(q.shape)} conjugate={conjugate}"
        out.append((label, ro._rotary_launch(q, k, table, table, q, k, conjugate)))
    return out


def compile_launch(launch: Launch, arch: int) -> int:
    """Compile one launch for sm_<arch>; return the shared memory it needs (bytes)."""
    types, constants = signature(launch)
    source = triton.compiler.ASTSource(fn=launch.kernel, signature=types, constexprs=constants)
    options = dict(num_warps=launch.num_warps, num_stages=launch.num_stages)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    return compiled.metadata.shared


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ops", nargs="*", default=["rotary", "window_attention"])
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SHARED_LIMIT))
    args = parser.parse_args(argv)
    builders = {"rotary": _rotary_launches, "window_attention": _window_attention_launches}
    for op in args.ops:
        for label, launch in builders[op]():
            if is_interpreted(launch.kernel):
                raise SystemExit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
            shared = compile_launch(launch, args.arch)
            if shared > SHARED_LIMIT[args.arch]:
                raise SystemExit(f"{op} {label}: {shared} B shared memory > sm_{args.arch} limit")
            print(f"ok sm_{args.arch} {op} {label}: {launch.kernel.__name__} {shared} B shared", flush=True)


if __name__ == "__main__":
    main()
