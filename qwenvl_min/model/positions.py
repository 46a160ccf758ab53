"""3-D M-RoPE positions (temporal, height, width) for a token sequence with images and videos.

The rule the released models were trained with: walk the sequence with a cursor s;
  * a text token takes (s, s, s) and advances s by one;
  * a vision block with merged grid (t, H', W') takes, for its token (k, i, j) in feature order,
        (s + floor(k * step), s + i, s + j)
    where step = 1 for images and Qwen2-VL videos, and tokens_per_second * second_per_grid_ts for
    Qwen2.5-VL videos (fractional steps allowed, truncated like the reference: float32 product, then
    floor); the cursor then moves to (largest position used by the block) + 1.
Padded slots (attention_mask 0) take position 0 and are skipped. Grids are consumed in order of
appearance across the flattened batch.

transformers 5.24 diverges after a multi-frame video: it moves the cursor to s + max(H', W'), ignoring
the temporal extent. We follow the trained rule (as transformers 4.x and the original Qwen code do).

Qwen3-VL: every temporal patch of a video is its own vision block (the processor writes
`<t.t seconds><|vision_start|>` pads `<|vision_end|>` for each), so a video grid (t, h, w) is read as t
grids (1, h, w) consumed in order, and time is carried by the timestamp text, not by the positions (no
`second_per_grid_ts`). With one frame per block the rule above is transformers 5.24's exactly.

The per-row delta is (largest position + 1) - (number of valid tokens): the n-th generated token of a
row (n = 0, 1, ...) takes position (valid prompt length + n + delta) on all three axes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..utils.validate import check_seconds_per_grid
from .config import QWEN3, Config
from .geometry import merged_coordinates


def get_rope_index(
    config: Config,
    input_ids: Tensor,
    image_grid_thw: Tensor | None = None,
    video_grid_thw: Tensor | None = None,
    second_per_grid_ts: Tensor | list[float] | None = None,
    attention_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Returns positions (3, B, T) int64 and deltas (B, 1) int64. Vision tokens are found by their pad ids."""
    if second_per_grid_ts is not None:
        check_seconds_per_grid(second_per_grid_ts)  # NaN/inf/<= 0 would become absurd positions
    if input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
        raise ValueError(
            f"input_ids must be an integer tensor (B, T), got {input_ids.dtype} {tuple(input_ids.shape)}"
        )
    batch, length = input_ids.shape
    device = input_ids.device
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    merge = config.vision.merge_size
    images = [] if image_grid_thw is None else image_grid_thw.tolist()
    videos = [] if video_grid_thw is None else video_grid_thw.tolist()
    if config.model_type == "qwen2_vl" and second_per_grid_ts is not None:
        raise ValueError(
            "second_per_grid_ts only applies to Qwen2.5-VL; Qwen2-VL videos step one position per frame"
        )
    if config.model_type in QWEN3:
        if second_per_grid_ts is not None:
            raise ValueError(
                "second_per_grid_ts only applies to Qwen2.5-VL; Qwen3-VL carries time in the timestamp text"
            )
        videos = [[1, h, w] for t, h, w in videos for _ in range(t)]  # one vision block per temporal patch
    per_frame = config.model_type in QWEN3
    if config.model_type == "qwen2_5_vl":
        if second_per_grid_ts is not None and torch.as_tensor(second_per_grid_ts).dim() != 1:
            raise ValueError(
                "second_per_grid_ts must be one value per video, shape (videos,), got shape "
                f"{tuple(torch.as_tensor(second_per_grid_ts).shape)}"
            )
        seconds = (
            [1.0] * len(videos)
            if second_per_grid_ts is None
            else torch.as_tensor(second_per_grid_ts).tolist()
        )
        if len(seconds) != len(videos):
            raise ValueError(f"second_per_grid_ts has {len(seconds)} entries for {len(videos)} videos")
        steps = [
            torch.tensor(config.vision.tokens_per_second, dtype=torch.float32)
            * torch.tensor(s, dtype=torch.float32)
            for s in seconds
        ]
    else:
        steps = [torch.tensor(1.0)] * len(videos)
    pad_ids = {
        config.image_token_id: ("image", images, None),
        config.video_token_id: ("video", videos, steps),
    }
    used = {"image": 0, "video": 0}

    positions = torch.zeros(3, batch, length, dtype=torch.int64)
    deltas = torch.zeros(batch, 1, dtype=torch.int64)
    for b in range(batch):
        slots = valid[b].nonzero().squeeze(1).cpu()
        ids = input_ids[b, slots].tolist()
        row = torch.zeros(3, len(ids), dtype=torch.int64)
        cursor, i = 0, 0
        while i < len(ids):
            if ids[i] not in pad_ids:
                j = i
                while j < len(ids) and ids[j] not in pad_ids:
                    j += 1
                row[:, i:j] = torch.arange(cursor, cursor + j - i)
                cursor += j - i
                i = j
                continue
            kind, grids, kind_steps = pad_ids[ids[i]]
            k = used[kind]
            if k >= len(grids):
                raise ValueError(
                    f"row {b} has more {kind} pad-token blocks than the {len(grids)} {kind} "
                    f"{'frames' if kind == 'video' and config.model_type in QWEN3 else 'grids'} given"
                )
            t, h, w = grids[k]
            step = kind_steps[k] if kind_steps is not None else torch.tensor(1.0)
            block = vision_block_positions(t, h // merge, w // merge, step) + cursor  # (3, t*H'*W')
            n = block.shape[1]
            if ids[i : i + n] != [ids[i]] * n:
                raise ValueError(
                    f"row {b}: {kind} {k} with grid {[t, h, w]} needs {n} consecutive {kind} pad tokens at "
                    f"position {int(slots[i])}, found fewer"
                )
            if per_frame and kind == "video" and i + n < len(ids) and ids[i + n] == ids[i]:
                raise ValueError(
                    f"row {b}: video frame {k} ({n} pad tokens at position {int(slots[i])}) runs into the next "
                    "frame's pad tokens; Qwen3-VL writes each temporal patch as its own block "
                    "(<t seconds><|vision_start|> pads <|vision_end|>): build the prompt with its processor"
                )
            row[:, i : i + n] = block
            cursor = int(block.max()) + 1
            used[kind] += 1
            i += n
        positions[:, b, slots] = row
        deltas[b, 0] = cursor - len(ids)
    for kind, grids in (("image", images), ("video", videos)):
        if used[kind] != len(grids):
            unit = (
                "temporal patches (one block each)"
                if kind == "video" and config.model_type in QWEN3
                else "grids"
            )
            raise ValueError(
                f"{len(grids)} {kind} {unit} were given but input_ids hold {used[kind]} {kind} blocks"
            )
    return positions.to(device), deltas.to(device)


def vision_block_positions(t: int, h: int, w: int, step: Tensor) -> Tensor:
    """(3, t*h*w) positions of one vision block relative to its start, in feature order (frame, row, col)."""
    coords = merged_coordinates(t, h, w).T  # (3, M): frame, row, col of each merged token
    temporal = (coords[0] * step).long()  # float32 product, truncated: the reference's rounding
    return torch.stack((temporal, coords[1], coords[2]))


def generation_positions(deltas: Tensor, valid_lengths: Tensor, offset: int, count: int) -> Tensor:
    """Positions (3, B, count) of generated tokens offset .. offset+count-1 (0 = first new token)."""
    steps = torch.arange(offset, offset + count, device=deltas.device)
    pos = (valid_lengths.view(-1, 1) + deltas.view(-1, 1) + steps).to(torch.int64)  # (B, count)
    return pos.unsqueeze(0).expand(3, -1, -1)
