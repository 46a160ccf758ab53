"""Chat messages in the HF / qwen-vl-utils format -> the resized images and sampled videos they name.

    messages = [{"role": "user", "content": [
        {"type": "image", "image": "https://example.com/cat.jpg", "max_pixels": 512 * 28 * 28},
        {"type": "video", "video": "file:///data/clip.mp4", "fps": 1.0},
        {"type": "text", "text": "What happens?"},
    ]}]
    vision = prepare_vision(messages)                    # fetch, decode, sample, resize (qwen-vl-utils rules)
    batch = processor(text=processor.apply_chat_template(messages), vision=vision)   # no second resize
    out = model(**batch)                                 # or: model(ids, **vision.model_inputs())

This is what qwen-vl-utils' `process_vision_info` does for the model cards' pipeline, re-derived (rules in
`qwenvl_min.inputs.qwen_vl_rules`) and compared with it frame by frame and pixel by pixel in
tests/inputs/test_qwen_vl_utils_parity.py. Items:
- `{"type": "image", "image": X}` or `{"type": "image_url", "image_url": X | {"url": X}}`, X a PIL image,
  a uint8 array, a path, a file:// URI, a data:image/...;base64 URI or an http(s) URL; options min_pixels,
  max_pixels, resized_height + resized_width;
- `{"type": "video", "video": path | file:// | http(s) URL}`; options fps or nframes, min_frames,
  max_frames, min_pixels, max_pixels, total_pixels, resized_height + resized_width, video_start, video_end
  (seconds);
- `{"type": "video", "video": [frame, ...]}`: frames already sampled, at `sample_fps` per second (default 2,
  as qwen-vl-utils assumes); options min_pixels, max_pixels, total_pixels, resized_height + resized_width.
An option this format does not have, or one that would be ignored, is an error naming it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..utils.validate import finite_number, positive_int
from . import qwen_vl_rules as rules
from .budget import DEFAULT_MAX_VISION_TOKENS, check_tokens
from .media_sources import FetchLimits, image_source, video_file
from .preprocess import (
    MERGE_SIZE,
    NORMALIZATION,
    PATCH_SIZE,
    TEMPORAL_PATCH_SIZE,
    preprocess_image,
    preprocess_video,
)
from .video_decode import probe, read_sampled
from .video_qwen3 import frame_timestamps

_SIZE_KEYS = {"min_pixels", "max_pixels", "resized_height", "resized_width"}
IMAGE_KEYS = frozenset({"type", "image", "image_url", *_SIZE_KEYS})
VIDEO_FILE_KEYS = frozenset(
    {
        "type",
        "video",
        "total_pixels",
        "fps",
        "nframes",
        "min_frames",
        "max_frames",
        "video_start",
        "video_end",
    }
    | _SIZE_KEYS
)
FRAME_LIST_KEYS = frozenset({"type", "video", "total_pixels", "sample_fps", *_SIZE_KEYS})
DEFAULT_FETCH = FetchLimits()


@dataclass(frozen=True, eq=False, repr=False)  # holds arrays: compare fields yourself
class SampledVideo:
    """One video after sampling and resizing: the frames the model sees and the rate they stand for."""

    frames: (
        np.ndarray
    )  # (T, H, W, 3) uint8, T even (a frame list's last frame repeated), H, W multiples of 28
    sample_fps: float  # kept frames per second of video: second_per_grid_ts = temporal_patch / sample_fps
    frame_indices: tuple[int, ...]  # the source frame number of each kept frame (a frame list: its position)
    video_fps: float | None  # the file's frame rate (None for a frame list)
    total_frames: int  # frames in the chosen range of the file (a frame list: its padded length)

    def __repr__(self) -> str:
        """Sizes and counts, never the pixels: e.g. SampledVideo(6 frames of 392x280 at 2 fps, source frames
        0..29 of 30 at 15 fps)."""
        t, h, w = self.frames.shape[:3]
        kept = f"{t} frames of {w}x{h} at {self.sample_fps:g} fps"
        if self.video_fps is None:
            return f"SampledVideo({kept}, from a list of {self.total_frames} frames)"
        first, last = self.frame_indices[0], self.frame_indices[-1]
        return (
            f"SampledVideo({kept}, source frames {first}..{last} of {self.total_frames} at "
            f"{self.video_fps:g} fps)"
        )


@dataclass(frozen=True, eq=False, repr=False)
class PreparedVision:
    """The vision items of some chat messages, in order, ready for the prompt builder and the model."""

    images: tuple[Image.Image, ...]  # RGB, already resized (sides multiples of patch · merge)
    videos: tuple[SampledVideo, ...]
    patch_size: int = PATCH_SIZE
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE
    merge_size: int = MERGE_SIZE

    def __repr__(self) -> str:
        """Kinds, sizes and frame counts, never the pixels: e.g. PreparedVision(images: 2 [308x224, 56x56];
        videos: 1 [6 frames of 392x280 at 2 fps]; patch 14, merge 2)."""
        images = ", ".join(f"{im.width}x{im.height}" for im in self.images)
        videos = ", ".join(
            f"{len(v.frames)} frames of {v.frames.shape[2]}x{v.frames.shape[1]} at {v.sample_fps:g} fps"
            for v in self.videos
        )
        return (
            f"PreparedVision(images: {len(self.images)} [{images}]; videos: {len(self.videos)} [{videos}]; "
            f"patch {self.patch_size}, merge {self.merge_size})"
        )

    @property
    def image_grid_thw(self) -> torch.Tensor | None:
        """(n_images, 3) int64 patch grids, or None without images (what `encode` expands pads with)."""
        if not self.images:
            return None
        p = self.patch_size
        return torch.tensor([[1, im.height // p, im.width // p] for im in self.images], dtype=torch.int64)

    @property
    def video_grid_thw(self) -> torch.Tensor | None:
        if not self.videos:
            return None
        p, tp = self.patch_size, self.temporal_patch_size
        rows = [
            [-(-len(v.frames) // tp), v.frames.shape[1] // p, v.frames.shape[2] // p] for v in self.videos
        ]
        return torch.tensor(rows, dtype=torch.int64)

    def model_inputs(self, family: str = "qwen2") -> dict[str, torch.Tensor]:
        """pixel_values / image_grid_thw, pixel_values_videos / video_grid_thw / second_per_grid_ts (the
        keys present for what was given), normalized and patchified without resizing again.

        `family` is the processor's ("qwen2": Qwen2-VL / Qwen2.5-VL; "qwen3": Qwen3-VL, normalized with
        mean / std 0.5 and without second_per_grid_ts: its prompt carries `video_timestamps()`)."""
        if family not in NORMALIZATION:
            raise ValueError(f"family must be one of {sorted(NORMALIZATION)}, got {family!r}")
        mean, std = NORMALIZATION[family]
        out: dict[str, torch.Tensor] = {}
        geometry = {
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "max_tokens": sys.maxsize,  # the budget was checked by prepare_vision, before decoding
            "image_mean": mean,
            "image_std": std,
        }
        if self.images:
            parts = [preprocess_image(im, **_exact(im.height, im.width), **geometry) for im in self.images]
            out["pixel_values"] = torch.cat([p["pixel_values"] for p in parts])
            out["image_grid_thw"] = torch.cat([p["image_grid_thw"] for p in parts])
        if self.videos:
            parts = [
                preprocess_video(
                    v.frames, fps=v.sample_fps, **_exact(v.frames.shape[1], v.frames.shape[2]), **geometry
                )
                for v in self.videos
            ]
            keys = ["pixel_values_videos", "video_grid_thw"] + (
                ["second_per_grid_ts"] if family == "qwen2" else []
            )
            for key in keys:
                out[key] = torch.cat([p[key] for p in parts])
        return out

    def video_timestamps(self) -> list[list[float]]:
        """Qwen3-VL: per video, the seconds of each temporal patch, as transformers' Qwen3VLProcessor
        computes them from qwen-vl-utils' video metadata: a file's kept frame numbers over its frame rate;
        a frame list's positions 0 .. n-1 (after padding) over `sample_fps` (the metadata qwen-vl-utils
        makes up for it)."""
        out = []
        for video in self.videos:
            if video.video_fps is None:
                out.append(
                    frame_timestamps(range(len(video.frames)), video.sample_fps, self.temporal_patch_size)
                )
            else:
                out.append(frame_timestamps(video.frame_indices, video.video_fps, self.temporal_patch_size))
        return out


def _exact(height: int, width: int) -> dict[str, int]:
    """A pixel budget under which smart_resize keeps an already-resized size: nothing is resized again."""
    return {"min_pixels": height * width, "max_pixels": height * width}


# ---- messages -> items ------------------------------------------------------------------------------------


def vision_items(
    conversations: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
) -> list[dict]:
    """The image / video items of one conversation or a batch, in order (what the chat template turns into
    vision placeholders: items typed image / image_url / video, or holding such a key)."""
    if not conversations:
        raise ValueError("no messages given")
    batch = [conversations] if isinstance(conversations[0], Mapping) else list(conversations)
    items = []
    for conversation in batch:
        for message in conversation:
            if not isinstance(message, Mapping) or "content" not in message:
                raise ValueError(f"a message must be a dict with 'role' and 'content', got {message!r:.80}")
            content = message["content"]
            if isinstance(content, str):
                continue
            for item in content:
                if not isinstance(item, Mapping):
                    raise ValueError(f"content items must be dicts, got {item!r:.80}")
                if item_kind(item) is not None:
                    items.append(dict(item))
    return items


def item_kind(item: Mapping[str, Any]) -> str | None:
    """ "image", "video" or None (text), by the same test as Qwen's chat template."""
    kind = item.get("type")
    if kind in ("image", "image_url") or "image" in item or "image_url" in item:
        return "image"
    if kind == "video" or "video" in item:
        return "video"
    return None


