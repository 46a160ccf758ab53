"""Rotary position embedding: frequency tables and the torch rotate-half application.

Both rotaries of the model are the same operation: every token carries a
half-width angle vector a (Dh/2 values) and a head vector x (Dh values) is rotated pairwise,
    x'[i]       = x[i] * cos a[i] - x[i + Dh/2] * sin a[i]
    x'[i + Dh/2] = x[i + Dh/2] * cos a[i] + x[i] * sin a[i]        (i < Dh/2)
which is `x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)` ("rotate-half", NeoX convention).
Only the angle table differs:
  * vision 2D-RoPE: a = [row * f | col * f] with f_i = theta^(-2i/(Dh/2)), i < Dh/4 (theta 1e4);
  * text M-RoPE:    a_j = p_axis(j) * f_j with f_j = theta^(-2j/Dh), j < Dh/2 (theta 1e6), where axis(j)
    is temporal / height / width by contiguous chunks of `mrope_section` (e.g. [16, 24, 24]) in the
    released models; other axis assignments are one function each in MROPE_AXES.

Shapes (letters as in docs/design.md, "Shape legend"): N, B, T, H, Dh, R.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .geometry import patch_coordinates

if TYPE_CHECKING:
    from .config import TextConfig


def inverse_frequencies(dim: int, theta: float) -> Tensor:
    """theta^(-2i/dim) for i < dim/2, in fp32 (the exact expression the checkpoints were trained with)."""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim
    return 1.0 / (theta**exponents)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Torch reference of `qwenvl_min.kernels.apply_rotary` (out of place).

    q: (N, Hq, Dh) or (B, T, Hq, Dh); k the same with Hk heads; cos/sin: (N, R) or (B, T, R).
    The math runs in the promoted dtype of q and the tables, then casts back to q's dtype. Passing fp32
    tables therefore gives fp32 math (what the vision tower does), passing tables already cast to the
    activation dtype gives activation-dtype math (what the text model does); both match transformers
    bit for bit.
    """
    if cos.shape[-1] * 2 != q.shape[-1] or sin.shape != cos.shape:
        raise ValueError(
            f"rotary tables must be half width: q head_dim {q.shape[-1]}, cos {tuple(cos.shape)}, "
            f"sin {tuple(sin.shape)}"
        )
    compute = torch.promote_types(q.dtype, cos.dtype)
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        # autograd needs the differentiable form; under torch.compile inductor fuses it into one kernel
        # anyway (and dynamo refuses `out=` into the strided halves that the inference form writes)
        return _rotate_half_form(q, cos, sin, compute), _rotate_half_form(k, cos, sin, compute)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # (..., 1, R): broadcast over heads
    return _rotate_by_halves(q, cos, sin, compute), _rotate_by_halves(k, cos, sin, compute)


def _rotate_half_form(x: Tensor, cos: Tensor, sin: Tensor, compute: torch.dtype) -> Tensor:
    """x * cat(cos, cos) + rotate_half(x) * cat(sin, sin), literally (differentiable)."""
    cos_full = torch.cat((cos, cos), dim=-1).unsqueeze(-2)  # (..., 1, Dh): broadcast over heads
    sin_full = torch.cat((sin, sin), dim=-1).unsqueeze(-2)
    xc = x.to(compute)
    return (xc * cos_full + rotate_half(xc) * sin_full).to(x.dtype)


