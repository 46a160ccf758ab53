"""The size and frame rules of qwen-vl-utils 0.0.14, the preprocessing the Qwen2-VL / Qwen2.5-VL model
cards run before the HF processor (re-derived and tested against it in tests/inputs/test_qwen_vl_utils_parity.py).

Images: `fit_size` with 4..16384 tokens per image (factor = patch · merge = 28), PIL bicubic resize.
Videos:
- frames: 2 per second by default; count = clamp(total / fps · sample_fps, min_frames, max_frames, total),
  floored to even (`frame_count`); indices evenly spaced over [first, last] *including the last frame*,
  rounded (`frame_indices`); `video_start` / `video_end` cut the range in frames (`frame_range`);
- per-frame budget: 128..768 tokens, and a cap for long videos: all frames together get at most
  `total_pixels` (default 90% of a 128000-token context), i.e. max per frame = total_pixels / n · 2
  (`frame_pixel_budget`);
- resize: antialiased bicubic on float32 tensors, then rounded and clamped to uint8 (`resize_frame`), which
  is what torchvision does for tensors (qwen-vl-utils resizes videos with torchvision, images with PIL).
Where these rules fail or surprise, we decided otherwise; docs/preprocessing.md has the table.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..utils.validate import finite_number, positive_int
from .preprocess import smart_resize

MAX_RATIO = 200
IMAGE_MIN_TOKENS, IMAGE_MAX_TOKENS = 4, 16384
VIDEO_MIN_TOKENS, VIDEO_MAX_TOKENS = 128, 768
DEFAULT_FPS = 2.0
FRAME_FACTOR = 2  # frame counts are multiples of the temporal patch
MIN_FRAMES, MAX_FRAMES = 4, 768
CONTEXT_TOKENS = 128000  # qwen-vl-utils' MODEL_SEQ_LEN default (it reads an env var; we take an option)
TOTAL_PIXELS_SHARE = 0.9  # the share of that context the frames of one video may take
FRAME_LIST_FPS = 2.0  # qwen-vl-utils' assumption for a video given as frames (its `sample_fps` key)


def fit_size(height: int, width: int, factor: int, min_pixels: float, max_pixels: float) -> tuple[int, int]:
    """qwen-vl-utils' smart_resize: sides rounded (half to even) to multiples of `factor`, at least one
    factor each, then scaled into [min_pixels, max_pixels].

    Differences from HF's smart_resize (`qwenvl_min.inputs.preprocess.smart_resize`): the rounded sides start at
    >= factor (HF lets a side round to 0 and then upscales the whole image), so a 10x2000 image becomes
    28x1988 here and 28x812 there. qwen-vl-utils can also floor a thin image's short side to 0 when it
    scales down (then PIL refuses the resize); we keep it at `factor` instead, as HF does.
    """
    return smart_resize(height, width, factor, min_pixels, max_pixels, MAX_RATIO, sides_at_least_factor=True)


def frame_count(
    total: int,
    video_fps: float,
    *,
    fps: float | None = None,
    nframes: int | None = None,
    min_frames: int | None = None,
    max_frames: int | None = None,
) -> int:
    """How many frames of a `total`-frame stretch at `video_fps` are kept (qwen-vl-utils' smart_nframes)."""
    if fps is not None and nframes is not None:
        raise ValueError("give a video either fps (frames per second to keep) or nframes (a count), not both")
    if total < FRAME_FACTOR:  # no sampling choice can fix this: say what the input is instead
        raise ValueError(
            f"a video needs at least {FRAME_FACTOR} frames (the model reads frames in pairs) and this one has "
            f"{total} in the chosen range; pass a single picture as an image instead"
        )
    if nframes is not None:
        count = round(positive_int("nframes", nframes) / FRAME_FACTOR) * FRAME_FACTOR
    else:
        rate = DEFAULT_FPS if fps is None else finite_number("fps", fps, positive=True)
        low = MIN_FRAMES if min_frames is None else positive_int("min_frames", min_frames)
        high = min(MAX_FRAMES, total) if max_frames is None else positive_int("max_frames", max_frames)
        low = math.ceil(low / FRAME_FACTOR) * FRAME_FACTOR
        high = math.floor(high / FRAME_FACTOR) * FRAME_FACTOR
        count = min(max(total / video_fps * rate, low), high, total)
        count = math.floor(count / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= count <= total:
        raise ValueError(
            f"cannot keep {count} frames of a {total}-frame video (the count must be even and between "
            f"{FRAME_FACTOR} and the video's length); choose another fps / nframes / min_frames / max_frames"
        )
    return count


def frame_range(
    total: int, video_fps: float, video_start: float | None, video_end: float | None
) -> tuple[int, int]:
    """(first, last) frame numbers of the [video_start, video_end] seconds of a video, both clamped to it:
    first = ceil(start · fps), last = floor(end · fps) (qwen-vl-utils' rule for its decord / torchcodec
    readers; its torchvision reader differs, see docs/preprocessing.md)."""
    if video_start is None and video_end is None:
        return 0, total - 1
    duration = total / video_fps
    first = 0
    if video_start is not None:
        first = math.ceil(max(0.0, min(finite_number("video_start", video_start), duration)) * video_fps)
    last = total - 1
    if video_end is not None:
        last = min(
            math.floor(max(0.0, min(finite_number("video_end", video_end), duration)) * video_fps), last
        )
    if first >= last:
        raise ValueError(
            f"video_start={video_start} .. video_end={video_end} s leaves no frames (frames {first}..{last} of "
            f"a {duration:.2f} s video at {video_fps:g} fps); give a start before the end"
        )
    return first, last


def frame_indices(first: int, last: int, count: int) -> list[int]:
    """`count` evenly spaced frame numbers from `first` to `last` inclusive, rounded half to even in fp32
    (torch.linspace, as qwen-vl-utils)."""
    return torch.linspace(first, last, count).round().long().tolist()


def frame_pixel_budget(
    count: int,
    *,
    factor: int,
    min_pixels: float | None = None,
    max_pixels: float | None = None,
    total_pixels: float | None = None,
) -> tuple[float, float]:
    """(min, max) pixels per frame for a video of `count` frames: max = min(768 tokens, total_pixels /
    count · 2), never below 1.05 · min, and never above an explicit `max_pixels`."""
    low = VIDEO_MIN_TOKENS * factor**2 if min_pixels is None else min_pixels
    total = CONTEXT_TOKENS * factor**2 * TOTAL_PIXELS_SHARE if total_pixels is None else total_pixels
    cap = max(min(VIDEO_MAX_TOKENS * factor**2, total / count * FRAME_FACTOR), int(low * 1.05))
    high = cap if max_pixels is None else min(max_pixels, cap)
    return low, high


def resize_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8: antialiased bicubic on fp32, clamped, rounded."""
    # channels first and contiguous while still uint8 (the cheap copy); interpolate on a channels-last
    # view takes a path many times slower (same values)
    x = torch.from_numpy(np.array(frame, copy=not frame.flags.writeable)).permute(2, 0, 1).contiguous()
    y = torch.nn.functional.interpolate(
        x[None].float(), size=(height, width), mode="bicubic", align_corners=False, antialias=True
    )  # (1, 3, height, width) fp32
    y = y.clamp_(0, 255).round_().to(torch.uint8)
    return y[0].permute(1, 2, 0).contiguous().numpy()  # (height, width, 3)
