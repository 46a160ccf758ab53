"""Several inputs in one forward, and each input's part of every tap afterwards.

Which inputs share a forward (`packs`): consecutive ones, in order, while the pack holds at most
`batch_size` inputs and costs at most `batch_tokens` patch rows. An input over the bound alone runs alone.
- Vision taps only: the tower runs on the pack's rows back to back, so the cost is the sum of rows.
  Attention never crosses inputs: the tower's segments are per temporal patch (and window) of each item.
- Text taps too: the decoder runs one batch row per input, left padded to the longest, so every input
  counts as much as the pack's largest (cost = inputs x largest rows): a pack never pays for more padding
  than its bound.

Where an input's values sit in the pack (`Pack`): the tower takes the images' rows first, then the
videos' (the order `QwenVL` inserts features in), each in pack order; batch row b of the decoder is the
pack's input b, its L_b tokens at the right end (left padding).

How large a pack (`default_batch_tokens`): 16384 patch rows on an accelerator. On a CPU larger packs are
slower, not faster: the tower's GEMMs are already large for one image, and once an activation passes 32
MiB glibc serves it with fresh mmap'd pages, so every temporary of the pack pays a page-fault pass (8
photos of 1564 rows packed at Qwen2.5-VL-7B width: 1.09x the time of one at a time; with glibc told to
keep such blocks, 1.0x). The CPU default keeps the tower's widest activation under that size.

Shapes (letters as in docs/design.md, "Shape legend"): B, T, N, M, S_g, L, H.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.attention import SegmentMaps
from ..model.config import VisionConfig
from .prepare import LatentInput

PAD_ID = 0  # fills the left padding; masked, so any id below the vocabulary does
ACCELERATOR_BATCH_TOKENS = 16384  # patch rows per forward: about 16 images of 448 x 448 (1024 rows each)
CPU_ACTIVATION_BYTES = 32 * 2**20  # glibc's largest dynamic mmap threshold (see the module docstring)


def default_batch_tokens(vision: VisionConfig, dtype: torch.dtype, device: torch.device) -> int:
    """Patch rows per forward when none are given: 16384 on an accelerator; on a CPU, as many as keep the
    tower's widest per-row activation (the fused qkv, 3 D, or the MLP's hidden width) under 32 MiB, at
    most 16384 (Qwen2.5-VL-7B's tower in fp32: 2184 rows, one 640x480 photo a forward; the tiny models: 16384)."""
    if device.type != "cpu":
        return ACCELERATOR_BATCH_TOKENS
    row_bytes = max(3 * vision.width, vision.mlp_hidden) * dtype.itemsize
    return max(1, min(ACCELERATOR_BATCH_TOKENS, CPU_ACTIVATION_BYTES // row_bytes))


def _cat(tensors: list[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def pack_cost(rows: list[int], decoder: bool) -> int:
    """Patch rows a pack with items of `rows` rows costs (see the module docstring)."""
    return len(rows) * max(rows) if decoder else sum(rows)


def packs(
    items: Iterable[LatentInput], batch_tokens: int, batch_size: int, decoder: bool
) -> Iterator[list[LatentInput]]:
    """Consecutive items grouped under the bounds, in order (lazy: reads one item past each pack)."""
    if batch_tokens < 1 or batch_size < 1:
        raise ValueError(f"batch_tokens and batch_size must be >= 1, got {batch_tokens} and {batch_size}")
    pack: list[LatentInput] = []
    for item in items:
        rows = [i.rows for i in pack] + [item.rows]
        if pack and (len(rows) > batch_size or pack_cost(rows, decoder) > batch_tokens):
            yield pack
            pack = []
        pack.append(item)
    if pack:
        yield pack


@dataclass(frozen=True)
class Pack:
    """The items of one forward and where each item's values sit in that forward's tensors."""

    items: list[LatentInput]
    row_start: list[int]  # first tower row of each item (images first, then videos)
    merge_area: int  # merge_size ** 2: tower rows per merged token

    @staticmethod
    def of(items: list[LatentInput], merge_size: int) -> Pack:
        start, row_start = 0, {}
        for item in Pack._tower_order(items):
            row_start[id(item)] = start
            start += item.rows
        return Pack(items, [row_start[id(i)] for i in items], merge_size**2)

    @staticmethod
    def _tower_order(items: list[LatentInput]) -> list[LatentInput]:
        return [i for i in items if i.kind == "image"] + [i for i in items if i.kind == "video"]

    def model_inputs(self) -> dict[str, Tensor]:
        """The model's vision keywords for all items (images' tensors, then videos')."""
        vision: dict[str, Tensor] = {}
        for kind in ("image", "video"):
            group = [i for i in self.items if i.kind == kind]
            for key in group[0].vision if group else ():
                vision[key] = _cat([i.vision[key] for i in group])
        return vision

    def tower_inputs(self) -> tuple[Tensor, Tensor]:
        """(pixel rows (N, P), grids (items, 3)) as the model's forward hands them to the tower: images'
        then videos', copied once."""
        ordered = self._tower_order(self.items)
        pixels = _cat(
            [i.vision["pixel_values_videos" if i.kind == "video" else "pixel_values"] for i in ordered]
        )
        return pixels, _cat([i.grid_thw for i in ordered])

    @property
    def total_rows(self) -> int:
        return sum(i.rows for i in self.items)

    def token_batch(self) -> tuple[Tensor, Tensor | None]:
        """(B, T) ids, left padded, and the (B, T) attention mask (None when no row is padded)."""
        longest = max(len(i.input_ids) for i in self.items)
        ids = torch.full((len(self.items), longest), PAD_ID, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for b, item in enumerate(self.items):
            ids[b, longest - len(item.input_ids) :] = item.input_ids
            mask[b, longest - len(item.input_ids) :] = 1
        return ids, None if bool(mask.all()) else mask

    # ---- one item's part of a tap value ------------------------------------------------------------
    def vision_part(self, name: str, value: Tensor, b: int) -> Tensor:
        """Item b's rows of a tower tensor: (N, ...) patch rows or (M, ...) merged tokens."""
        item, start = self.items[b], self.row_start[b]
        if value.shape[0] == self.total_rows:
            return value[start : start + item.rows]
        if value.shape[0] * self.merge_area == self.total_rows:
            m = self.merge_area
            return value[start // m : (start + item.rows) // m]
        raise ValueError(
            f"tap {name} gave shape {tuple(value.shape)}, neither patch rows ({self.total_rows}) nor merged "
            f"tokens ({self.total_rows // self.merge_area}) first; latents cannot tell its inputs apart"
        )

    def maps_part(self, maps: SegmentMaps, b: int) -> SegmentMaps:
        """Item b's attention maps: its segments, grouped by length as a forward of the item alone groups
        them, rows counted from its own first row."""
        start, end = self.row_start[b], self.row_start[b] + self.items[b].rows
        probs, index = [], []
        for p, rows in zip(maps.probs, maps.token_index):  # (S_g, H, L, L), (S_g, L)
            mine = (rows[:, 0] >= start) & (rows[:, 0] < end)  # a segment never crosses inputs
            if bool(mine.any()):
                probs.append(p[mine])
                index.append(rows[mine] - start)
        return SegmentMaps(probs, index)

    def text_part(self, name: str, value: Tensor, b: int, attention_maps: bool) -> Tensor:
        """Row b of a decoder tensor without its left padding, as a forward of the input alone gives it:
        (B, T, ...) -> (1, L_b, ...); attention maps (B, H, T, K) -> (1, H, L_b, L_b)."""
        length = len(self.items[b].input_ids)
        padded = max(len(i.input_ids) for i in self.items)
        expected = (len(self.items), *((None, padded, padded) if attention_maps else (padded,)))
        got = tuple(value.shape[: len(expected)])
        if len(got) < len(expected) or any(e is not None and g != e for g, e in zip(got, expected)):
            raise ValueError(
                f"tap {name} gave shape {tuple(value.shape)}, not (inputs, tokens, ...) = "
                f"({len(self.items)}, {padded}, ...); latents cannot tell its inputs apart"
            )
        if attention_maps:
            return value[b : b + 1, :, padded - length :, padded - length :]
        return value[b : b + 1, padded - length :]
