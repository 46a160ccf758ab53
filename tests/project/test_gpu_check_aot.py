"""Every Triton kernel variant the GPU check launches is one the ahead-of-time check compiles for sm_90
(`python -m qwenvl_min.kernels._aot`, run by test_kernel_rotary / test_kernel_window_attention's
`test_compiles_for_sm90`). A compiled variant is what the Triton compiler sees of a launch: the kernel,
its constexpr values, its argument types (pointer dtypes, i32/i64 ints), warps, stages and options.
The check's launches are built from the steps' own case definitions (benchmarks/gpu_check_launches.py),
so a new case or shape family in a step fails here until `_aot` covers it."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import triton

from qwenvl_min.kernels import _registry
from qwenvl_min.kernels._launch import Launch, is_interpreted, signature

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_check_launches  # noqa: E402


def compiled_variant(launch: Launch) -> tuple:
    kernel = launch.kernel
    # an interpreted kernel does not know its constexprs: a compile-mode stand-in, as `_aot` builds it
    jit = triton.JITFunction(kernel.fn) if is_interpreted(kernel) else kernel
    types, constants = signature(dataclasses.replace(launch, kernel=jit))
    return (
        jit.fn.__name__,
        tuple(sorted(types.items())),
        tuple(sorted((name, str(value)) for name, value in constants.items())),
        launch.num_warps,
        launch.num_stages,
        tuple(sorted(launch.options.items())),
    )


def test_every_launch_of_the_gpu_check_is_compiled_ahead_of_time():
    compiled = {
        compiled_variant(launch) for op in _registry.ops() for _, launch in _registry.aot_launches(op)
    }
    planned = gpu_check_launches.planned_launches()
    missing = [label for label, launch in planned if compiled_variant(launch) not in compiled]
    assert not missing, f"launches of the GPU check that _aot does not compile: {missing}"
    # every stage the check uses is planned (the plan is not empty by accident)
    kernels = {launch.kernel.fn.__name__ for _, launch in planned}
    assert kernels == {"rotary_kernel", "fwd_kernel", "bwd_dkdv_kernel", "bwd_dq_kernel"}, kernels
