"""Compile every registered kernel variant ahead of time for a CUDA target, on a machine without a GPU.

    python -m qwenvl_min.kernels._aot [rotary] [window_attention] [--arch 90]

The Triton interpreter runs kernels as numpy code, so it never sees what only the compiler checks
(non-constexpr globals, unsupported ops or layouts, shared memory beyond the card's limit). This builds
the same `Launch` descriptions the launchers run, for every variant in `_registry.VARIANTS` on its
stage's representative shapes (one per tile configuration family), and compiles each to a cubin,
printing one "ok sm_<arch> ..." line per launch. It must run with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import argparse

import triton
from triton.backends.compiler import GPUTarget

from . import _registry
from ._launch import Launch, is_interpreted, signature

# opt-in shared memory per block: sm_80 (A100) 163 KB, sm_90 (H100/H200) 227 KB
SHARED_LIMIT = {80: 166912, 90: 232448}


def compile_launch(launch: Launch, arch: int) -> int:
    """Compile one launch for sm_<arch>; return the shared memory it needs (bytes)."""
    types, constants = signature(launch)
    source = triton.compiler.ASTSource(fn=launch.kernel, signature=types, constexprs=constants)
    options = dict(num_warps=launch.num_warps, num_stages=launch.num_stages, **launch.options)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    return compiled.metadata.shared


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ops", nargs="*", help=f"any of {_registry.ops()} (default: all)")
    parser.add_argument("--arch", type=int, default=90, choices=sorted(SHARED_LIMIT))
    args = parser.parse_args(argv)
    unknown = sorted(set(args.ops) - set(_registry.ops()))
    if unknown:
        parser.error(f"unknown ops {unknown}; expected any of {_registry.ops()}")
    args.ops = args.ops or _registry.ops()
    for op in args.ops:
        for label, launch in _registry.aot_launches(op):
            if is_interpreted(launch.kernel):
                raise SystemExit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
            shared = compile_launch(launch, args.arch)
            if shared > SHARED_LIMIT[args.arch]:
                raise SystemExit(f"{op} {label}: {shared} B shared memory > sm_{args.arch} limit")
            print(f"ok sm_{args.arch} {op} {label}: {launch.kernel.__name__} {shared} B shared", flush=True)


if __name__ == "__main__":
    main()
