"""Triton kernels (installed as `qwenvl_min.kernels`).

Calling these functions always runs the Triton kernels: compiled for CUDA tensors, interpreted for CPU
tensors when TRITON_INTERPRET=1 was set before this package was imported. A model chooses between them
and the torch references once, when it is built (`QwenVL(config, kernels=...)`, see `qwenvl_min.model.dispatch`).

- `apply_rotary(q, k, cos, sin, *, inplace=False)`: rotate-half rotary (vision 2D-RoPE and M-RoPE);
  torch reference `qwenvl_min.model.rope.apply_rotary`. Ops: `torch.ops.qwenvl_min.rotary`, `.rotary_`.
- `window_attention(q, k, v, cu_seqlens, max_seqlen=None, scale=None, *, return_lse=False,
  validate=True)`: non-causal attention within the segments of `cu_seqlens` (windows and per-frame
  segments); torch reference `qwenvl_min.model.attention.segment_attention_torch`. Ops:
  `torch.ops.qwenvl_min.window_attention`, `.window_attention_backward`.

Both trace under torch.compile with no graph break (see each module's docstring); the kernel variants
the launchers, the ahead-of-time check and the benchmarks use are listed in `_registry.py`; docs/kernels.md
is the tour.
"""

from ._rotary import apply_rotary
from ._window_attention import window_attention

__all__ = ["apply_rotary", "window_attention"]
