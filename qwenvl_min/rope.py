"""Rotary position embedding: frequency tables and the torch rotate-half application.

Both rotaries of the model are the same operation (DESIGN.md section 2): every token carries a
half-width angle vector a (D/2 values) and a head vector x (D values) is rotated pairwise,
    x'[i]       = x[i] * cos a[i] - x[i + D/2] * sin a[i]
    x'[i + D/2] = x[i + D/2] * cos a[i] + x[i] * sin a[i]        (i < D/2)
which is `x * cat(cos, cos) + rotate_half(x) * cat(sin, sin)` ("rotate-half", NeoX convention).
Only the angle table differs:
  * vision 2D-RoPE: a = [row * f | col * f] with f_i = theta^(-2i/(D/2)), i < D/4 (theta 1e4);
  * text M-RoPE:    a_j = p_axis(j) * f_j with f_j = theta^(-2j/D), j < D/2 (theta 1e6), where axis(j)
    is temporal / height / width by contiguous chunks of `mrope_section` (e.g. [16, 24, 24]).

Shape legend: N packed tokens, B batch, T sequence, H heads, D head_dim, R = D/2 (half width).
"""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor


def inverse_frequencies(dim: int, theta: float) -> Tensor:
    """theta^(-2i/dim) for i < dim/2, in fp32 (the exact expression the checkpoints were trained with)."""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim
    return 1.0 / (theta**exponents)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Torch reference of `qwenvl_min.kernels.apply_rotary` (out of place).

    q: (N, Hq, D) or (B, T, Hq, D); k the same with Hk heads; cos/sin: (N, R) or (B, T, R).
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
    cos_full = torch.cat((cos, cos), dim=-1).unsqueeze(-2)  # (..., 1, D): broadcast over heads
    sin_full = torch.cat((sin, sin), dim=-1).unsqueeze(-2)
    compute = torch.promote_types(q.dtype, cos.dtype)

    def rotate(x: Tensor) -> Tensor:
        xc = x.to(compute)
        return (xc * cos_full + rotate_half(xc) * sin_full).to(x.dtype)

    return rotate(q), rotate(k)


def vision_patch_coordinates(grid_thw: Tensor, merge_size: int) -> Tensor:
    """(row, col) patch coordinate of every pixel_values row, in input (merge-block) order: (N, 2) int64.

    Rows are ordered per temporal patch by 2x2 merge block, blocks row-major, (0,0),(0,1),(1,0),(1,1)
    inside a block; every temporal patch repeats the coordinates of the first (time is not rotated).
    """
    coords = []
    for t, h, w in grid_thw.tolist():
        rows = (
            torch.arange(h)
            .view(h // merge_size, merge_size, 1, 1)
            .expand(-1, -1, w // merge_size, merge_size)
        )
        cols = (
            torch.arange(w)
            .view(1, 1, w // merge_size, merge_size)
            .expand(h // merge_size, merge_size, -1, -1)
        )
        # (bh, mh, bw, mw) -> (bh, bw, mh, mw): merge-block order
        rows = rows.permute(0, 2, 1, 3).reshape(-1)
        cols = cols.permute(0, 2, 1, 3).reshape(-1)
        coords.append(torch.stack((rows, cols), dim=-1).repeat(t, 1))
    return torch.cat(coords)


def vision_rotary_table(
    grid_thw: Tensor, head_dim: int, theta: float, merge_size: int
) -> tuple[Tensor, Tensor]:
    """cos/sin (N, D/2) fp32 for the vision tower, in input row order."""
    inv_freq = inverse_frequencies(head_dim // 2, theta)  # (D/4,)
    coords = vision_patch_coordinates(grid_thw, merge_size).to(torch.float32)  # (N, 2)
    angles = (coords[:, :, None] * inv_freq).flatten(1)  # (N, 2, D/4) -> (N, D/2) = [row*f | col*f]
    return angles.cos(), angles.sin()


def mrope_table(
    positions: Tensor, head_dim: int, theta: float, mrope_section: tuple[int, ...], dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """cos/sin (B, T, D/2) for M-RoPE from 3-D positions (3, B, T); angles in fp32, cast to `dtype`."""
    if sum(mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    inv_freq, axis_of_freq = _mrope_constants(head_dim, theta, tuple(mrope_section), positions.device)
    # frequency j takes its position from the axis owning j's chunk ([T | H | W] contiguous chunks)
    per_freq = positions.permute(1, 2, 0).index_select(-1, axis_of_freq)  # (3, B, T) -> (B, T, R)
    angles = per_freq.to(torch.float32) * inv_freq  # (B, T, R), contiguous
    return angles.cos().to(dtype), angles.sin().to(dtype)


@cache
def _mrope_constants(
    head_dim: int, theta: float, mrope_section: tuple[int, ...], device: torch.device
) -> tuple[Tensor, Tensor]:
    """inv_freq (R,) fp32 and the axis (0 T, 1 H, 2 W) of every frequency (R,), made once per setting:
    they are constants, and rebuilding them every call was a visible share of a tiny model's decode step."""
    inv_freq = inverse_frequencies(head_dim, theta).to(device)
    axis_of_freq = torch.repeat_interleave(torch.arange(3), torch.tensor(mrope_section)).to(device)
    return inv_freq, axis_of_freq
