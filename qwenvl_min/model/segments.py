"""Attention segments of the vision tower: which pixel_values rows attend to each other.

Vision attention is block diagonal. Qwen2-VL attends within each temporal patch of each image/video
("frame segments", contiguous in row order); Qwen2.5-VL does the same in its `fullatt_block_indexes`
blocks and otherwise within windows of merged tokens (`geometry.window_unit_order`), which are *not*
contiguous in row order.

A `Segments` value describes one such partition in *packed order*, the order in which every segment is
one contiguous run of positions: `order` (N,) lists the pixel_values row at each packed position (None
when packed order already is row order, as for frames) and `inverse` maps back. The attention module
gathers its q, k, v into packed order, calls its attention function, and scatters the output back, so
everything outside the attention sees row order. In packed order the segments are given twice:
  * `cu_seqlens`, the run boundaries, which is what a varlen kernel takes;
  * groups of equal-length segments (`LengthGroup`, with the packed positions of each segment), which is
    what the torch path batches over: one SDPA call per distinct length (a handful: full windows,
    right/bottom edges, corner) instead of one per window, and no dense N x N mask.
Everything here is built once per forward, on the host, before the blocks run: the attention itself
never reads a device value back (no host syncs inside the blocks).

Shapes (letters as in docs/design.md, "Shape legend"): N, S, S_g, L.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LengthGroup:
    length: int  # rows per segment in this group (L)
    index: Tensor  # (S_g, L) int64: the packed position of every token of every segment
    first: int | None  # when the group's segments tile positions [first, first + S_g * L) back to back

    @property
    def count(self) -> int:
        return self.index.shape[0]


@dataclass(frozen=True)
class Segments:
    cu_seqlens: Tensor  # (S + 1,) int32 over packed order: starts at 0, non-decreasing, ends at N
    lengths: tuple[int, ...]  # host copy of the segment lengths (zero-length ones dropped)
    groups: tuple[LengthGroup, ...]
    order: Tensor | None  # (N,) int64 row at each packed position; None when packed order = row order
    inverse: Tensor | None  # (N,) int64 packed position of each row

    @property
    def max_len(self) -> int:
        return max(self.lengths, default=0)

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)

    def rows(self, positions: Tensor) -> Tensor:
        """The pixel_values rows at packed `positions` (any shape)."""
        return positions if self.order is None else self.order[positions]

    @staticmethod
    def from_lengths(
        lengths: list[int], device: torch.device | str = "cpu", order: Tensor | None = None
    ) -> Segments:
        """Segments of the given lengths, back to back in packed order; `order` (N,) maps packed positions
        to rows (None: packed order is row order)."""
        lengths = [n for n in lengths if n > 0]
        starts, total = [], 0
        for n in lengths:
            starts.append(total)
            total += n
        if order is not None and order.shape != (total,):
            raise ValueError(f"order must list all {total} rows, got shape {tuple(order.shape)}")
        cu = torch.tensor([0, *[s + n for s, n in zip(starts, lengths)]], dtype=torch.int32)
        by_length: dict[int, list[int]] = {}
        for start, n in zip(starts, lengths):
            by_length.setdefault(n, []).append(start)
        groups = []
        for n, group_starts in sorted(by_length.items(), reverse=True):
            index = torch.tensor(group_starts, dtype=torch.int64)[:, None] + torch.arange(n)  # (S_g, L)
            back_to_back = all(b - a == n for a, b in zip(group_starts, group_starts[1:]))
            groups.append(LengthGroup(n, index.to(device), group_starts[0] if back_to_back else None))
        inverse = None
        if order is not None:
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(order.numel())
            order, inverse = order.to(device), inverse.to(device)
        return Segments(cu.to(device), tuple(lengths), tuple(groups), order, inverse)
