"""Vision geometry: where each `pixel_values` row, merged token and attention window sits in an image.

This is the one place that knows the row order; the processor (patchify), the overlay (un-patchify),
the vision rotary (patch coordinates), the attention windows and the 3-D text positions (merged-token
coordinates) all call it.

Row order. An item (image or video) with grid (t, h, w) in patches of P x P pixels, merge size m:
for each temporal patch, the m x m merge blocks row-major over the (h/m, w/m) block grid, and inside a
block its m*m patches row-major. In einops terms the rows are `t by bx iy ix`, where the patch at grid
row r = by*m + iy and column c = bx*m + ix. Merged token k of the item is rows 4k..4k+3 (m = 2), so
merged tokens are simply `t by bx` row-major.

Windows (Qwen2.5-VL). Each temporal patch's merged grid (h/m, w/m) is tiled from the top-left by
windows of `window_merged` x `window_merged` merged tokens; edge windows are smaller. A window is a set
of whole merge units (the m*m rows of one merged token), listed row-major inside the window, windows
row-major per frame, frames and items outer: the order transformers uses.

Shapes (letters as in docs/design.md, "Shape legend"): N, M (= merge units), W.
"""

from __future__ import annotations

import einops
import numpy as np
import torch
from torch import Tensor

ROW_ORDER = "t by bx iy ix"  # the order of pixel_values rows (see the module docstring)
PIXELS = "(t tp) (by iy py) (bx ix px) c"  # frames (T, H, W, C) as patches of tp x P x P pixels
ROW_VALUES = "c tp py px"  # the values of one row: channel, time, patch y, patch x (1176 = 3*2*14*14)


def frames_to_rows(frames: np.ndarray, patch: int, temporal_patch: int, merge: int) -> np.ndarray:
    """(T, H, W, C) frames -> a view (t, by, bx, iy, ix, C, tp, P, P): rows in row order, values last.

    T must be a multiple of `temporal_patch` and H, W multiples of patch * merge. No copy is made (one
    reshape and one transpose), so the caller decides where the gather into contiguous rows happens.
    """
    pattern = f"{PIXELS} -> {ROW_ORDER} {ROW_VALUES}"
    return einops.rearrange(frames, pattern, tp=temporal_patch, iy=merge, ix=merge, py=patch, px=patch)


def still_to_rows(frame: np.ndarray, patch: int, merge: int) -> np.ndarray:
    """(H, W, C) one still frame -> a view (by, bx, iy, ix, C, P, P): `frames_to_rows` without time."""
    pattern = "(by iy py) (bx ix px) c -> by bx iy ix c py px"
    return einops.rearrange(frame, pattern, iy=merge, ix=merge, py=patch, px=patch)


