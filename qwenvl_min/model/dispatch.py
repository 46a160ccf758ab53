"""Kernel or torch path: the default attention and rotary functions a model's modules are built with.

A model is built with `kernels=` one of
  * "torch":  the torch implementations (`qwenvl_min.model.attention`, `qwenvl_min.model.rope`) everywhere;
  * "triton": the Triton kernels (`qwenvl_min.kernels`) everywhere; CPU tensors then need
              TRITON_INTERPRET=1 set before triton is imported (slow: for tests);
  * "auto":   the kernels for CUDA tensors when triton imports, the torch path otherwise, decided per
              call from the tensors' device (a static property, so torch.compile guards on it once).
None takes the environment variable QWENVL_MIN_KERNELS (0 torch, 1 triton, unset auto), read once when
the model is built; the variable is a default only and never consulted during a forward.

Both paths follow the same contracts (`qwenvl_min.model.attention`) and numerics: the rotary runs in
promote_types(q.dtype, table dtype) with each product and the sum rounded to it (the text path's tables
come in the activation dtype, the vision tower's in fp32), attention accumulates in fp32.
Calling `qwenvl_min.kernels.*` directly always runs Triton.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache

from torch import Tensor

from . import rope
from .attention import VisionAttend, segment_attention_torch
from .segments import Segments

KERNELS_ENV = "QWENVL_MIN_KERNELS"
KERNEL_CHOICES = ("auto", "torch", "triton")
Rotary = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


@cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_kernels(choice: str | None) -> str:
    """The kernel choice for a new model: `choice`, or the environment default when None."""
    if choice is None:
        forced = os.environ.get(KERNELS_ENV, "").strip()
        if forced not in ("", "0", "1"):
            raise ValueError(f"{KERNELS_ENV} must be 0, 1 or unset, got {forced!r}")
        choice = {"": "auto", "0": "torch", "1": "triton"}[forced]
    if choice not in KERNEL_CHOICES:
        raise ValueError(
            f"kernels must be one of {KERNEL_CHOICES} (or None for the environment default), got {choice!r}"
        )
    if choice == "triton" and not triton_available():
        raise RuntimeError(
            "kernels='triton' needs the Triton kernels but triton is not importable; use 'torch'"
        )
    return choice


def _kernel_wanted(choice: str, x: Tensor) -> bool:
    return choice == "triton" or (choice == "auto" and x.is_cuda and triton_available())


def segment_attention_triton(q: Tensor, k: Tensor, v: Tensor, segments: Segments, scale: float) -> Tensor:
    """The varlen Triton kernel under the vision attend contract (q, k, v packed by segments)."""
    from ..kernels import window_attention

    # Segments builds a valid cu_seqlens on the host, so skip the launcher's checks (a device sync each)
    return window_attention(
        q, k, v, segments.cu_seqlens, max_seqlen=segments.max_len, scale=scale, validate=False
    )


def rotary_triton(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    from ..kernels import apply_rotary

    return apply_rotary(q, k, cos, sin)


def segment_attention_auto(q: Tensor, k: Tensor, v: Tensor, segments: Segments, scale: float) -> Tensor:
    path = segment_attention_triton if _kernel_wanted("auto", q) else segment_attention_torch
    return path(q, k, v, segments, scale)


def rotary_auto(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    path = rotary_triton if _kernel_wanted("auto", q) else rope.apply_rotary
    return path(q, k, cos, sin)


_VISION_ATTEND = {
    "torch": segment_attention_torch,
    "triton": segment_attention_triton,
    "auto": segment_attention_auto,
}
_ROTARY = {"torch": rope.apply_rotary, "triton": rotary_triton, "auto": rotary_auto}


def vision_attend(choice: str) -> VisionAttend:
    """The default vision attention function for a (resolved) kernel choice."""
    return _VISION_ATTEND[choice]


def rotary(choice: str) -> Rotary:
    """The rotary function for a (resolved) kernel choice (torch reference: `qwenvl_min.model.rope.apply_rotary`)."""
    return _ROTARY[choice]
