"""Attention segments of the vision tower: per-frame segments and Qwen2.5-VL's 8x8-patch windows.

Vision attention is block diagonal. Qwen2-VL attends within each temporal patch of each image/video
("frame segments"); Qwen2.5-VL does the same in its `fullatt_block_indexes` blocks and otherwise within
windows of 4x4 merged tokens (8x8 patches) tiled from the top-left of each frame's merged grid
(edge windows are smaller). To make every window contiguous the tower permutes its tokens once, in
whole merge units of 4 patches, into "window order"; frames stay contiguous under that permutation, so
the frame segments are valid in both orders.

A `Segments` value carries the segment boundaries both as the int32 `cu_seqlens` a varlen kernel wants
and as host-side groups of equal-length segments, which is what the torch path batches over: one SDPA
call per distinct length (at most a handful: full windows, right/bottom edge, corner) instead of one
per window, and no dense N x N mask.

Shape legend: N patches, U = N / 4 merge units, S segments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LengthGroup:
    length: int  # tokens per segment in this group
    starts: Tensor  # (S_g,) int64 first token of each segment
    contiguous: bool  # the group's segments tile [starts[0], starts[0] + S_g * length) back to back

    def token_positions(self) -> Tensor:
        """(S_g, L) int64: the packed position of every token of every segment in the group."""
        return self.starts[:, None] + torch.arange(self.length, device=self.starts.device)


@dataclass(frozen=True)
class Segments:
    cu_seqlens: Tensor  # (S + 1,) int32, starts at 0, non-decreasing, ends at N
    lengths: tuple[int, ...]  # host copy of the segment lengths (zero-length ones dropped)
    groups: tuple[LengthGroup, ...]

    @property
    def max_len(self) -> int:
        return max(self.lengths, default=0)

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)

    @staticmethod
    def from_lengths(lengths: list[int], device: torch.device | str = "cpu") -> Segments:
        lengths = [n for n in lengths if n > 0]
        starts, total = [], 0
        for n in lengths:
            starts.append(total)
            total += n
        cu = torch.tensor(
            [0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int32
        )
        by_length: dict[int, list[int]] = {}
        for start, n in zip(starts, lengths):
            by_length.setdefault(n, []).append(start)
        groups = []
        for n, group_starts in sorted(by_length.items(), reverse=True):
            contiguous = all(b - a == n for a, b in zip(group_starts, group_starts[1:]))
            groups.append(
                LengthGroup(n, torch.tensor(group_starts, dtype=torch.int64, device=device), contiguous)
            )
        return Segments(cu.to(device), tuple(lengths), tuple(groups))


def frame_lengths(grid_thw: Tensor) -> list[int]:
    """Patches per temporal patch of every image/video, in order: h*w repeated t times."""
    return [h * w for t, h, w in grid_thw.tolist() for _ in range(t)]


def window_layout(grid_thw: Tensor, window_merged: int, merge_size: int) -> tuple[Tensor, list[int]]:
    """Window order of the merge units and the window sizes in patches.

    Returns `unit_index` (U,) int64 such that `units_in_window_order = units_in_input_order[unit_index]`
    (a unit is the merge_size^2 consecutive pixel_values rows of one merged token), and the patch count of
    each window in that order. Windows are row-major per frame, frames and images outer; inside a window
    merged tokens are row-major, which is the order transformers uses (its empty padding windows, made when
    a side is an exact multiple of the window, have no tokens and are simply absent here).
    """
    unit_index, sizes, offset = [], [], 0
    win = window_merged
    for t, h, w in grid_thw.tolist():
        hm, wm = h // merge_size, w // merge_size
        nwh, nww = -(-hm // win), -(-wm // win)  # windows per column / row (ceil)
        units = torch.full((t, nwh * win, nww * win), -1, dtype=torch.int64)
        units[:, :hm, :wm] = torch.arange(t * hm * wm).view(t, hm, wm)  # pad bottom/right with -1
        # (t, nwh, win, nww, win) -> (t, nwh, nww, win, win): one row per window, tokens row-major inside
        units = units.view(t, nwh, win, nww, win).permute(0, 1, 3, 2, 4).reshape(-1, win * win)
        valid = units >= 0
        unit_index.append(units[valid] + offset)
        sizes.extend((valid.sum(1) * merge_size**2).tolist())
        offset += t * hm * wm
    return torch.cat(unit_index), sizes
