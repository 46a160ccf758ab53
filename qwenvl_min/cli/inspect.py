"""`qwenvl-min inspect IMAGE|VIDEO`: what an input costs (resize, grid, patches, windows, tokens) and a
picture of its tiling, with no weights loaded."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import torch

from ..inputs.checkpoint_settings import family_settings
from ..inputs.preprocess import load_rgb
from ..inputs.qwen_vl_rules import VIDEO_MAX_TOKENS, VIDEO_MIN_TOKENS, frame_pixel_budget
from ..model.config import QWEN3, Config
from ..utils.fs import write_atomic
from .options import add_pixel_budget
from .support import (
    RELEASED,
    CliError,
    VideoFlags,
    is_video,
    pixel_range,
    preprocess,
    vision_prompt,
    window_summary,
)

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    inspect = sub.add_parser("inspect", help="token cost and tiling of an image or video (no weights)")
    inspect.add_argument("input", help="an image or video file")
    add_pixel_budget(inspect)
    inspect.add_argument(
        "--family", choices=sorted(RELEASED), default="qwen2.5-vl", help="whose patches and windows to draw"
    )
    inspect.add_argument("--out", default=None, help="overlay PNG (default ./<name>.tiling.png)")
    inspect.add_argument("--json", action="store_true", help="print the report as one JSON object")
    inspect.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..interp.overlay import draw_tiling, frames_from_patches

    config = Config.preset(RELEASED[args.family])  # only the config: no weights are built
    v = config.vision
    family = "qwen3" if config.model_type in QWEN3 else "qwen2"  # the processor's
    path = Path(args.input)
    flags = VideoFlags.from_args(args)
    inputs = preprocess(
        path, args.min_pixels, args.max_pixels, args.max_vision_tokens, flags=flags, family=family
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
    mean, std = family_settings(family, video=video).normalization
    frames = frames_from_patches(inputs[rows_key], (t, h, w), v.patch_size, image_mean=mean, image_std=std)
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
    else:
        default = family_settings(family, video=False)
        lo, hi = pixel_range(args.min_pixels, args.max_pixels, default.min_pixels, default.max_pixels)
    windows = window_summary(config, torch.tensor([[1, h, w]]))
    report: dict[str, Any] = {  # the --json schema (docs/cli.md)
        "input": str(path),
        "kind": "video" if video else "image",
        "family": args.family,
        "input_size": None if video else list(load_rgb(path).size),
        "frames_used": t * v.temporal_patch_size if video else None,
        # Qwen3-VL carries time as timestamp text, not seconds per grid
        "seconds_per_temporal_patch": float(inputs["second_per_grid_ts"][0])
        if "second_per_grid_ts" in inputs
        else None,
        "resized": [w * v.patch_size, h * v.patch_size],
        "pixel_budget": [lo, hi],
        "grid_thw": [t, h, w],
        "patches": t * h * w,
        "values_per_patch": int(inputs[rows_key].shape[1]),
        "merged_tokens": tokens,
        "prompt_tokens": tokens + markers,
        "windows": windows,
    }
    if not args.json:
        print(f"{path} ({'video' if video else 'image'})")
        if not video:
            print(f"  input size        {report['input_size'][0]}x{report['input_size'][1]} px (w x h)")
        else:
            seconds = report["seconds_per_temporal_patch"]
            print(
                f"  frames used       {t * v.temporal_patch_size} (after padding to a multiple of {v.temporal_patch_size})"
                + ("" if seconds is None else f", {seconds:g} s per temporal patch")
            )
        print(f"  smart_resize      {w * v.patch_size}x{h * v.patch_size} px (pixel budget {lo}..{hi})")
        print(f"  grid (t, h, w)    {t} x {h} x {w}")
        print(f"  patches           {t * h * w} rows x {inputs[rows_key].shape[1]} values")
        print(f"  windows ({args.family}) {windows} per temporal patch")
        print(
            f"  merged tokens     {tokens} (+{markers} for <|vision_start|>/<|vision_end|> = {tokens + markers} prompt tokens)"
        )
    out = Path(args.out) if args.out else Path(f"{path.stem}.tiling.png")
    if out.exists() and out.resolve() == path.resolve():
        raise CliError(f"--out {out} is the input file; choose another name for the overlay PNG")
    caption = [f"{path.name}: {t}x{h}x{w} patches -> {tokens} tokens" + (" (frame 0)" if video else "")]
    window = v.window_merged if v.family == "qwen2_5_vl" else None
    write_atomic(
        out,
        lambda tmp: draw_tiling(
            frames[0], (h, w), patch_size=v.patch_size, window_merged=window, caption=caption
        ).save(tmp, format="PNG"),
    )
    if args.json:
        print(json.dumps(report | {"overlay": str(out)}))
    log.info("wrote: %s", out)
    return 0