def _check_keys(item: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for {what}; the options are {sorted(allowed - {'type'})}"
        )
    if ("resized_height" in item) != ("resized_width" in item):
        raise ValueError(f"{what}: give resized_height and resized_width together (one alone does nothing)")
    if "resized_height" in item and ({"min_pixels", "max_pixels"} & set(item)):
        raise ValueError(
            f"{what}: resized_height/resized_width fix the size, so min_pixels/max_pixels would be ignored; "
            "give one or the other"
        )


def _pixels(item: Mapping[str, Any], key: str) -> float | None:
    value = item.get(key)
    return None if value is None else finite_number(key, value, positive=True)


def _pixel_range(item: Mapping[str, Any], default_min: float) -> tuple[float, float | None]:
    """(min, max) pixels asked for; a max below the default min lowers the min with it (qwen-vl-utils
    would assert instead)."""
    low, high = _pixels(item, "min_pixels"), _pixels(item, "max_pixels")
    if low is None:
        low = default_min if high is None else min(default_min, high)
    return low, high


def _resized(item: Mapping[str, Any], factor: int) -> tuple[int, int] | None:
    if "resized_height" not in item:
        return None
    height = positive_int("resized_height", item["resized_height"])
    width = positive_int("resized_width", item["resized_width"])
    # qwen-vl-utils fits the asked size with the *image* budget, for images and videos alike
    return rules.fit_size(
        height, width, factor, rules.IMAGE_MIN_TOKENS * factor**2, rules.IMAGE_MAX_TOKENS * factor**2
    )


