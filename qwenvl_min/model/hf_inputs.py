"""The extra keys of Hugging Face processor output, checked: `mm_token_type_ids`, `second_per_grid_ts`
on Qwen2-VL, and `labels` (the causal-LM loss, HF's convention).

`QwenVL.forward` takes every key of transformers' `Qwen2VLProcessor` / `Qwen2_5_VLProcessor` BatchFeature
and of our own processor + prompt outputs, so `model(**batch)` needs no key popped. Keys that our model
derives itself are *validated*, never silently trusted or ignored:
- `mm_token_type_ids` (0 text, 1 image pad, 2 video pad): we find vision tokens by their pad ids; the
  given types must agree with those ids token by token.
- `second_per_grid_ts` on Qwen2-VL: our processor emits it for every video (it does not know the family);
  Qwen2-VL's positions step one per temporal patch whatever the frame rate, so it must be one finite,
  positive value per video and is then not used (Qwen2.5-VL uses it for the temporal positions).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.validate import check_seconds_per_grid
from .config import Config

IGNORE_INDEX = -100  # labels at this value do not count (HF / PyTorch convention)
TEXT, IMAGE, VIDEO = 0, 1, 2


def check_mm_token_type_ids(config: Config, input_ids: Tensor, mm_token_type_ids: Tensor) -> None:
    """The types must be 0/1/2 exactly where input_ids hold text / image pads / video pads."""
    if not isinstance(mm_token_type_ids, Tensor) or tuple(mm_token_type_ids.shape) != tuple(input_ids.shape):
        got = (
            tuple(mm_token_type_ids.shape)
            if isinstance(mm_token_type_ids, Tensor)
            else type(mm_token_type_ids)
        )
        raise ValueError(
            f"mm_token_type_ids must be a tensor shaped like input_ids {tuple(input_ids.shape)}, got {got}"
        )
    expected = torch.zeros_like(input_ids)
    expected[input_ids == config.image_token_id] = IMAGE
    expected[input_ids == config.video_token_id] = VIDEO
    wrong = mm_token_type_ids.to(expected.device, torch.int64) != expected
    if bool(wrong.any()):
        b, t = (int(i) for i in wrong.nonzero()[0])
        raise ValueError(
            f"mm_token_type_ids disagree with input_ids at {int(wrong.sum())} token(s), first (row {b}, token "
            f"{t}): type {int(mm_token_type_ids[b, t])} for id {int(input_ids[b, t])}, expected "
            f"{int(expected[b, t])} (1 = image pad id {config.image_token_id}, 2 = video pad id "
            f"{config.video_token_id}, 0 = anything else); pass the ids and types from the same processor call"
        )


def seconds_for_positions(
    config: Config, second_per_grid_ts: Tensor | Sequence[float] | None, video_grid_thw: Tensor | None
) -> Tensor | Sequence[float] | None:
    """What `get_rope_index` gets: Qwen2.5-VL's values as given; on Qwen2-VL the values are checked (one
    finite, positive value per video) and not used, as Qwen2-VL's temporal positions ignore time."""
    if config.model_type != "qwen2_vl" or second_per_grid_ts is None:
        return second_per_grid_ts
    check_seconds_per_grid(second_per_grid_ts)
    count = torch.as_tensor(second_per_grid_ts).reshape(-1).numel()
    videos = 0 if video_grid_thw is None else int(video_grid_thw.shape[0])
    if count != videos:
        raise ValueError(
            f"second_per_grid_ts has {count} entries for {videos} videos; give one per video (or none)"
        )
    return None


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross entropy in fp32: position t predicts labels[t + 1] (the shift happens here, as
    in transformers); labels equal to -100 do not count. All labels ignored gives NaN, as in torch/HF."""
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be an integer tensor shaped like input_ids, got {type(labels).__name__}"
        )
    if tuple(labels.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"labels must have the shape of input_ids {tuple(logits.shape[:2])}, got {tuple(labels.shape)}"
        )
    vocab = logits.shape[-1]
    labels = labels.to(logits.device, torch.int64)
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        raise ValueError(
            f"labels must be token ids in [0, {vocab}) or -100 (ignored), got e.g. {int(labels[bad][0])}"
        )
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]  # (B, T): the token after each position
    return F.cross_entropy(logits.float().reshape(-1, vocab), shifted.reshape(-1), ignore_index=IGNORE_INDEX)
