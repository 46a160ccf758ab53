"""What the converter refuses to write: weights the loader cannot use, casts that overflow, and NaN/inf.

- `check_loadable(dtypes)`: the model runs in one floating dtype, so every output tensor must share one
  of LOADABLE; float8, integer or mixed sources need `--dtype` (integers cannot be weights at all).
- `cast_checked(tensor, dtype)`: casting to a narrower float (`--dtype fp16`) must not turn a finite weight
  into inf; and a source weight must itself be finite (a NaN weight makes every logit NaN). Checked on
  the one tensor in memory, so it costs a pass over data that is being read anyway.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import CheckpointError, preview

LOADABLE = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_loadable(dtypes: dict[str, torch.dtype], src: Path) -> None:
    """dtypes: output key -> planned output dtype. Raises CheckpointError naming keys and the fix."""
    bad = {key: d for key, d in dtypes.items() if d not in LOADABLE}
    if bad:
        kinds = sorted({_name(d) for d in bad.values()})
        integer = any(not d.is_floating_point for d in bad.values())
        fix = (
            "integer tensors cannot be model weights: this is not a usable Qwen2-VL checkpoint"
            if integer
            else "pass --dtype bfloat16 (or float16 / float32) to cast them"
        )
        raise CheckpointError(
            f"{src}: tensors stored as {', '.join(kinds)} cannot be loaded (weights must be "
            f"{', '.join(_name(d) for d in LOADABLE)}): {preview(sorted(bad))}; {fix}"
        )
    counts = Counter(_name(d) for d in dtypes.values())
    if len(counts) > 1:
        common = counts.most_common(1)[0][0]
        raise CheckpointError(
            f"{src}: the weights mix dtypes {dict(counts)}, but the model runs in one; pass --dtype {common} "
            "to cast them all"
        )


def cast_checked(tensor: Tensor, dtype: torch.dtype, key: str, src: Path) -> Tensor:
    """tensor.to(dtype), refusing NaN/inf in the source and finite values that overflow the target."""
    if not tensor.is_floating_point():
        return tensor.to(dtype)
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        count = int((~finite).sum())
        raise CheckpointError(
            f"{key} in {src} holds {count} NaN/inf value(s): the checkpoint is corrupt or was saved after "
            "a diverged run; re-download or re-export it"
        )
    out = tensor.to(dtype)
    if out.dtype != tensor.dtype and not bool(torch.isfinite(out).all()):
        largest = float(tensor.abs().max())
        raise CheckpointError(
            f"{key}: values up to {largest:.4g} overflow {_name(dtype)} (largest finite "
            f"{torch.finfo(dtype).max:.4g}); choose --dtype bfloat16 or float32, which keep them"
        )
    return out
