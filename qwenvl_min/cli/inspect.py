"""`qwenvl-min inspect IMAGE|VIDEO`: what an input costs (resize, grid, patches, windows, tokens), with no
weights loaded; with `--png PATH` also a picture of its tiling.

Whose budget: with `--model DIR`, that checkpoint's (its preprocessor_config.json for images, its
config.json for patch, merge and window sizes), as `run --model DIR` uses; without it, the library
default, which is HF's processor class default (images 3136..1003520 pixels), not what published
checkpoints ship (Qwen2.5-VL: max_pixels 12845056); `--family qwen3-vl` without --model: the published
Qwen3-VL processor files' budget (patch 16). Videos are sampled and sized by qwen-vl-utils' rules
either way (`run` does the same).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..inputs import video_qwen3
from ..inputs.checkpoint_settings import family_settings, image_settings
from ..inputs.preprocess import (
    IMAGE_MAX_PIXELS,
    IMAGE_MIN_PIXELS,
    load_rgb,
)
from ..inputs.qwen_vl_rules import VIDEO_MAX_TOKENS, VIDEO_MIN_TOKENS, frame_pixel_budget
from ..inputs.settings_inputs import pixel_range
from ..model.config import QWEN3, Config, ConfigError
from ..utils import console
from ..utils.fs import write_atomic
from ..weights_convert.checkpoint import CONFIG_FILE, is_converted, read_json, read_our_config
from .options import add_pixel_budget
from .support import (
    RELEASED,
    CliError,
    VideoFlags,
    is_video,
    preprocess,
    vision_prompt,
    window_summary,
)

DEFAULT_BUDGET = (
    f"the library default: {IMAGE_MIN_PIXELS}..{IMAGE_MAX_PIXELS} pixels per image (HF's processor class "
    "default, not a published checkpoint's)"
)
QWEN3_BUDGET = (
    f"Qwen3-VL's published processor files: {video_qwen3.IMAGE_MIN_PIXELS}..{video_qwen3.IMAGE_MAX_PIXELS} "
    "pixels per image"
)


def register(sub: argparse._SubParsersAction) -> None:
    inspect = sub.add_parser(
        "inspect",
        help="token cost and tiling of an image or video (no weights)",
        description="What an input costs the model, with no weights loaded. Image budget: with --model DIR "
        "that checkpoint's preprocessor_config.json (what `run --model DIR` uses); without it the library "
        f"default, min_pixels {IMAGE_MIN_PIXELS} (56*56) .. max_pixels {IMAGE_MAX_PIXELS} (1280*28*28), "
        "which is HF's processor class default and NOT what published checkpoints ship (Qwen2.5-VL's "
        "max_pixels is 12845056: a 3024x4032 photo is 1230 tokens by default, 15552 with its --model). "
        "Videos: qwen-vl-utils' sampling and sizes either way. --min-pixels / --max-pixels override both.",
    )
    inspect.add_argument("input", help="an image or video file")
    inspect.add_argument(
        "--model",
        default=None,
        metavar="DIR",
        help="a checkpoint directory (HF or converted): its image budget and geometry, no weights read "
        "(default: the library's budget, see above)",
    )
    add_pixel_budget(inspect)
    inspect.add_argument(
        "--family",
        choices=sorted(RELEASED),
        default=None,
        help="whose windows to report without --model (default qwen2.5-vl; with --model, its config.json)",
    )
    inspect.add_argument(
        "--png",
        default=None,
        metavar="PATH",
        help="also draw the tiling to PATH (not over a file without --force)",
    )
    inspect.add_argument("--force", action="store_true", help="let --png replace an existing file")
    inspect.add_argument("--json", action="store_true", help="print the report as one JSON object")
    inspect.set_defaults(func=cmd_inspect)


def _checkpoint_config(directory: Path) -> Config:
    """The model config of a checkpoint directory (HF or converted), without reading weights."""
    if not directory.is_dir():
        raise CliError(
            f"--model {directory} is not a directory; inspect reads a checkpoint directory's config.json and "
            "preprocessor_config.json (no weights)"
        )
    config_json = read_json(directory / CONFIG_FILE, "the model config")
    if is_converted(config_json):
        return read_our_config(directory)
    try:
        return Config.from_hf(config_json)
    except ConfigError as err:
        raise CliError(f"{directory / CONFIG_FILE}: {err}") from None


def _png_target(args: argparse.Namespace, path: Path) -> Path | None:
    """--png's path, checked before any work: not the input, not an existing file without --force."""
    if args.png is None:
        return None
    out = Path(args.png)
    if out.exists() and out.resolve() == path.resolve():
        raise CliError(f"--png {out} is the input file; choose another name for the picture")
    if out.is_dir():
        raise CliError(
            f"--png {out} is a directory; give a file name, e.g. {out / (path.stem + '.tiling.png')}"
        )
    if out.exists() and not args.force:
        raise CliError(f"--png {out} already exists; pass --force to replace it, or choose another name")
    if not out.parent.is_dir():
        raise CliError(f"--png {out}: the directory {out.parent} does not exist")
    return out


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..interp.overlay import draw_tiling, frames_from_patches

    path = Path(args.input)
    png = _png_target(args, path)
    checkpoint = None if args.model is None else Path(args.model)
    if checkpoint is not None:
        if args.family is not None:
            raise CliError("--family is for inspect without --model; the checkpoint's config.json says it")
        config = _checkpoint_config(checkpoint)
        family = config.model_type.replace("_5", ".5").replace("_", "-")
    else:
        family = args.family or "qwen2.5-vl"
        config = Config.preset(RELEASED[family])  # only the config: no weights are built
    v = config.vision
    processor_family = "qwen3" if config.model_type in QWEN3 else "qwen2"
    flags = VideoFlags.from_args(args)
    inputs = preprocess(
        path,
        args.min_pixels,
        args.max_pixels,
        args.max_vision_tokens,
        checkpoint_dir=checkpoint,
        flags=flags,
        family=processor_family,
    )
    video = is_video(path)
    grid_key, rows_key = (
        ("video_grid_thw", "pixel_values_videos") if video else ("image_grid_thw", "pixel_values")
    )
    grid = inputs[grid_key]
    t, h, w = grid[0].tolist()
    tokens = t * h * w // v.merge_size**2
    # <|vision_start|> / <|vision_end|> around the pads (Qwen3-VL videos: around each frame too)
    markers = int(vision_prompt(config, inputs).shape[1]) - tokens
    factor = v.patch_size * v.merge_size
    if video:  # qwen-vl-utils' per-frame budget for this many frames (the total-pixel cap included)
        low, _ = pixel_range(
            args.min_pixels, args.max_pixels, VIDEO_MIN_TOKENS * factor**2, VIDEO_MAX_TOKENS * factor**2
        )
        lo, hi = frame_pixel_budget(
            t * v.temporal_patch_size,
            factor=factor,
            min_pixels=low,
            max_pixels=args.max_pixels,
            total_pixels=args.total_pixels,
        )
        lo, hi = int(lo), int(hi)
        budget_from = "qwen-vl-utils' video rules"
    else:
        settings = (
            family_settings(processor_family, video=False)
            if checkpoint is None
            else image_settings(checkpoint)
        )
        lo, hi = pixel_range(args.min_pixels, args.max_pixels, settings.min_pixels, settings.max_pixels)
        default_budget = DEFAULT_BUDGET if processor_family == "qwen2" else QWEN3_BUDGET
        budget_from = default_budget if checkpoint is None else settings.source
        if settings.source == "defaults" and checkpoint is not None:
            budget_from = f"{checkpoint} has no processor config: {default_budget}"
    if args.min_pixels is not None or args.max_pixels is not None:
        budget_from = f"--min-pixels / --max-pixels over {budget_from}"
    windows = window_summary(config, torch.tensor([[1, h, w]]))
    report: dict[str, Any] = {  # the --json schema (docs/cli.md)
        "input": str(path),
        "kind": "video" if video else "image",
        "family": family,
        "model": None if checkpoint is None else str(checkpoint),
        "input_size": None if video else list(load_rgb(path).size),
        "frames_used": t * v.temporal_patch_size if video else None,
        # Qwen3-VL carries time as timestamp text, not seconds per grid
        "seconds_per_temporal_patch": float(inputs["second_per_grid_ts"][0])
        if "second_per_grid_ts" in inputs
        else None,
        "resized": [w * v.patch_size, h * v.patch_size],
        "pixel_budget": [lo, hi],
        "budget_from": budget_from,
        "grid_thw": [t, h, w],
        "patches": t * h * w,
        "values_per_patch": int(inputs[rows_key].shape[1]),
        "merged_tokens": tokens,
        "prompt_tokens": tokens + markers,
        "windows": windows,
        "png": None if png is None else str(png),
    }
    if png is not None:
        mean, std = family_settings(processor_family, video=video).normalization
        frames = frames_from_patches(
            inputs[rows_key],
            (t, h, w),
            v.patch_size,
            v.temporal_patch_size,
            v.merge_size,
            image_mean=mean,
            image_std=std,
        )
        caption = [f"{path.name}: {t}x{h}x{w} patches -> {tokens} tokens" + (" (frame 0)" if video else "")]
        window = v.window_merged if v.family == "qwen2_5_vl" else None
        picture = draw_tiling(
            frames[0],
            (h, w),
            patch_size=v.patch_size,
            merge_size=v.merge_size,
            window_merged=window,
            caption=caption,
        )
        try:
            write_atomic(png, lambda tmp: picture.save(tmp, format="PNG"), replace=args.force)
        except FileExistsError:
            raise CliError(f"--png {png} appeared while inspecting; pass --force to replace it") from None
    if args.json:
        console.result_json(report)
    else:
        _print_report(report, path, video, v.temporal_patch_size, int(inputs[rows_key].shape[1]))
    if png is not None:
        console.status("wrote: %s", png)
    return 0