# ---- images -----------------------------------------------------------------------------------------------


def _image_payload(item: Mapping[str, Any]) -> Any:
    if "image" in item:
        return item["image"]
    if "image_url" not in item:
        raise ValueError(f"an image item needs an 'image' or 'image_url' payload, got keys {sorted(item)}")
    payload = item["image_url"]
    if isinstance(payload, Mapping):  # the OpenAI form {"url": ...}
        if set(payload) != {"url"}:
            raise ValueError(f"image_url must be a URL string or {{'url': URL}}, got keys {sorted(payload)}")
        payload = payload["url"]
    return payload


def _prepare_image(
    item: Mapping[str, Any],
    factor: int,
    merge_size: int,
    patch_size: int,
    budget: _Budget,
    limits: FetchLimits,
) -> Image.Image:
    _check_keys(item, IMAGE_KEYS, "an image")
    image = image_source(_image_payload(item), limits)
    size = _resized(item, factor)
    if size is None:
        low, high = _pixel_range(item, rules.IMAGE_MIN_TOKENS * factor**2)
        high = rules.IMAGE_MAX_TOKENS * factor**2 if high is None else high
        size = rules.fit_size(image.height, image.width, factor, low, high)
    height, width = size
    budget.take("an image", 1, height, width, patch_size, merge_size)
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return image


