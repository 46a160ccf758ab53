"""Argument checks shared by the host launchers: every failure names what is wrong and what was expected.

The launchers validate before launching because a Triton kernel given a bad stride or a CPU pointer
fails far from the cause (a segfault, an illegal memory access, or silently wrong numbers).
"""

from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_float(op: str, **tensors: Tensor) -> None:
    """All tensors are fp16/bf16/fp32 and share one dtype."""
    dtypes = {name: t.dtype for name, t in tensors.items()}
    for name, dtype in dtypes.items():
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} has dtype {dtype}; expected one of float16, bfloat16, float32")
    if len(set(dtypes.values())) > 1:
        raise TypeError(f"{op}: dtypes differ ({_fmt(dtypes)}); expected one dtype for all of them")


def check_same_device(op: str, **tensors: Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"{op}: tensors are on different devices ({_fmt(devices)}); expected one device")


def check_last_dim_contiguous(op: str, **tensors: Tensor) -> None:
    """Kernels address rows through strides but read each head vector as one contiguous run."""
    for name, t in tensors.items():
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(
                f"{op}: {name} has stride {t.stride(-1)} in its last dimension (strides "
                f"{tuple(t.stride())}); expected a contiguous last dimension (stride 1): call .contiguous() first"
            )


def check_runnable(op: str, device: torch.device, interpreted: bool) -> None:
    """CUDA tensors need compiled kernels; CPU tensors need the Triton interpreter.

    TRITON_INTERPRET=1 must be set before `qwenvl_min.kernels` is imported: the choice between compiled
    and interpreted kernels is made when the @triton.jit functions are defined.
    """
    if device.type == "cuda" and interpreted:
        raise RuntimeError(f"{op}: CUDA tensors, but the kernels were defined under TRITON_INTERPRET=1")
    if device.type == "cpu" and not interpreted:
        raise RuntimeError(
            f"{op}: CPU tensors need the Triton interpreter; set TRITON_INTERPRET=1 before importing "
            "qwenvl_min.kernels (or move the tensors to CUDA)"
        )
    if device.type not in ("cuda", "cpu"):
        raise RuntimeError(f"{op}: tensors on {device}; expected cuda (or cpu under TRITON_INTERPRET=1)")


def _fmt(values: dict[str, object]) -> str:
    return ", ".join(f"{name}={value}" for name, value in values.items())
