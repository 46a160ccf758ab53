"""Qwen3-VL's video rules: transformers 5.24's `Qwen3VLVideoProcessor` (frame sampling, a pixel budget for
the whole clip) and `Qwen3VLProcessor`'s timestamps, on our decoding, resize and patch steps
(`qwenvl_min.inputs.preprocess`).

What differs from the Qwen2-VL / Qwen2.5-VL video processor (`preprocess.preprocess_video`):
- sampling is on by default, 2 frames per second: n = int(total / fps · sample_fps), clamped to
  [min_frames, max_frames] and the video's length (not rounded to even), frames round(linspace(0, total-1,
  n)) — the last frame included (`sample_frame_indices`);
- the pixel budget is the whole clip's: `clip_size` fits n x h x w into [min_pixels, max_pixels]
  (published: 4096 .. 25165824) with the frame count rounded to the temporal patch; a clip of one frame is
  refused (transformers raises too). `cap_pixels_per_frame` (qwen-vl-utils' per-frame cap) is supported;
- time is text, not positions: no `second_per_grid_ts`; each temporal patch k gets the timestamp
  (t_2k + t_2k+1) / 2 seconds of its two frames, t_i = source frame number / fps (`frame_timestamps`),
  and the prompt holds `<t.t seconds><|vision_start|>` pads `<|vision_end|>` per temporal patch
  (`qwenvl_min.inputs.prompts.encode`).
As for Qwen2-VL videos, frames are resized with PIL bicubic (transformers' video processor resizes with
torchvision: ~1-2 uint8 levels apart, docs/design.md "Traps we found"), and fps is required for frame
arrays and lists (transformers assumes 24).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..utils.validate import finite_number, positive_int
from .budget import DEFAULT_MAX_VISION_TOKENS, check_tokens
from .preprocess import (
    MAX_ASPECT_RATIO,
    NORMALIZATION,
    ImageInput,
    Normalization,
    check_budget,
    load_rgb,
    normalize_lut,
    patchify,
)
from .video_decode import probe, read_sampled

PATCH_SIZE = 16
IMAGE_MEAN, IMAGE_STD = NORMALIZATION["qwen3"]
# the published preprocessor_config.json's image budget (the class defaults are Qwen2-VL's)
IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS = 65536, 16777216
# the published video_preprocessor_config.json of the Qwen3-VL checkpoints (the class defaults differ:
# 128 .. 768 tokens of 32 x 32 pixels)
VIDEO_MIN_PIXELS = 4096
VIDEO_MAX_PIXELS = 25165824
SAMPLE_FPS = 2.0
MAX_VIDEO_TOKENS = 768  # the per-frame token ceiling of cap_pixels_per_frame


def sample_frame_indices(
    total_frames: int,
    fps: float,
    *,
    sample_fps: float | None = SAMPLE_FPS,
    num_frames: int | None = None,
    min_frames: int = 4,
    max_frames: int = 768,
) -> np.ndarray:
    """Indices of the frames to keep (Qwen3VLVideoProcessor.sample_frames). `num_frames` wins; else
    `sample_fps` per second; both None: every frame."""
    if total_frames <= 0:
        raise ValueError("the video has no frames")
    finite_number("fps", fps, positive=True, hint="the rate the frames were recorded at")
    if sample_fps is not None and num_frames is not None:
        raise ValueError("pass either sample_fps or num_frames, not both")
    if sample_fps is None and num_frames is None:
        return np.arange(total_frames)
    if num_frames is not None:
        count = positive_int("num_frames", num_frames)
    else:
        finite_number("sample_fps", sample_fps, positive=True)
        count = int(total_frames / fps * sample_fps)
        count = min(
            max(count, positive_int("min_frames", min_frames)), positive_int("max_frames", max_frames)
        )
        count = min(count, total_frames)
    return np.linspace(0, total_frames - 1, count).round().astype(int)


def clip_size(
    frames: int,
    height: int,
    width: int,
    *,
    factor: int,
    min_pixels: int,
    max_pixels: int,
    temporal_factor: int = 2,
    cap_pixels_per_frame: bool = False,
    max_video_tokens: int = MAX_VIDEO_TOKENS,
) -> tuple[int, int]:
    """(height, width) every frame of a `frames`-frame clip is resized to (Qwen3-VL's video smart_resize):
    multiples of `factor` with frames' x height x width in [min_pixels, max_pixels], the frame count
    rounded to `temporal_factor` when testing and the raw count when scaling (transformers' arithmetic).

    `cap_pixels_per_frame`: max_pixels becomes frames x max(min(max_video_tokens x factor², max_pixels //
    frames), int(1.05 x min_pixels)), qwen-vl-utils' per-frame cap."""
    if frames < temporal_factor:
        raise ValueError(
            f"a Qwen3-VL video needs at least {temporal_factor} frames (its processor's rule), got {frames}; "
            "give it as an image instead"
        )
    if cap_pixels_per_frame:
        per_frame = max(min(max_video_tokens * factor * factor, max_pixels // frames), int(min_pixels * 1.05))
        max_pixels = per_frame * frames
    if height < factor or width < factor:  # small frames are scaled up to one factor first
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"aspect ratio {ratio:.1f} of a {height}x{width} (h x w) video is over the limit of "
            f"{MAX_ASPECT_RATIO}; crop or pad it first"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def frame_timestamps(indices: Sequence[int], fps: float, temporal_patch_size: int = 2) -> list[float]:
    """Seconds of each temporal patch: the mean time of its first and last frame, frame i at index_i / fps
    (the index list padded with its last entry to whole patches, as the frames are)."""
    finite_number("fps", fps, positive=True, hint="the rate the frames were recorded at")
    indices = list(indices)
    indices += indices[-1:] * (-len(indices) % temporal_patch_size)
    seconds = [index / fps for index in indices]
    return [
        (seconds[i] + seconds[i + temporal_patch_size - 1]) / 2
        for i in range(0, len(seconds), temporal_patch_size)
    ]


def preprocess_video(
    frames: str | os.PathLike | np.ndarray | Sequence[ImageInput],
    *,
    fps: float | None = None,
    sample_fps: float | None = SAMPLE_FPS,
    num_frames: int | None = None,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    min_frames: int = 4,
    max_frames: int = 768,
    cap_pixels_per_frame: bool = False,
    patch_size: int = PATCH_SIZE,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    image_mean: Normalization = IMAGE_MEAN,
    image_std: Normalization = IMAGE_STD,
    max_tokens: int = DEFAULT_MAX_VISION_TOKENS,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """One video -> ({"pixel_values_videos": fp32 (t·h·w, 1536), "video_grid_thw": int64 (1, 3)}, the
    timestamp in seconds of each of its t temporal patches), by Qwen3-VL's rules (module docstring).

    `frames`: a video file path (fps read from the container unless given), a uint8 array (T, H, W, C)
    or a list of frames (then `fps`, the rate they were recorded at, is required). `max_tokens` is checked
    from the frame count and the first frame's size before the other frames are decoded."""
    max_tokens = check_budget(min_pixels, max_pixels, patch_size, merge_size, max_tokens)
    lut = normalize_lut(tuple(image_mean), tuple(image_std))
    if fps is not None:
        fps = finite_number("fps", fps, positive=True, hint="the rate the frames were recorded at")
    factor = patch_size * merge_size
    size: list[tuple[int, int]] = []  # the clip's (h, w), from the first frame and the kept count

    def sampler(total: int, rate: float) -> np.ndarray:
        return sample_frame_indices(
            total,
            rate,
            sample_fps=sample_fps,
            num_frames=num_frames,
            min_frames=min_frames,
            max_frames=max_frames,
        )

    def prepare(count: int) -> Callable[[ImageInput], np.ndarray]:
        source: list[tuple[int, int]] = []

        def transform(image: ImageInput) -> np.ndarray:
            rgb = load_rgb(image)
            if not source:
                source.append((rgb.height, rgb.width))
                height, width = clip_size(
                    count,
                    rgb.height,
                    rgb.width,
                    factor=factor,
                    min_pixels=min_pixels,
                    max_pixels=max_pixels,
                    temporal_factor=temporal_patch_size,
                    cap_pixels_per_frame=cap_pixels_per_frame,
                )
                size.append((height, width))
                grid_t = -(-count // temporal_patch_size)
                check_tokens(
                    "the video",
                    grid_t,
                    height // patch_size,
                    width // patch_size,
                    merge_size,
                    max_tokens,
                    video=True,
                )
            elif (rgb.height, rgb.width) != source[0]:
                raise ValueError(
                    f"all frames of a video must have one size, got {(source[0][1], source[0][0])} and {rgb.size} (w, h)"
                )
            height, width = size[0]
            if (height, width) != (rgb.height, rgb.width):
                rgb = rgb.resize((width, height), Image.Resampling.BICUBIC)
            return np.asarray(rgb)

        return transform

    if isinstance(frames, (str, os.PathLike)):
        header = probe(frames, fps)
        fps = header.fps
        indices: list[int] = []

        def choose(total: int) -> tuple[list[int], None]:
            indices[:] = sampler(total, header.fps).tolist()
            return sorted(set(indices)), None  # a frame num_frames asks for twice is decoded once

        decoded, _, _ = read_sampled(header, choose, lambda kept: prepare(len(indices)))
        position = {index: k for k, index in enumerate(sorted(set(indices)))}
        resized = [decoded[position[i]] for i in indices]
    else:
        if fps is None:
            raise ValueError(
                "fps is required for frame lists and arrays: pass the rate the frames were recorded at "
                "(transformers silently assumes 24, which changes Qwen3-VL's timestamps)"
            )
        if isinstance(frames, np.ndarray) and frames.ndim != 4:
            raise ValueError(f"a video array must be (T, H, W, C), got shape {frames.shape}")
        if len(frames) == 0:
            raise ValueError("the video has no frames")
        indices = sampler(len(frames), fps).tolist()
        transform = prepare(len(indices))
        resized = [transform(frames[i]) for i in indices]

    pixels = np.stack(resized)
    if pad := -len(pixels) % temporal_patch_size:
        pixels = np.concatenate([pixels, np.repeat(pixels[-1:], pad, axis=0)])
    t, h, w = len(pixels) // temporal_patch_size, pixels.shape[1] // patch_size, pixels.shape[2] // patch_size
    rows = patchify(pixels, patch_size, temporal_patch_size, merge_size, lut)
    inputs = {
        "pixel_values_videos": torch.from_numpy(rows),
        "video_grid_thw": torch.tensor([[t, h, w]], dtype=torch.int64),
    }
    return inputs, frame_timestamps(indices, fps, temporal_patch_size)