def rows_to_frames(
    rows: np.ndarray, grid_thw: tuple[int, int, int], patch: int, temporal_patch: int, merge: int
) -> np.ndarray:
    """Inverse of `frames_to_rows`: rows (t*h*w, C*tp*P*P) of one item -> frames (t*tp, h*P, w*P, C)."""
    t, h, w = grid_thw
    pattern = f"({ROW_ORDER}) ({ROW_VALUES}) -> {PIXELS}"
    sizes = dict(t=t, by=h // merge, bx=w // merge, iy=merge, ix=merge, tp=temporal_patch, py=patch, px=patch)
    return einops.rearrange(rows, pattern, **sizes)


def rows_to_grid(values: Tensor, grid_thw: tuple[int, int, int], merge: int) -> Tensor:
    """Per-row values of one item in image order: (t*h*w, ...) patch rows -> (t, h, w, ...)."""
    t, h, w = grid_thw
    pattern = f"({ROW_ORDER}) ... -> t (by iy) (bx ix) ..."
    return einops.rearrange(values, pattern, t=t, by=h // merge, bx=w // merge, iy=merge, ix=merge)


def merged_to_grid(values: Tensor, grid_thw: tuple[int, int, int], merge: int) -> Tensor:
    """Per-merged-token values of one item in image order: (t*h*w/m², ...) -> (t, h/m, w/m, ...)."""
    t, h, w = grid_thw
    return einops.rearrange(values, "(t by bx) ... -> t by bx ...", t=t, by=h // merge, bx=w // merge)


def patch_coordinates(grid_thw: Tensor, merge: int) -> Tensor:
    """(N, 2) int64 (row, col) patch coordinate of every pixel_values row of all items, in row order.

    Every temporal patch repeats the coordinates of the first (the vision rotary ignores time).
    """
    coords = []
    for t, h, w in grid_thw.tolist():
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")  # (h, w) each
        grid = torch.stack((rows, cols))  # (2, h, w)
        one = einops.rearrange(grid, "k (by iy) (bx ix) -> (by bx iy ix) k", iy=merge, ix=merge)
        coords.append(one.repeat(t, 1))
    return torch.cat(coords)


def learned_grid_taps(grid_thw: Tensor, side: int, merge: int) -> tuple[Tensor, Tensor]:
    """Where every pixel_values row reads a learned side x side position grid (Qwen3-VL's `pos_embed`):
    the 4 table rows (N, 4) int64 and their bilinear weights (N, 4) fp32, in row order.

    The grid is resampled to each item's (h, w) patches as `F.interpolate(mode="bilinear",
    align_corners=True)` would: patch row r reads source row s = r (side - 1) / max(h - 1, 1) between
    floor(s) and floor(s) + 1 (clamped to the grid) with weights 1 - |s - floor(s) - o| for o = 0, 1, and
    columns likewise; a row's 4 taps are the outer product, table row = grid_row * side + grid_col. Every
    step is the fp32 arithmetic transformers 5.24 uses (`vision_utils`), so the weights are bit-identical;
    every temporal patch of an item reads the same taps.
    """
    coords = patch_coordinates(grid_thw, merge)  # (N, 2) row, col
    counts = grid_thw.prod(dim=1)
    sizes = torch.repeat_interleave(grid_thw[:, 1:], counts, dim=0)  # (N, 2) h, w of each row's item
    offsets = torch.arange(2)  # floor, floor + 1
    taps, weights = [], []
    for axis in (0, 1):
        source = coords[:, axis].to(torch.float32) * (side - 1) / torch.clamp(sizes[:, axis] - 1, min=1)
        floor = torch.floor(source)
        taps.append((floor.long()[:, None] + offsets).clamp(0, side - 1))  # (N, 2)
        distance = (source[:, None] - floor[:, None] - offsets).abs()
        weights.append((1 - distance).clamp(min=0))  # (N, 2) fp32
    index = (taps[0][:, :, None] * side + taps[1][:, None, :]).reshape(-1, 4)  # (N, 2, 2) -> (N, 4)
    weight = (weights[0][:, :, None] * weights[1][:, None, :]).reshape(-1, 4)
    return index, weight


def merged_coordinates(t: int, h_merged: int, w_merged: int) -> Tensor:
    """(M, 3) int64 (frame, row, col) of every merged token of one item, in feature order (`t by bx`)."""
    grid = torch.meshgrid(torch.arange(t), torch.arange(h_merged), torch.arange(w_merged), indexing="ij")
    return torch.stack(grid, dim=-1).reshape(-1, 3)


def frame_lengths(grid_thw: Tensor) -> list[int]:
    """Rows per temporal patch of every item, in order: h*w repeated t times (full-attention segments)."""
    return [h * w for t, h, w in grid_thw.tolist() for _ in range(t)]


def window_unit_order(grid_thw: Tensor, window_merged: int, merge: int) -> tuple[Tensor, list[int]]:
    """Window order of the merge units and the window sizes in rows.

    Returns `unit_index` (M,) int64 with `units_in_window_order = units_in_row_order[unit_index]` and the
    row count of every window in that order. Transformers pads a side that is an exact multiple of the
    window with empty windows; those hold no tokens and are simply absent here.
    """
    unit_index, sizes, offset = [], [], 0
    win = window_merged
    for t, h, w in grid_thw.tolist():
        hm, wm = h // merge, w // merge
        nwh, nww = -(-hm // win), -(-wm // win)  # windows per column / row (ceil)
        units = torch.full((t, nwh * win, nww * win), -1, dtype=torch.int64)
        units[:, :hm, :wm] = torch.arange(t * hm * wm).view(t, hm, wm)  # pad bottom/right with -1
        # (t, nwh*win, nww*win) -> (t*nwh*nww, win*win): one row per window, tokens row-major inside
        units = einops.rearrange(units, "t (wy iy) (wx ix) -> (t wy wx) (iy ix)", iy=win, ix=win)
        valid = units >= 0
        unit_index.append(units[valid] + offset)
        sizes.extend((valid.sum(1) * merge**2).tolist())
        offset += t * hm * wm
    return torch.cat(unit_index), sizes


def window_row_order(grid_thw: Tensor, window_merged: int, merge: int) -> tuple[Tensor, list[int]]:
    """(N,) int64 pixel_values row of every position in window order, and the window sizes in rows."""
    unit_index, sizes = window_unit_order(grid_thw, window_merged, merge)
    unit = merge**2
    order = (unit_index[:, None] * unit + torch.arange(unit)).reshape(-1)  # (M, m^2) -> (N,)
    return order, sizes
