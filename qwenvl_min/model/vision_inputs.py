"""The vision inputs of one forward as one value, and the checks that tie them to the token ids.

`VisionInputs` holds what a processor returns for images and videos (transformers' keys, the same names
our processor uses). It is built once where keyword calls are accepted (`QwenVL.forward`, `generate`,
`stream`) and passed whole below that.

The other keys of a processor's output are validated here, never silently trusted or ignored:
- `mm_token_type_ids` (0 text, 1 image pad, 2 video pad): we find vision tokens by their pad ids; the
  given types must agree with those ids token by token.
- `second_per_grid_ts` on Qwen2-VL and Qwen3-VL: a processor may emit it for every video; Qwen2-VL's
  positions step one per temporal patch whatever the frame rate and Qwen3-VL's carry time in timestamp
  text, so it must be one finite, positive value per video and is then not used (Qwen2.5-VL uses it for
  the temporal positions).

Shapes (letters as in docs/design.md, "Shape legend"): B, T, N (images' or videos' rows), P.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from ..utils.validate import check_seconds_per_grid
from .config import Config

TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids values


@dataclass(frozen=True)
class VisionInputs:
    """Images and videos of one batch, as patch rows and grids (all None: a text-only batch)."""

    pixel_values: Tensor | None = None  # (N_images, P), every image's rows in order
    image_grid_thw: Tensor | None = None  # (images, 3) int: temporal patches, patch rows, patch columns
    pixel_values_videos: Tensor | None = None  # (N_videos, P)
    video_grid_thw: Tensor | None = None  # (videos, 3)
    second_per_grid_ts: Tensor | None = None  # (videos,) seconds one temporal patch spans

    def __post_init__(self) -> None:
        seconds = self.second_per_grid_ts
        if isinstance(seconds, (list, tuple)):  # a processor may return a plain list
            object.__setattr__(self, "second_per_grid_ts", torch.as_tensor(seconds, dtype=torch.float32))
        for pixels, grid in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
            if (getattr(self, pixels) is None) != (getattr(self, grid) is None):
                given, missing = (pixels, grid) if getattr(self, grid) is None else (grid, pixels)
                raise ValueError(f"{given} was given without {missing}; pass both or neither")

    @property
    def empty(self) -> bool:
        return self.pixel_values is None and self.pixel_values_videos is None

    def kinds(self, config: Config) -> Iterator[tuple[str, Tensor | None, Tensor | None, int]]:
        """(pixel key, rows, grid, pad token id) for images, then videos: the order their features take."""
        yield "pixel_values", self.pixel_values, self.image_grid_thw, config.image_token_id
        yield "pixel_values_videos", self.pixel_values_videos, self.video_grid_thw, config.video_token_id

    def to(self, device: torch.device | str) -> VisionInputs:
        """The same inputs on `device` (pixel dtypes unchanged)."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return VisionInputs(**{k: None if v is None else v.to(device) for k, v in moved.items()})

    def for_positions(self, config: Config) -> Tensor | None:
        """`second_per_grid_ts` as the 3-D positions use it: Qwen2.5-VL's values as given; on Qwen2-VL and
        Qwen3-VL the values are checked (one finite, positive value per video) and not used."""
        seconds = self.second_per_grid_ts
        if config.model_type == "qwen2_5_vl" or seconds is None:
            return seconds
        check_seconds_per_grid(seconds)
        count = seconds.reshape(-1).numel()
        videos = 0 if self.video_grid_thw is None else int(self.video_grid_thw.shape[0])
        if count != videos:
            raise ValueError(
                f"second_per_grid_ts has {count} entries for {videos} videos; give one per video (or none)"
            )
        return None


def one_vision_value(
    vision: VisionInputs | None,
    pixel_values: Tensor | None,
    image_grid_thw: Tensor | None,
    pixel_values_videos: Tensor | None,
    video_grid_thw: Tensor | None,
    second_per_grid_ts: Tensor | list[float] | None,
) -> VisionInputs:
    """The one `VisionInputs` of a keyword call (`forward`, `generate`, `stream`): `vision` itself, or the
    five keyword tensors (not both)."""
    loose = VisionInputs(
        pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw, second_per_grid_ts
    )
    if vision is None:
        return loose
    if not loose.empty or second_per_grid_ts is not None:
        raise ValueError(
            "pass the vision inputs either as vision=VisionInputs(...) or as pixel_values / image_grid_thw "
            "/ pixel_values_videos / video_grid_thw / second_per_grid_ts keywords, not both"
        )
    if not isinstance(vision, VisionInputs):
        raise TypeError(f"vision must be a qwenvl_min.VisionInputs, got {type(vision).__name__}")
    return vision


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
