"""A kernel launch as plain data, so the same description is run, inspected in tests, and compiled ahead
of time for a GPU target (the CPU-only CI compiles every registered launch for sm_90 to catch errors the
Triton interpreter cannot see: unsupported ops, shared-memory overflow)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Launch:
    kernel: Any  # a @triton.jit function (or its interpreted stand-in)
    grid: tuple[int, ...]
    args: dict[str, Any]  # runtime arguments and constexprs, by parameter name
    num_warps: int = 4
    num_stages: int = 2
    # compiler options beyond warps/stages, e.g. enable_fp_fusion=False (no a*b+c -> fma contraction)
    options: dict[str, Any] = field(default_factory=dict)

    def run(self) -> None:
        if all(g > 0 for g in self.grid):
            self.kernel[self.grid](
                **self.args, num_warps=self.num_warps, num_stages=self.num_stages, **self.options
            )


# Triton's pointer type for every tensor dtype a launch may pass (int64: e.g. token indices or 64-bit
# cumulative lengths; bool tensors are byte-addressed i1 pointers)
POINTER_TYPES = {
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.float32: "*fp32",
    torch.float64: "*fp64",
    torch.int8: "*i8",
    torch.int16: "*i16",
    torch.int32: "*i32",
    torch.int64: "*i64",
    torch.uint8: "*u8",
    torch.bool: "*i1",
}


def signature(launch: Launch) -> tuple[dict[str, str], dict[str, Any]]:
    """Triton signature and constexpr values of a launch, for `triton.compile(ASTSource(...))`."""
    kernel = launch.kernel  # a compiled-mode JITFunction: it knows which parameters are constexpr
    constexprs = {kernel.arg_names[i] for i in kernel.constexprs}
    types, constants = {}, {}
    for name, value in launch.args.items():
        if name in constexprs:
            types[name], constants[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            if value.dtype not in POINTER_TYPES:
                raise TypeError(
                    f"launch argument {name} of {kernel.__name__} is a {value.dtype} tensor, which has no "
                    f"Triton pointer type here; add it to POINTER_TYPES in {__name__}"
                )
            types[name] = POINTER_TYPES[value.dtype]
        elif isinstance(value, bool):
            types[name] = "i1"
        elif isinstance(value, int):
            types[name] = "i64" if abs(value) >= 2**31 else "i32"
        elif isinstance(value, float):
            types[name] = "fp32"
        else:
            raise TypeError(f"launch argument {name}={value!r} of {kernel.__name__} has no Triton type")
    return types, constants


def is_interpreted(kernel: Any) -> bool:
    """Whether `kernel` was defined under TRITON_INTERPRET=1 (the choice is made at definition time)."""
    return type(kernel).__name__ == "InterpretedFunction"
