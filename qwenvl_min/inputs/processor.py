"""`Processor.from_pretrained(dir)`: text + images + videos -> the model's inputs, with the checkpoint's own
settings as the defaults (see `qwenvl_min.inputs.checkpoint_settings` for which file wins).

    processor = Processor.from_pretrained("Qwen2.5-VL-7B-Instruct")
    text = processor.apply_chat_template(messages)             # the checkpoint's Jinja template
    batch = processor(text=text, images=[photo])               # its pixel budget (e.g. max_pixels 12845056)
    out = model(**batch)                                       # every key is a model argument

Output keys are those of transformers' processors: input_ids, attention_mask, mm_token_type_ids, and
pixel_values / image_grid_thw, pixel_values_videos / video_grid_thw / second_per_grid_ts when given. A
`Processor()` built by hand (no checkpoint) keeps the library defaults and the built-in Qwen chat format.

Qwen3-VL checkpoints (`checkpoint_settings.processor_family` "qwen3") follow its processor: patch 16,
mean / std 0.5, its video rules (`qwenvl_min.inputs.video_qwen3`: 2 frames per second, a budget for the
whole clip) and timestamped per-frame video blocks in the prompt; no second_per_grid_ts. Build one by hand
with `family_settings("qwen3", video=...)` for `image=` / `video=`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from . import checkpoint_settings as settings
from . import video_qwen3
from .budget import DEFAULT_MAX_VISION_TOKENS
from .chat_template import render
from .preprocess import (
    IMAGE_MAX_PIXELS,
    IMAGE_MIN_PIXELS,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    ImageInput,
    concat_outputs,
    preprocess_image,
    preprocess_video,
)
from .prompts import DEFAULT_SYSTEM_PROMPT, Message, chat_text, encode, load_tokenizer
from .vision_messages import PreparedVision

VideoInput = Any  # a video file path, a uint8 array (T, H, W, C) or a list of frames


class Processor:
    """Tokenizer + image / video settings + chat template. Every setting can be replaced explicitly
    (`dataclasses.replace(processor.image, max_pixels=...)`, or per call with `min_pixels=` / `max_pixels=`)."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        image: settings.VisionSettings | None = None,
        video: settings.VisionSettings | None = None,
        chat_template: str | None = None,
        special_tokens: Mapping[str, str] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.image = image or settings.VisionSettings(IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS)
        self.video = video or settings.VisionSettings(VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)
        if self.image.family != self.video.family:
            raise ValueError(
                f"image settings of family {self.image.family!r} with video settings of family "
                f"{self.video.family!r}: one processor follows one model family's rules"
            )
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens or {})

    @property
    def family(self) -> str:
        """Whose processor rules this follows: "qwen2" (Qwen2-VL / Qwen2.5-VL) or "qwen3" (Qwen3-VL)."""
        return self.video.family

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> Processor:
        """From a checkpoint directory (HF or converted): tokenizer.json, processor configs, template."""
        directory = Path(directory)
        family = settings.processor_family(directory)
        return cls(
            load_tokenizer(directory),
            image=settings.image_settings(directory, family),
            video=settings.video_settings(directory, family),
            chat_template=settings.chat_template(directory),
            special_tokens=settings.special_tokens(directory),
        )

    # ---- text ---------------------------------------------------------------------------------------------
    def apply_chat_template(
        self,
        conversation: Sequence[Message] | Sequence[Sequence[Message]],
        *,
        add_generation_prompt: bool = True,
        add_vision_id: bool = False,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    ) -> str | list[str]:
        """The prompt text of one conversation (or a list for a batch), one pad per image / video.

        With the checkpoint's template this equals transformers' `processor.apply_chat_template(...,
        tokenize=False)`; `system_prompt` then comes from the template itself (pass it as a system message
        to change it). Without one, the built-in Qwen format (`prompts.chat_text`) is used."""
        batched = bool(conversation) and not isinstance(conversation[0], Mapping)
        conversations = list(conversation) if batched else [conversation]
        texts = []
        for messages in conversations:
            if not messages:
                raise ValueError("no messages given")
            if self.chat_template is None:
                if add_vision_id:
                    raise ValueError(
                        "add_vision_id needs the checkpoint's chat template; this processor has none"
                    )
                texts.append(
                    chat_text(
                        messages, add_generation_prompt=add_generation_prompt, system_prompt=system_prompt
                    )
                )
            else:
                variables = {**self.special_tokens, "add_vision_id": add_vision_id}
                texts.append(
                    render(
                        self.chat_template,
                        messages,
                        add_generation_prompt=add_generation_prompt,
                        variables=variables,
                    )
                )
        return texts if batched else texts[0]

    # ---- everything ---------------------------------------------------------------------------------------
    def __call__(
        self,
        *,
        text: str | Sequence[str],
        images: ImageInput | Sequence[ImageInput] | None = None,
        videos: Sequence[VideoInput] | None = None,
        fps: float | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_tokens: int = DEFAULT_MAX_VISION_TOKENS,
        max_length: int | None = None,
        vision: PreparedVision | None = None,
    ) -> dict[str, Tensor]:
        """Preprocess media with the settings (min_pixels / max_pixels override both kinds for this call),
        expand each pad to its token count and tokenize (left padded). `fps`: the recording rate of videos
        given as frames or arrays (files state their own).

        `vision`: a `prepare_vision(messages)` result instead of images / videos (how HF's processor takes
        qwen-vl-utils' output): its images and frames are already resized and sampled and are used as they
        are, with `second_per_grid_ts` from their sampled fps (Qwen3-VL: timestamps from their frame
        numbers, as transformers computes them from qwen-vl-utils' video metadata). An empty list of images
        or videos is the same as none."""
        _check_text(text)
        images = None if isinstance(images, (list, tuple)) and not images else images
        videos = None if isinstance(videos, (list, tuple)) and not videos else videos
        out: dict[str, Tensor] = {}
        timestamps: list[list[float]] | None = None
        if vision is not None:
            if images is not None or videos is not None or fps is not None:
                raise ValueError(
                    "pass either vision= (from prepare_vision) or images / videos / fps, not both"
                )
            if vision.merge_size != self.image.merge_size or vision.patch_size != self.image.patch_size:
                raise ValueError(
                    f"vision was prepared for patch {vision.patch_size} / merge {vision.merge_size}, this "
                    f"processor uses {self.image.patch_size} / {self.image.merge_size}; call prepare_vision "
                    "with the processor's sizes"
                )
            out = vision.model_inputs(self.family)
            tokens = encode(
                self.tokenizer,
                text,
                image_grid_thw=out.get("image_grid_thw"),
                video_grid_thw=out.get("video_grid_thw"),
                merge_size=vision.merge_size,
                max_length=max_length,
                video_timestamps=vision.video_timestamps()
                if self.family == "qwen3" and vision.videos
                else None,
            )
            return {**tokens, **out}
        if images is not None:
            image = self._budget(self.image, min_pixels, max_pixels)
            mean, std = image.normalization
            out |= preprocess_image(
                images,
                min_pixels=image.min_pixels,
                max_pixels=image.max_pixels,
                patch_size=image.patch_size,
                temporal_patch_size=image.temporal_patch_size,
                merge_size=image.merge_size,
                max_tokens=max_tokens,
                image_mean=mean,
                image_std=std,
            )
        if videos is not None:
            video = self._budget(self.video, min_pixels, max_pixels)
            if isinstance(videos, (str, os.PathLike)) or not isinstance(videos, Sequence):
                raise ValueError("videos must be a list (one entry per video)")
            if self.family == "qwen3":
                clips, timestamps = [], []
                for clip in videos:
                    inputs, seconds = video_qwen3.preprocess_video(
                        clip,
                        fps=fps,
                        sample_fps=video.sample_fps,
                        num_frames=video.num_frames,
                        min_pixels=video.min_pixels,
                        max_pixels=video.max_pixels,
                        min_frames=video.min_frames,
                        max_frames=video.max_frames,
                        cap_pixels_per_frame=video.cap_pixels_per_frame,
                        patch_size=video.patch_size,
                        temporal_patch_size=video.temporal_patch_size,
                        merge_size=video.merge_size,
                        max_tokens=max_tokens,
                    )
                    clips.append(inputs)
                    timestamps.append(seconds)
                out |= concat_outputs(clips)
            else:
                out |= concat_outputs([self._qwen2_video(clip, video, fps, max_tokens) for clip in videos])
        tokens = encode(
            self.tokenizer,
            text,
            image_grid_thw=out.get("image_grid_thw"),
            video_grid_thw=out.get("video_grid_thw"),
            merge_size=self.image.merge_size if images is not None else self.video.merge_size,
            max_length=max_length,
            video_timestamps=timestamps,
        )
        return {**tokens, **out}

    @staticmethod
    def _qwen2_video(
        clip: VideoInput, video: settings.VisionSettings, fps: float | None, max_tokens: int
    ) -> dict[str, Tensor]:
        return preprocess_video(
            clip,
            fps=fps,
            sample_fps=video.sample_fps,
            num_frames=video.num_frames,
            min_pixels=video.min_pixels,
            max_pixels=video.max_pixels,
            min_frames=video.min_frames,
            max_frames=video.max_frames,
            patch_size=video.patch_size,
            temporal_patch_size=video.temporal_patch_size,
            merge_size=video.merge_size,
            max_tokens=max_tokens,
        )

    @staticmethod
    def _budget(
        base: settings.VisionSettings, min_pixels: int | None, max_pixels: int | None
    ) -> settings.VisionSettings:
        changes = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        return dataclasses.replace(base, **changes) if changes else base


def _check_text(text: object) -> None:
    """The prompt must be there: a non-empty string, or a non-empty list of them (one per batch row)."""
    hint = "e.g. text=processor.apply_chat_template(messages), which holds one vision placeholder per image"
    if text is None:
        raise ValueError(f"text is missing: the processor needs the prompt ({hint})")
    rows = [text] if isinstance(text, str) else text
    if not isinstance(rows, Sequence) or not all(isinstance(row, str) for row in rows):
        raise TypeError(
            f"text must be a string or a list of strings (one per batch row), got {type(text).__name__}"
        )
    if not rows:
        raise ValueError(f"text is an empty list: give one prompt per batch row ({hint})")
    empty = [i for i, row in enumerate(rows) if not row]
    if empty:
        where = "text is" if isinstance(text, str) else f"text row(s) {empty} are"
        raise ValueError(f"{where} empty: give the prompt ({hint})")
