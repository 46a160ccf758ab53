"""Checks on user-supplied numbers, tensors and devices: every bad value is a `ValueError` that says what
is wrong and what to pass instead, never a NaN that travels on into positions or logits.

One mechanism per kind of value:
- `finite_number` / `positive_int`: scalars from a CLI, a config or an API call (bool is never a number,
  NaN/inf never finite, 2.5 never a count);
- `check_finite`: a float tensor must hold no NaN/inf (one reduction, one host sync);
- `check_sampling`: the sampling arguments of generation, all at once;
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor


def finite_number(
    name: str, value: object, *, positive: bool = False, minimum: float | None = None, hint: str = ""
) -> float:
    """`value` as a float if it is a real, finite number (> 0 with positive, >= minimum with minimum)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}{_hint(hint)}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {number}{_hint(hint)}")
    if positive and number <= 0:
        raise ValueError(f"{name} must be positive, got {number:g}{_hint(hint)}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {number:g}{_hint(hint)}")
    return number


def positive_int(name: str, value: object, *, minimum: int = 1, hint: str = "") -> int:
    """`value` as an int if it is an integer >= minimum (an integral float such as 4.0 is accepted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be an integer, got {value!r}{_hint(hint)}")
    if isinstance(value, numbers.Integral):
        number = int(value)
    elif math.isfinite(float(value)) and float(value).is_integer():
        number = int(value)
    else:
        raise ValueError(f"{name} must be a whole number, got {value!r}{_hint(hint)}")
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}{_hint(hint)}")
    return number


def check_finite(name: str, tensor: Tensor | None, hint: str = "") -> None:
    """Raise if a floating tensor holds NaN or inf (integer tensors are always finite)."""
    if tensor is None or not tensor.is_floating_point() or tensor.numel() == 0:
        return
    if tensor.is_meta:
        raise ValueError(f"{name} is a meta tensor (no data); pass a tensor on cpu or cuda")
    low, high = torch.aminmax(tensor)  # one pass, no mask: NaN propagates, an inf is an extreme (20x faster)
    if bool(torch.isfinite(low) & torch.isfinite(high)):
        return
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        count = int(bad.sum())
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{name} holds {count} NaN/inf value(s) (first at index {where}); every value must be finite"
            f"{_hint(hint)}"
        )


def check_seconds_per_grid(values: Tensor | list[float]) -> None:
    """Qwen2.5-VL `second_per_grid_ts`: one finite, positive number of seconds per video."""
    tensor = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    bad = [float(v) for v in tensor.tolist() if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(
            f"second_per_grid_ts must be finite and positive (seconds per temporal patch), got {bad}; "
            "it is temporal_patch_size / fps of the sampled frames"
        )


def check_sampling(
    max_new_tokens: object,
    temperature: object,
    top_k: object | None,
    top_p: object | None,
    seed: object | None = None,
) -> None:
    """The sampling arguments of `generate` / `stream` / `qwenvl-min run`: finite, whole where counts."""
    positive_int("max_new_tokens", max_new_tokens)
    temp = finite_number("temperature", temperature, minimum=0.0, hint="0 is greedy")
    if top_k is not None:
        positive_int("top_k", top_k)
    if top_p is not None:
        p = finite_number("top_p", top_p, positive=True)
        if p > 1:
            raise ValueError(f"top_p must be in (0, 1], got {p:g}")
    if temp == 0 and (top_k is not None or top_p is not None):
        raise ValueError("top_k / top_p only apply when sampling: set temperature > 0 (0 means greedy)")
    if seed is not None:
        positive_int("seed", seed, minimum=0)


def guard_finite_hidden_states(model: torch.nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Make every forward of `model` raise if the decoder's final hidden states hold NaN/inf, instead of
    greedy decoding silently answering token 0 (NaN logits argmax to 0). One reduction per step."""

    def hook(module: torch.nn.Module, inputs: object, output: Tensor) -> None:
        check_finite(
            "the decoder's final hidden states",
            output,
            "NaN weights or inputs: check the checkpoint with --verify, or use --dtype float32",
        )

    return model.text.norm.register_forward_hook(hook)


def _hint(hint: str) -> str:
    return f" ({hint})" if hint else ""
