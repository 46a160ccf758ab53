"""What the `qwenvl-min` subcommands share: input files to model inputs, the token-free vision prompt,
window summaries, loading a checkpoint (HF or converted), and the error type the CLI prints as one line."""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..inputs.checkpoint_settings import VisionSettings, family_settings, image_settings, video_settings
from ..inputs.input_lists import VIDEO_SUFFIXES
from ..inputs.settings_inputs import image_inputs, sampled_video
from ..inputs.vision_messages import PreparedVision
from ..latents.prepare import vision_only_ids
from ..model.config import Config
from ..model.dispatch import KERNELS_ENV, resolve_kernels
from ..model.geometry import window_unit_order
from ..model.qwenvl import QwenVL
from ..utils.devices import DeviceError, check_device
from ..utils.dtypes import parse_dtype
from ..utils.faults import pause_point
from ..utils.mapped_files import report_bus_errors
from ..utils.validate import guard_finite_hidden_states

log = logging.getLogger(__name__)
FAMILIES = {"qwen2.5-vl": "tiny-qwen2.5-vl", "qwen2-vl": "tiny-qwen2-vl", "qwen3-vl": "tiny-qwen3-vl"}  # demo
# inspect: the released vision geometry of each family
RELEASED = {"qwen2.5-vl": "qwen2.5-vl-7b", "qwen2-vl": "qwen2-vl-7b", "qwen3-vl": "qwen3-vl-8b"}


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


