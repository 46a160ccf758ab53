"""One image or video prepared by a checkpoint's processor settings (`VisionSettings`) and a user's pixel /
frame flags: the shared step of `run`, `attend`, `inspect` and `latents`.

Images follow the HF processor rules with the settings' pixel budget, patch sizes and normalization;
videos are sampled and sized by qwen-vl-utils' rules (what the model cards' pipeline feeds the model: 2
fps, 128..768 tokens a frame, a total-pixel cap for long videos) at the settings' patch sizes, changed
only by the flags. An explicit flag wins over the settings (`pixel_range`).
"""

from __future__ import annotations

import os
from typing import Any

from torch import Tensor

from .budget import DEFAULT_MAX_VISION_TOKENS
from .checkpoint_settings import VisionSettings
from .preprocess import ImageInput, preprocess_image
from .vision_messages import PreparedVision, prepare_vision


def pixel_range(
    min_pixels: int | None, max_pixels: int | None, default_min: int, default_max: int
) -> tuple[int, int]:
    """Per kind: an explicit flag wins over the default (the checkpoint's, else the family's); a max below
    the default min lowers the min to it (an explicit min above an explicit max is still an error)."""
    high = default_max if max_pixels is None else max_pixels
    low = default_min if min_pixels is None else min_pixels
    if min_pixels is None and max_pixels is not None:
        low = min(low, max_pixels)
    return low, high


def image_inputs(
    image: ImageInput,
    min_pixels: int | None,
    max_pixels: int | None,
    max_tokens: int | None,
    settings: VisionSettings,
) -> dict[str, Tensor]:
    """An image (a file, a PIL image or an array) -> the model's image kwargs (`preprocess_image`'s)."""
    low, high = pixel_range(min_pixels, max_pixels, settings.min_pixels, settings.max_pixels)
    mean, std = settings.normalization
    return preprocess_image(
        image,
        min_pixels=low,
        max_pixels=high,
        patch_size=settings.patch_size,
        temporal_patch_size=settings.temporal_patch_size,
        merge_size=settings.merge_size,
        max_tokens=DEFAULT_MAX_VISION_TOKENS if max_tokens is None else max_tokens,
        image_mean=mean,
        image_std=std,
    )


def sampled_video(
    location: str | os.PathLike[str],
    min_pixels: int | None,
    max_pixels: int | None,
    max_tokens: int | None,
    settings: VisionSettings,
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    max_frames: int | None = None,
    total_pixels: int | None = None,
) -> PreparedVision:
    """A video file or URL -> its sampled, resized frames (`prepare_vision`'s), before normalization:
    `.model_inputs(settings.family)` gives the model's video kwargs, `.video_timestamps()` Qwen3-VL's
    per-patch seconds. The flags are qwen-vl-utils' keys (None: its default)."""
    item: dict[str, Any] = {"type": "video", "video": os.fspath(location)}
    options = {
        "fps": fps,
        "nframes": num_frames,
        "max_frames": max_frames,
        "total_pixels": total_pixels,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
    }
    item |= {k: v for k, v in options.items() if v is not None}
    return prepare_vision(
        [{"role": "user", "content": [item]}],
        patch_size=settings.patch_size,
        merge_size=settings.merge_size,
        temporal_patch_size=settings.temporal_patch_size,
        max_tokens=DEFAULT_MAX_VISION_TOKENS if max_tokens is None else max_tokens,
    )