def _print_report(report: dict[str, Any], path: Path, video: bool, temporal_patch: int, values: int) -> None:
    t, h, w = report["grid_thw"]
    lo, hi = report["pixel_budget"]
    tokens = report["merged_tokens"]
    lines = [f"{path} ({report['kind']})"]
    if not video:
        lines.append(f"  input size        {report['input_size'][0]}x{report['input_size'][1]} px (w x h)")
    else:
        seconds = report["seconds_per_temporal_patch"]
        lines.append(
            f"  frames used       {report['frames_used']} (after padding to a multiple of {temporal_patch})"
            + ("" if seconds is None else f", {seconds:g} s per temporal patch")
        )
    lines += [
        f"  smart_resize      {report['resized'][0]}x{report['resized'][1]} px (pixel budget {lo}..{hi})",
        f"  budget from       {report['budget_from']}",
        f"  grid (t, h, w)    {t} x {h} x {w}",
        f"  patches           {report['patches']} rows x {values} values",
        f"  windows ({report['family']}) {report['windows']} per temporal patch",
        f"  merged tokens     {tokens} (+{report['prompt_tokens'] - tokens} for <|vision_start|>/<|vision_end|> = "
        f"{report['prompt_tokens']} prompt tokens)",
    ]
    console.result("\n".join(lines))
