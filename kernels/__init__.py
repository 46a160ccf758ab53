"""Triton kernels (installed as `qwenvl_min.kernels`).

Calling these functions always runs the Triton kernels: compiled for CUDA tensors, interpreted for CPU
tensors when TRITON_INTERPRET=1 was set before this package was imported. A model chooses between them
and the torch references once, when it is built (`QwenVL(config, kernels=...)`, see `qwenvl_min.model.dispatch`).

- `apply_rotary(q, k, cos, sin, *, inplace=False)`: rotate-half rotary (vision 2D-RoPE and M-RoPE);
  torch reference `qwenvl_min.model.rope.apply_rotary`. Ops: `torch.ops.qwenvl_min.rotary`, `.rotary_`.
- `check_device(device)`: raises when the kernels cannot run on that device here (what a caller checks
  before building a model that will call them, e.g. the CLI under QWENVL_MIN_KERNELS=1).
- `window_attention(q, k, v, cu_seqlens, max_seqlen=None, scale=None, *, return_lse=False,
  validate=True)`: non-causal attention within the segments of `cu_seqlens` (windows and per-frame
  segments); torch reference `qwenvl_min.model.attention.segment_attention_torch`. Ops:
  `torch.ops.qwenvl_min.window_attention`, `.window_attention_backward`.

Both trace under torch.compile with no graph break (see each module's docstring); the kernel variants
the launchers, the ahead-of-time check and the benchmarks use are listed in `_registry.py`; docs/kernels.md
is the tour.
"""

import torch

from ._checks import check_runnable
from ._rotary import INTERPRETED, apply_rotary
from ._window_attention import window_attention

__all__ = ["apply_rotary", "check_device", "window_attention"]


def check_device(device: str | torch.device) -> None:
    """RuntimeError (one line saying what to do) when the kernels cannot run on `device` in this process:
    CUDA needs compiled kernels, the CPU the Triton interpreter (both fixed when this package is imported)."""
    check_runnable("the Triton kernels", torch.device(device), INTERPRETED)
