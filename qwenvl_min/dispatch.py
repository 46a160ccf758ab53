"""The one place that chooses between the Triton kernels and the torch path.

The model runs the kernels (`qwenvl_min.kernels`) when its tensors are on CUDA and triton imports.
The environment variable QWENVL_MIN_KERNELS overrides that: `1` forces the kernels (CPU tensors then need
TRITON_INTERPRET=1, set before triton is imported), `0` forces the torch path. Calling
`qwenvl_min.kernels.*` directly always runs Triton; only these dispatchers choose.
"""

from __future__ import annotations

import os
from functools import cache

import torch
from torch import Tensor

from . import rope
from .attention import segment_attention_torch
from .segments import Segments

KERNELS_ENV = "QWENVL_MIN_KERNELS"


@cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_kernels(device: torch.device) -> bool:
    """Whether the model's dispatch runs the Triton kernels for tensors on `device`."""
    forced = os.environ.get(KERNELS_ENV, "").strip()
    if forced not in ("", "0", "1"):
        raise ValueError(f"{KERNELS_ENV} must be 0, 1 or unset, got {forced!r}")
    if forced == "0":
        return False
    if forced == "1":
        if not _triton_available():
            raise RuntimeError(f"{KERNELS_ENV}=1 forces the Triton kernels but triton is not importable")
        return True
    return device.type == "cuda" and _triton_available()


def rotary(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate-half rotary of q and k by per-token half-width cos/sin tables (see `qwenvl_min.rope`)."""
    if use_kernels(q.device):
        from .kernels import apply_rotary

        return apply_rotary(q, k, cos, sin)
    return rope.apply_rotary(q, k, cos, sin)


def segment_attention(q: Tensor, k: Tensor, v: Tensor, segments: Segments, scale: float) -> Tensor:
    """Non-causal attention within segments; q, k, v (N, H, D) -> (N, H, D)."""
    if use_kernels(q.device):
        from .kernels import window_attention

        # Segments builds a valid cu_seqlens, so skip the launcher's checks (each costs a device sync)
        return window_attention(
            q, k, v, segments.cu_seqlens, max_seqlen=segments.max_len, scale=scale, validate=False
        )
    return segment_attention_torch(q, k, v, segments, scale)