# ---- videos -----------------------------------------------------------------------------------------------


def _frame_size(item: Mapping[str, Any], height: int, width: int, count: int, factor: int) -> tuple[int, int]:
    size = _resized(item, factor)
    if size is not None:
        return size
    low, high = _pixel_range(item, rules.VIDEO_MIN_TOKENS * factor**2)
    low, high = rules.frame_pixel_budget(
        count, factor=factor, min_pixels=low, max_pixels=high, total_pixels=_pixels(item, "total_pixels")
    )
    return rules.fit_size(height, width, factor, low, high)


def _prepare_video_file(
    item: Mapping[str, Any],
    factor: int,
    merge_size: int,
    patch_size: int,
    budget: _Budget,
    limits: FetchLimits,
) -> SampledVideo:
    _check_keys(item, VIDEO_FILE_KEYS, "a video file")
    source = item["video"]
    sampling = {k: item.get(k) for k in ("fps", "nframes", "min_frames", "max_frames")}
    if sampling["fps"] is not None and sampling["nframes"] is not None:
        raise ValueError("give a video either fps (frames per second to keep) or nframes (a count), not both")
    if sampling["nframes"] is not None and (sampling["min_frames"] or sampling["max_frames"]) is not None:
        raise ValueError(
            "min_frames / max_frames bound the count fps gives; with nframes they would be ignored"
        )
    with video_file(source, limits) as path:
        header = probe(path)
        plan: dict[str, Any] = {}

        def choose(total: int) -> tuple[list[int], int | None]:
            first, last = rules.frame_range(total, header.fps, item.get("video_start"), item.get("video_end"))
            count = rules.frame_count(last - first + 1, header.fps, **sampling)
            plan.update(first=first, last=last, count=count)
            indices = rules.frame_indices(first, last, count)
            return sorted(set(indices)), (last if item.get("video_end") is not None else None)

        def transform_for(kept: int) -> Any:
            height, width = _frame_size(item, header.height, header.width, plan["count"], factor)
            budget.refund(plan.get("tokens", 0))  # a second pass (wrong header count) is charged once
            plan["tokens"] = budget.take(
                f"video {source!r}", plan["count"], height, width, patch_size, merge_size
            )
            # the kept frames go straight into one array: no list of frames, no copy by np.stack
            frames = np.empty((kept, height, width, 3), np.uint8)
            plan["frames"] = frames

            def transform(frame: np.ndarray) -> int:
                if frame.shape[:2] != (header.height, header.width):
                    raise ValueError(
                        f"video {source!r}: a frame is {frame.shape[1]}x{frame.shape[0]}, the stream says "
                        f"{header.width}x{header.height}; re-encode it with one frame size"
                    )
                slot = plan["slot"] = plan.get("slot", -1) + 1
                frames[slot] = rules.resize_frame(frame, height, width)
                return slot

            plan["slot"] = -1
            return transform

        read_sampled(header, choose, transform_for)
    indices = rules.frame_indices(plan["first"], plan["last"], plan["count"])
    frames = plan["frames"]
    if len(set(indices)) != len(indices):  # rounding met twice: repeat that frame
        position = {index: k for k, index in enumerate(sorted(set(indices)))}
        frames = frames[[position[i] for i in indices]]
    in_range = plan["last"] - plan["first"] + 1
    return SampledVideo(
        frames=frames,
        sample_fps=plan["count"] / in_range * header.fps,
        frame_indices=tuple(indices),
        video_fps=header.fps,
        total_frames=in_range,
    )


