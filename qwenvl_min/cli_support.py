"""What the `qwenvl-min` subcommands share: input files to model inputs, the token-free vision prompt,
window summaries, loading a converted checkpoint, and the error type the CLI prints as one line."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor

from .budget import DEFAULT_MAX_VISION_TOKENS
from .config import Config
from .geometry import window_layout
from .model import QwenVL
from .processor import (
    IMAGE_MAX_PIXELS,
    IMAGE_MIN_PIXELS,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    preprocess_image,
    preprocess_video,
)
from .validate import guard_finite_hidden_states

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FAMILIES = {"qwen2.5-vl": "tiny-qwen2.5-vl", "qwen2-vl": "tiny-qwen2-vl"}  # demo models
RELEASED = {"qwen2.5-vl": "qwen2.5-vl-7b", "qwen2-vl": "qwen2-vl-7b"}  # inspect: the released vision geometry


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


def is_video(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def image_inputs(
    path: str | os.PathLike[str],
    min_pixels: int | None,
    max_pixels: int | None,
    max_tokens: int | None = None,
) -> dict[str, Tensor]:
    """An image file -> the model's image kwargs (None: the processor's default pixel budget)."""
    return preprocess_image(
        path,
        min_pixels=IMAGE_MIN_PIXELS if min_pixels is None else min_pixels,
        max_pixels=IMAGE_MAX_PIXELS if max_pixels is None else max_pixels,
        max_tokens=DEFAULT_MAX_VISION_TOKENS if max_tokens is None else max_tokens,
    )


def video_inputs(
    path: str | os.PathLike[str],
    min_pixels: int | None,
    max_pixels: int | None,
    max_tokens: int | None = None,
) -> dict[str, Tensor]:
    """A video file -> the model's video kwargs (every frame, fps from the container; default video budget)."""
    return preprocess_video(
        path,
        min_pixels=VIDEO_MIN_PIXELS if min_pixels is None else min_pixels,
        max_pixels=VIDEO_MAX_PIXELS if max_pixels is None else max_pixels,
        max_tokens=DEFAULT_MAX_VISION_TOKENS if max_tokens is None else max_tokens,
    )


def preprocess(
    path: str | os.PathLike[str],
    min_pixels: int | None,
    max_pixels: int | None,
    max_tokens: int | None = None,
) -> dict[str, Tensor]:
    """One input file, image or video by suffix -> the model's vision kwargs (budget checked first)."""
    return (video_inputs if is_video(path) else image_inputs)(path, min_pixels, max_pixels, max_tokens)


def vision_prompt(config: Config, inputs: dict[str, Tensor]) -> Tensor:
    """(1, T) ids holding just the vision blocks, <|vision_start|> pads <|vision_end|> each: what `latents`
    runs (no tokenizer needed) and what the demo's prompt is built around."""
    ids: list[int] = []
    for grid_key, pad in (
        ("image_grid_thw", config.image_token_id),
        ("video_grid_thw", config.video_token_id),
    ):
        for t, h, w in inputs.get(grid_key, torch.empty(0, 3)).tolist():
            tokens = t * h * w // config.vision.merge_size**2
            ids += [config.vision_start_token_id, *[pad] * tokens, config.vision_end_token_id]
    return torch.tensor([ids])


def window_summary(config: Config, grid_thw: Tensor) -> str:
    """e.g. '6 windows of up to 8x8 patches: 4 x 64, 2 x 32 patches'; Qwen2-VL attends per frame."""
    v = config.vision
    if v.family == "qwen2_vl":
        return f"none (Qwen2-VL: every block attends to the whole frame, {int(grid_thw[0, 1] * grid_thw[0, 2])} patches)"
    _, sizes = window_layout(grid_thw, v.window_merged, v.merge_size)
    side = v.window_merged * v.merge_size
    counts = ", ".join(f"{n} x {size}" for size, n in sorted(Counter(sizes).items(), reverse=True))
    full = ", ".join(map(str, v.fullatt_block_indexes)) or "none"
    return f"{len(sizes)} of up to {side}x{side} patches ({counts} patches); full-frame blocks: {full}"


def load_model(path: str, dtype: str | None, device: str, verify: bool = False) -> QwenVL:
    """A converted checkpoint, checked against its manifest (every byte with verify), whose forward
    raises on NaN/inf hidden states instead of answering garbage."""
    from .load import load
    from .weights_convert.checkpoint import CheckpointError

    try:
        model = load(path, dtype=None if dtype is None else DTYPES[dtype], device=device, verify=verify)
    except CheckpointError as err:
        raise CliError(f"{err} (`qwenvl-min convert SRC DST` runs the same converter)") from err
    guard_finite_hidden_states(model)
    return model
