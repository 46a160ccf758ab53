"""One input (a file or a URL) -> a `LatentInput`: its vision tensors, its prompt's token ids, its metadata.

This is the work `latents` does ahead of the model, in worker processes (`qwenvl_min.inputs.pipeline`):
decode, sample, resize and patchify by the checkpoint's processor settings (the same rules as `run`),
then the token ids the decoder sees:
- without a prompt, just the vision block `<|vision_start|> pads <|vision_end|>` (no tokenizer needed;
  a Qwen3-VL video is one such block per temporal patch inside an outer pair, without the timestamp text);
- with `Recipe.prompt`, the checkpoint's chat template with the image or video in the user turn followed
  by the prompt text, and the generation prompt (what `run --prompt` feeds the model).

Images follow the HF processor rules with the checkpoint's pixel budget; videos follow qwen-vl-utils' rules
(2 fps, its per-frame and total-pixel budgets) changed only by the recipe's flags. A video's metadata says
which source frames were kept and when (see `video_timing`). Qwen3-VL checkpoints (patch 16, mean / std
0.5, time as timestamp text rather than `second_per_grid_ts`) follow their processor family's settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..inputs.budget import DEFAULT_MAX_VISION_TOKENS
from ..inputs.checkpoint_settings import family_settings, image_settings, video_settings
from ..inputs.input_lists import InputSource
from ..inputs.media_sources import FetchLimits, image_source
from ..inputs.settings_inputs import image_inputs, sampled_video
from ..inputs.vision_messages import SampledVideo
from ..model.config import QWEN3, Config

VIDEO_RULES = "qwen-vl-utils 0.0.14"  # part of a video's resume key (see `records`)


@dataclass(frozen=True)
class Recipe:
    """How inputs are prepared: pixel budgets, video sampling (None: the checkpoint's / qwen-vl-utils'
    defaults, as the CLI flags of the same names) and the prompt (None: the vision block alone)."""

    min_pixels: int | None = None
    max_pixels: int | None = None
    max_vision_tokens: int | None = None
    fps: float | None = None
    num_frames: int | None = None
    max_frames: int | None = None
    total_pixels: int | None = None
    prompt: str | None = None


@dataclass(frozen=True, eq=False)
class LatentInput:
    """One prepared input: what the model takes for it, and what is stored beside its latents.

    `vision` holds one item's tensors under the model's keyword names: `pixel_values` (N, P) and
    `image_grid_thw` (1, 3), or `pixel_values_videos`, `video_grid_thw` and (not on Qwen3-VL)
    `second_per_grid_ts` (1,).
    """

    name: str
    input_ids: Tensor  # (T,) int64
    vision: dict[str, Tensor]
    metadata: dict[str, Any]  # JSON values

    @property
    def kind(self) -> str:
        return "video" if "video_grid_thw" in self.vision else "image"

    @property
    def grid_thw(self) -> Tensor:  # (1, 3)
        return self.vision["video_grid_thw" if self.kind == "video" else "image_grid_thw"]

    @property
    def rows(self) -> int:
        """Patch rows (N): what the item costs the tower."""
        return int(self.grid_thw.prod())

    def pin_memory(self) -> LatentInput:
        """The same input in page-locked memory (DataLoader's pin_memory thread calls this)."""
        return replace(self, vision={k: t.pin_memory() for k, t in self.vision.items()})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> LatentInput:
        moved = {k: t.to(device, non_blocking=non_blocking) for k, t in self.vision.items()}
        return replace(self, input_ids=self.input_ids.to(device, non_blocking=non_blocking), vision=moved)


def video_timing(
    video: SampledVideo,
    temporal_patch: int,
    second_per_grid: float | None,
    timestamps: list[float] | None = None,
) -> dict[str, Any]:
    """When a video's kept frames were: source frame numbers, rates, and each temporal patch's span.

    `patch_seconds[k]` = [t of its first frame, t of its last frame], t = source frame / file fps (a frame
    list: position / sample fps). Qwen3-VL has no `second_per_grid_ts` (None); `timestamps` are the
    seconds its prompt labels each temporal patch with (the mean of the two)."""
    rate = video.video_fps or video.sample_fps
    indices = list(video.frame_indices)
    spans = [
        [indices[k] / rate, indices[min(k + temporal_patch, len(indices)) - 1] / rate]
        for k in range(0, len(indices), temporal_patch)
    ]
    return {
        "frame_indices": indices,
        "video_fps": video.video_fps,
        "sample_fps": video.sample_fps,
        "second_per_grid_ts": second_per_grid,
        "patch_seconds": spans,
    } | ({} if timestamps is None else {"timestamps": timestamps})


def vision_only_ids(config: Config, kind: str, grid_thw: Tensor) -> Tensor:
    """(T,) ids `<|vision_start|> pads <|vision_end|>` for one item (grid_thw (1, 3) or (3,)). A Qwen3-VL
    video is one such block per temporal patch inside an outer pair (its processor puts timestamp text
    before each; there is no tokenizer here, and the positions of the pads do not depend on it)."""
    t, h, w = (int(x) for x in grid_thw.reshape(3))
    start, end = config.vision_start_token_id, config.vision_end_token_id
    per_frame = h * w // config.vision.merge_size**2
    if kind == "video" and config.model_type in QWEN3:
        return torch.tensor([start, *[start, *[config.video_token_id] * per_frame, end] * t, end])
    pad = config.video_token_id if kind == "video" else config.image_token_id
    return torch.tensor([start, *[pad] * (t * per_frame), end])


class InputPreparer:
    """`preparer(source) -> LatentInput` for one model and recipe (picklable: it holds settings only; the
    tokenizer is loaded in each process that needs it)."""

    def __init__(self, config: Config, checkpoint_dir: str | os.PathLike[str] | None, recipe: Recipe) -> None:
        self.config, self.recipe = config, recipe
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        directory = self.checkpoint_dir
        family = "qwen3" if config.model_type in QWEN3 else "qwen2"  # the processor's
        self.image = image_settings(directory) if directory else family_settings(family, video=False)
        self.video = video_settings(directory) if directory else family_settings(family, video=True)
        self._processor: Any = None
        if recipe.prompt is not None:
            self.processor()  # a missing tokenizer or template is found before any work

    def processor(self) -> Any:
        from ..inputs.processor import Processor

        if self._processor is None:
            if self.checkpoint_dir is None:
                raise ValueError(
                    "a prompt needs the checkpoint's tokenizer and chat template: load a checkpoint"
                )
            self._processor = Processor.from_pretrained(self.checkpoint_dir)
        return self._processor

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_processor": None}

    @property
    def max_tokens(self) -> int:
        given = self.recipe.max_vision_tokens
        return DEFAULT_MAX_VISION_TOKENS if given is None else given

    def __call__(self, source: InputSource) -> LatentInput:
        if source.is_video:
            vision, timing = self._video(source)
        else:
            vision, timing = self._image(source), None
        kind = "video" if timing is not None else "image"
        grid = vision["video_grid_thw" if timing is not None else "image_grid_thw"]
        ids = self._ids(kind, grid, timing)
        location = source.location if source.is_url else os.fspath(Path(source.location).resolve())
        metadata: dict[str, Any] = {"source": location, "kind": kind, "grid_thw": grid[0].tolist()}
        if timing is not None:
            metadata["video"] = timing
        return LatentInput(source.name, ids, vision, metadata)

    def _image(self, source: InputSource) -> dict[str, Tensor]:
        r = self.recipe
        image = image_source(source.location, FetchLimits()) if source.is_url else source.location
        return image_inputs(image, r.min_pixels, r.max_pixels, self.max_tokens, self.image)

    def _video(self, source: InputSource) -> tuple[dict[str, Tensor], dict[str, Any]]:
        r, settings = self.recipe, self.video
        prepared = sampled_video(
            source.location,
            r.min_pixels,
            r.max_pixels,
            self.max_tokens,
            settings,
            fps=r.fps,
            num_frames=r.num_frames,
            max_frames=r.max_frames,
            total_pixels=r.total_pixels,
        )
        vision = prepared.model_inputs(settings.family)
        if settings.family == "qwen3":  # time goes into the prompt as each temporal patch's timestamp
            stamps = prepared.video_timestamps()[0]
            timing = video_timing(prepared.videos[0], settings.temporal_patch_size, None, stamps)
        else:
            seconds = float(vision["second_per_grid_ts"][0])
            timing = video_timing(prepared.videos[0], settings.temporal_patch_size, seconds)
        return vision, timing

    def _ids(self, kind: str, grid_thw: Tensor, timing: dict[str, Any] | None) -> Tensor:
        if self.recipe.prompt is None:
            return vision_only_ids(self.config, kind, grid_thw)
        from ..inputs.prompts import encode

        processor = self.processor()
        content = [{"type": kind}, {"type": "text", "text": self.recipe.prompt}]
        text = processor.apply_chat_template([{"role": "user", "content": content}])
        encoded = encode(
            processor.tokenizer,
            text,
            **{f"{kind}_grid_thw": grid_thw},
            merge_size=self.config.vision.merge_size,
            max_length=self.config.text.max_position_embeddings,
            video_timestamps=None if timing is None or "timestamps" not in timing else [timing["timestamps"]],
        )
        return encoded["input_ids"][0]