def _rotate_by_halves(x: Tensor, cos: Tensor, sin: Tensor, compute: torch.dtype) -> Tensor:
    """The same values as `_rotate_half_form` with one output buffer and one half-width temporary instead of
    five full-width temporaries (inference only: `out=` does not record gradients).

    Bit for bit: rotate_half's first half is -x2, and x1*c + (-x2)*s == x1*c - x2*s in IEEE arithmetic
    (negation is exact, a + (-b) == a - b), so each half takes the same two products and one sum, rounded
    in the same dtype, as the literal formula.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].to(compute), x[..., half:].to(compute)
    out = torch.empty(x.shape, dtype=compute, device=x.device)
    first, second = out[..., :half], out[..., half:]
    product = torch.mul(x2, sin)
    torch.mul(x1, cos, out=first).sub_(product)  # x1*c - x2*s
    torch.mul(x1, sin, out=product)
    torch.mul(x2, cos, out=second).add_(product)  # x2*c + x1*s
    return out.to(x.dtype)


def vision_rotary_table(
    grid_thw: Tensor, head_dim: int, theta: float, merge_size: int
) -> tuple[Tensor, Tensor]:
    """cos/sin (N, Dh/2) fp32 for the vision tower, in pixel_values row order."""
    inv_freq = inverse_frequencies(head_dim // 2, theta)  # (Dh/4,)
    coords = patch_coordinates(grid_thw, merge_size).to(torch.float32)  # (N, 2) row, col
    angles = (coords[:, :, None] * inv_freq).flatten(1)  # (N, 2, Dh/4) -> (N, Dh/2) = [row*f | col*f]
    return angles.cos(), angles.sin()


# ---- M-RoPE axes: which position axis (0 time, 1 height, 2 width) drives each frequency ------------------
MropeAxes = Callable[[tuple[int, ...]], Tensor]


def sectioned_axes(mrope_section: tuple[int, ...]) -> Tensor:
    """Qwen2-VL / Qwen2.5-VL: contiguous chunks, frequency j < s0 uses time, then s1 height, s2 width."""
    return torch.repeat_interleave(torch.arange(3), torch.tensor(mrope_section))


def interleaved_axes(mrope_section: tuple[int, ...]) -> Tensor:
    """Interleaved M-RoPE (as in Qwen3-VL): frequency j uses axis j mod 3, so every axis spans low and
    high frequencies; a section size only bounds how many frequencies an axis may take (the rest of an
    exhausted axis's slots fall back to time)."""
    rotary = sum(mrope_section)
    axes = torch.arange(rotary) % 3
    for axis in (1, 2):
        slots = (axes == axis).nonzero().squeeze(1)
        axes[slots[mrope_section[axis] :]] = 0
    return axes


MROPE_AXES: dict[str, MropeAxes] = {"sections": sectioned_axes, "interleaved": interleaved_axes}


def mrope_table(positions: Tensor, config: TextConfig, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin (B, T, Dh/2) for M-RoPE from 3-Dh positions (3, B, T); angles in fp32, cast to `dtype`.

    angle[b, t, j] = positions[axis(j), b, t] * inv_freq[j], where axis(j) comes from the config's
    `mrope_axes` (see MROPE_AXES)."""
    if torch.compiler.is_compiling():
        # traced, the axis assignments' index arithmetic has data-dependent sizes: the graph takes the values as
        # constants instead (computed once, while tracing). They go through one string: when a second model
        # with another head_dim is traced in the process, dynamo turns the changed ints into symbols, which a
        # constant function cannot take; str() of a symbol is its value (dynamo specializes it)
        key = (
            f"{config.head_dim}|{float(config.rope_theta)!r}|{','.join(str(s) for s in config.mrope_section)}"
        )
        freq_values, axis_values = _mrope_constant_values(f"{key}|{config.mrope_axes}")
        inv_freq = torch.tensor(freq_values, dtype=torch.float32, device=positions.device)
        axis_of_freq = torch.tensor(axis_values, dtype=torch.int64, device=positions.device)
    else:
        setting = (config.head_dim, config.rope_theta, config.mrope_section, config.mrope_axes)
        inv_freq, axis_of_freq = _mrope_constants(*setting, positions.device)
    per_freq = positions.permute(1, 2, 0).index_select(-1, axis_of_freq)  # (3, B, T) -> (B, T, R)
    angles = per_freq.to(torch.float32) * inv_freq  # (B, T, R), contiguous
    return angles.cos().to(dtype), angles.sin().to(dtype)


@cache
def _mrope_constants(
    head_dim: int, theta: float, mrope_section: tuple[int, ...], axes: str, device: torch.device
) -> tuple[Tensor, Tensor]:
    """inv_freq (R,) fp32 and the axis of every frequency (R,), made once per setting: they are
    constants, and rebuilding them every call was a visible share of a tiny model's decode step."""
    if sum(mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    inv_freq = inverse_frequencies(head_dim, theta).to(device)
    axis_of_freq = MROPE_AXES[axes](mrope_section).to(device)
    if axis_of_freq.shape != (head_dim // 2,):
        raise ValueError(f"M-RoPE axes {axes!r} gave {tuple(axis_of_freq.shape)} axes, need {head_dim // 2}")
    return inv_freq, axis_of_freq


@torch.compiler.assume_constant_result
def _mrope_constant_values(key: str) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """`_mrope_constants` as Python numbers (fp32 values are exact as Python floats), for the setting
    "head_dim|theta|section,section,section|axes" (`TextConfig.rope_key`)."""
    head_dim, theta, section, axes = key.split("|")
    setting = (int(head_dim), float(theta), tuple(int(s) for s in section.split(",")), axes)
    inv_freq, axis_of_freq = _mrope_constants(*setting, torch.device("cpu"))
    return tuple(inv_freq.tolist()), tuple(axis_of_freq.tolist())