def is_video(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def check_input_file(path: str | os.PathLike[str], kind: str) -> None:
    """Before any weights are read: `path` is a file. The words are the readers' own (`inspect` and
    `latents` say the same when the reader finds it): `kind` is "an image" or "a video"."""
    if os.path.isdir(path):
        raise CliError(f"expected {kind} file, got a directory: {os.fspath(path)!r}")
    if not os.path.exists(path):
        raise CliError(f"{kind.split()[-1]} file not found: {os.fspath(path)!r}")


@dataclass(frozen=True)
class VideoFlags:
    """The CLI's video sampling flags (None: qwen-vl-utils' default, 2 fps and its total-pixel cap)."""

    fps: float | None = None
    num_frames: int | None = None
    max_frames: int | None = None
    total_pixels: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> VideoFlags:
        return cls(args.fps, args.num_frames, args.max_frames, args.total_pixels)


def video_inputs(
    path: str | os.PathLike[str],
    min_pixels: int | None,
    max_pixels: int | None,
    max_tokens: int | None,
    settings: VisionSettings,
    flags: VideoFlags = VideoFlags(),
) -> dict[str, Tensor]:
    """A video file -> the model's video kwargs (`prepared_video`, normalized by the settings' family:
    Qwen3-VL's mean / std 0.5 and no second_per_grid_ts; its prompt needs `prepared_video`'s timestamps)."""
    vision = prepared_video(path, min_pixels, max_pixels, max_tokens, settings, flags)
    return vision.model_inputs(settings.family)


def prepared_video(
    path: str | os.PathLike[str],
    min_pixels: int | None,
    max_pixels: int | None,
    max_tokens: int | None,
    settings: VisionSettings,
    flags: VideoFlags = VideoFlags(),
) -> PreparedVision:
    """The sampled, resized frames of a video file by qwen-vl-utils' rules, changed only by the flags
    (`inputs.settings_inputs.sampled_video`), before normalization."""
    return sampled_video(
        path,
        min_pixels,
        max_pixels,
        max_tokens,
        settings,
        fps=flags.fps,
        num_frames=flags.num_frames,
        max_frames=flags.max_frames,
        total_pixels=flags.total_pixels,
    )


def preprocess(
    path: str | os.PathLike[str],
    min_pixels: int | None,
    max_pixels: int | None,
    max_tokens: int | None = None,
    checkpoint_dir: Path | None = None,
    flags: VideoFlags = VideoFlags(),
    family: str = "qwen2",
) -> dict[str, Tensor]:
    """One input file, image or video by suffix -> the model's vision kwargs (budget checked first); the
    checkpoint's processor settings are the defaults when `checkpoint_dir` is given, else the processor
    family's ("qwen2" or "qwen3")."""
    if is_video(path):
        settings = family_settings(family, True) if checkpoint_dir is None else video_settings(checkpoint_dir)
        return video_inputs(path, min_pixels, max_pixels, max_tokens, settings, flags)
    settings = family_settings(family, False) if checkpoint_dir is None else image_settings(checkpoint_dir)
    return image_inputs(path, min_pixels, max_pixels, max_tokens, settings)


def vision_prompt(config: Config, inputs: dict[str, Tensor]) -> Tensor:
    """(1, T) ids holding just the vision blocks, <|vision_start|> pads <|vision_end|> each: what `latents`
    runs (no tokenizer needed) and what the demo's prompt is built around; images then videos, each as
    `latents.prepare.vision_only_ids` writes it (Qwen3-VL videos: one block per temporal patch)."""
    blocks = [torch.empty(0, dtype=torch.int64)]
    for kind in ("image", "video"):
        for grid in inputs.get(f"{kind}_grid_thw", torch.empty(0, 3)):
            blocks.append(vision_only_ids(config, kind, grid))
    return torch.cat(blocks)[None]


def window_summary(config: Config, grid_thw: Tensor) -> str:
    """e.g. '6 windows of up to 8x8 patches: 4 x 64, 2 x 32 patches'; Qwen2-VL attends per frame."""
    v = config.vision
    if v.family != "qwen2_5_vl":
        name = "Qwen2-VL" if v.family == "qwen2_vl" else "Qwen3-VL"
        return f"none ({name}: every block attends to the whole frame, {int(grid_thw[0, 1] * grid_thw[0, 2])} patches)"
    _, sizes = window_unit_order(grid_thw, v.window_merged, v.merge_size)
    side = v.window_merged * v.merge_size
    counts = ", ".join(f"{n} x {size}" for size, n in sorted(Counter(sizes).items(), reverse=True))
    full = ", ".join(map(str, v.fullatt_block_indexes)) or "none"
    return f"{len(sizes)} of up to {side}x{side} patches ({counts} patches); full-frame blocks: {full}"


def check_kernel_choice(device: str) -> None:
    """QWENVL_MIN_KERNELS=1 (the Triton kernels everywhere) where they cannot run: one line before any
    weights are read, instead of a traceback from the first forward."""
    try:
        choice = resolve_kernels(None)
    except ValueError as err:  # a value other than 0 / 1
        raise CliError(str(err)) from None
    except RuntimeError as err:  # triton is not importable
        raise CliError(f"{KERNELS_ENV}=1: {err}") from None
    if choice != "triton":
        return
    from ..kernels import check_device as check_kernel_device

    try:
        check_kernel_device(device)
    except RuntimeError as err:
        reason = str(err).split(": ", 1)[-1]  # the check's own words, without its op name
        raise CliError(
            f"{KERNELS_ENV}=1 asks for the Triton kernels, which cannot run on {device} here: {reason}; or "
            f"unset {KERNELS_ENV} (or set it to 0) for the torch path"
        ) from None


def load_model(
    path: str, dtype: str | None, device: str, verify: bool = False, finite_guard: bool = True
) -> QwenVL:
    """An HF checkpoint directory, a Hub id or a converted checkpoint (checked against its manifest, every
    byte with verify), whose forward raises on NaN/inf hidden states instead of answering garbage
    (`finite_guard`: a forward hook; off for compiled generation, which refuses hooks and whose sampling
    checks every step's logits instead)."""
    from ..hf.pretrained import from_pretrained
    from ..weights_convert.checkpoint import CheckpointError

    try:
        check_device(device)  # before reading any weights
    except DeviceError as err:
        raise CliError(str(err)) from None
    check_kernel_choice(device)
    report_bus_errors()  # a shard changed under the run ends with a line saying so, not a bare SIGBUS
    started = time.perf_counter()
    try:
        model = from_pretrained(
            path, dtype="auto" if dtype is None else parse_dtype(dtype), device=device, verify=verify
        )
    except CheckpointError as err:
        raise CliError(str(err)) from err
    if finite_guard:
        guard_finite_hidden_states(model)
    pause_point("cli.model_loaded")
    log.debug(
        "loaded %s (%s, %s, %s) in %.1f s",
        model.checkpoint_dir,
        model.config.model_type,
        model.text.embed_tokens.weight.dtype,
        device,
        time.perf_counter() - started,
    )
    return model