def _prepare_frame_list(
    item: Mapping[str, Any],
    factor: int,
    merge_size: int,
    patch_size: int,
    budget: _Budget,
    limits: FetchLimits,
) -> SampledVideo:
    _check_keys(item, FRAME_LIST_KEYS, "a video given as frames (fps, nframes, ... apply to video files)")
    sample_fps = finite_number("sample_fps", item.get("sample_fps", rules.FRAME_LIST_FPS), positive=True)
    given = list(item["video"])
    if not given:
        raise ValueError("a video given as frames has no frames")
    padded = given + given[-1:] * (-len(given) % rules.FRAME_FACTOR)
    first = image_source(given[0], limits)
    height, width = _frame_size(item, first.height, first.width, len(padded), factor)
    budget.take("a video given as frames", len(padded), height, width, patch_size, merge_size)
    frames = np.empty((len(padded), height, width, 3), np.uint8)
    for k, frame in enumerate(given):
        rgb = first if k == 0 else image_source(frame, limits)
        if rgb.size != first.size:
            raise ValueError(
                f"all frames of a video must have one size: frame 0 is {first.size}, frame {k} is {rgb.size} (w, h)"
            )
        frames[k] = rules.resize_frame(np.asarray(rgb), height, width)
    frames[len(given) :] = frames[len(given) - 1]  # qwen-vl-utils' padding to an even count
    return SampledVideo(
        frames=frames,
        sample_fps=sample_fps,
        frame_indices=tuple(min(k, len(given) - 1) for k in range(len(padded))),
        video_fps=None,
        total_frames=len(padded),
    )


class _Budget:
    """Vision tokens of all items together, checked before each item's pixels are decoded or resized."""

    def __init__(self, max_tokens: int, temporal_patch_size: int) -> None:
        self.left, self.max_tokens, self.temporal = max_tokens, max_tokens, temporal_patch_size

    def refund(self, tokens: int) -> None:
        self.left += tokens

    def take(self, what: str, frames: int, height: int, width: int, patch_size: int, merge_size: int) -> int:
        grid_t = -(-frames // self.temporal)
        tokens = grid_t * (height // patch_size) * (width // patch_size) // merge_size**2
        used = self.max_tokens - self.left
        check_tokens(
            what if not used else f"{what} (after {used} tokens of earlier items)",
            grid_t,
            height // patch_size,
            width // patch_size,
            merge_size,
            self.left,
            video=frames > 1,
        )
        self.left -= tokens
        return tokens


# ---- entry point ------------------------------------------------------------------------------------------


def prepare_vision(
    conversations: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
    *,
    patch_size: int = PATCH_SIZE,
    merge_size: int = MERGE_SIZE,
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE,
    max_tokens: int = DEFAULT_MAX_VISION_TOKENS,
    fetch: FetchLimits = DEFAULT_FETCH,
) -> PreparedVision:
    """Fetch, decode, sample and resize every image and video of one conversation (a list of messages) or
    a batch of them, by qwen-vl-utils 0.0.14's rules (see the module docstring and docs/preprocessing.md).

    `max_tokens` bounds the vision tokens of all items together (checked before a video is decoded);
    `fetch` sets the timeout and size cap of http(s) downloads. Patch / merge sizes are the model's
    (Qwen2-VL / Qwen2.5-VL: 14 and 2, so sides are multiples of 28; Qwen3-VL: 16 and 2, multiples of 32).
    """
    patch_size = positive_int("patch_size", patch_size)
    merge_size = positive_int("merge_size", merge_size)
    temporal_patch_size = positive_int("temporal_patch_size", temporal_patch_size)
    if temporal_patch_size != rules.FRAME_FACTOR:
        raise ValueError(
            f"qwen-vl-utils' frame rules assume a temporal patch of 2, got {temporal_patch_size}"
        )
    factor = patch_size * merge_size
    budget = _Budget(positive_int("max_tokens", max_tokens, hint="--max-vision-tokens"), temporal_patch_size)
    images, videos = [], []
    for item in vision_items(conversations):
        if item_kind(item) == "image":
            images.append(_prepare_image(item, factor, merge_size, patch_size, budget, fetch))
        elif "video" not in item:
            raise ValueError(f"a video item needs a 'video' payload, got keys {sorted(item)}")
        elif isinstance(item["video"], (list, tuple)):
            videos.append(_prepare_frame_list(item, factor, merge_size, patch_size, budget, fetch))
        elif isinstance(item["video"], (str, os.PathLike)):
            videos.append(_prepare_video_file(item, factor, merge_size, patch_size, budget, fetch))
        else:
            raise TypeError(
                f"a video must be a path, a file:// or http(s) URL, or a list of frames, got "
                f"{type(item['video']).__name__} (an array of frames: pass list(array))"
            )
    return PreparedVision(tuple(images), tuple(videos), patch_size, temporal_patch_size, merge_size)
