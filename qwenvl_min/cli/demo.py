"""`qwenvl-min demo`: the main job on an embedded default, no download.

A tiny Qwen2.5-VL (or Qwen2-VL, Qwen3-VL) with seeded random weights, a generated picture and a six-frame
video, followed through the model: resize, grid, patches, windows, merged tokens, 3-D positions, per-stage
timings, a few generated tokens, and PNGs of the tiling and of one vision block's attention. Each family is
preprocessed by its own processor rules (Qwen3-VL: patch 16, mean / std 0.5, its video sampling; its video
is one vision block per temporal patch, without the timestamp text a tokenizer would add).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from ..inputs import video_qwen3
from ..inputs.checkpoint_settings import VisionSettings, family_settings
from ..inputs.preprocess import preprocess_video
from ..inputs.settings_inputs import image_inputs
from ..interp.taps import SegmentMaps
from ..model.config import QWEN3, Config
from ..model.positions import get_rope_index
from ..model.qwenvl import QwenVL
from ..utils import console
from .support import FAMILIES, check_kernel_choice, vision_prompt, window_summary


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo", help="token flow, timings and pictures on a tiny seeded model (no download)"
    )
    demo.add_argument(
        "--out", default="qwenvl-min-demo", help="directory for the PNGs (default ./qwenvl-min-demo)"
    )
    demo.add_argument("--family", choices=sorted(FAMILIES), default="qwen2.5-vl")
    demo.add_argument("--new-tokens", type=int, default=8, help="tokens to generate (default 8)")
    demo.set_defaults(func=cmd_demo)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def demo_image(width: int = 300, height: int = 220) -> Image.Image:
    """A recognisable synthetic picture: sky gradient, sun, house, tree, ground and a checkerboard."""
    y = np.linspace(0, 1, height)[:, None, None]
    sky = (np.array([40, 90, 200]) * (1 - y) + np.array([190, 220, 255]) * y).astype(np.uint8)
    image = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).copy())
    d = ImageDraw.Draw(image)
    d.rectangle([0, int(height * 0.72), width, height], fill=(70, 150, 60))
    d.ellipse([width - 80, 18, width - 30, 68], fill=(255, 215, 40))
    d.rectangle([60, 100, 150, 170], fill=(190, 50, 40))
    d.polygon([(50, 102), (105, 60), (160, 102)], fill=(110, 60, 40))
    d.rectangle([95, 135, 115, 170], fill=(60, 40, 30))
    d.rectangle([70, 115, 88, 132], fill=(200, 230, 255))
    d.rectangle([190, 120, 202, 175], fill=(100, 70, 40))
    d.ellipse([170, 80, 222, 132], fill=(40, 120, 50))
    for i in range(4):
        for j in range(4):
            if (i + j) % 2 == 0:
                d.rectangle([230 + 12 * j, 150 + 12 * i, 241 + 12 * j, 161 + 12 * i], fill=(250, 250, 250))
    return image


def demo_video(frames: int = 6, width: int = 224, height: int = 168) -> list[Image.Image]:
    """A ball crossing a gradient, one position per frame."""
    out = []
    for k in range(frames):
        x = np.linspace(0, 255, width, dtype=np.float64)[None, :, None]
        background = np.broadcast_to(
            np.concatenate([x, 255 - x, np.full_like(x, 128)], axis=2), (height, width, 3)
        )
        frame = Image.fromarray(background.astype(np.uint8))
        cx = 30 + k * (width - 60) // max(1, frames - 1)
        ImageDraw.Draw(frame).ellipse(
            [cx - 22, height // 2 - 22, cx + 22, height // 2 + 22], fill=(255, 255, 255)
        )
        out.append(frame)
    return out


def _position_summary(config: Config, ids: Tensor, positions: Tensor) -> list[str]:
    """One line per run of text / image / video tokens with the range of each position axis."""
    kinds = {config.image_token_id: "image", config.video_token_id: "video"}
    row, pos = ids[0].tolist(), positions[:, 0]
    lines, start = [], 0
    for i in range(1, len(row) + 1):
        if i < len(row) and kinds.get(row[i], "text") == kinds.get(row[start], "text"):
            continue
        kind = kinds.get(row[start], "text")
        axes = [
            f"{axis} {int(pos[a, start:i].min())}..{int(pos[a, start:i].max())}"
            for a, axis in enumerate("thw")
        ]
        lines.append(
            f"  {kind:<6}{i - start:>5} tokens   " + ("   ".join(axes) if kind != "text" else axes[0][2:])
        )
        start = i
    return lines


def _demo_pictures(
    out: Path,
    config: Config,
    settings: VisionSettings,
    image_in: dict[str, Tensor],
    video_in: dict[str, Tensor],
    maps: SegmentMaps,
    block: int,
    frame_count: int,
) -> list[Path]:
    """The demo's PNGs: image tiling, attention heatmaps of `block`, first video frame tiling."""
    from ..interp.overlay import (
        draw_scaled_heatmap,
        draw_tiling,
        frames_from_patches,
        patch_grid_values,
        patch_row_index,
        side_by_side,
    )

    v = config.vision
    mean, std = settings.normalization
    grid = tuple(image_in["image_grid_thw"][0].tolist())
    pixels = frames_from_patches(
        image_in["pixel_values"], grid, v.patch_size, image_mean=mean, image_std=std
    )[0]
    caption = [
        f"{config.name}: {grid[1]}x{grid[2]} patches of {v.patch_size} px -> {grid[1] * grid[2] // 4} tokens",
        "thin: patches  bright: 2x2 merge blocks"
        + ("  colour: attention windows" if v.family == "qwen2_5_vl" else ""),
    ]
    window = v.window_merged if v.family == "qwen2_5_vl" else None
    written = [
        out / "demo_input.png",
        out / "demo_tiling.png",
        out / "demo_attention.png",
        out / "demo_video_tiling.png",
    ]
    draw_tiling(pixels, grid[1:], patch_size=v.patch_size, window_merged=window, caption=caption).save(
        written[1]
    )

    n = grid[1] * grid[2]
    dense = maps.dense(n).mean(0)  # (N, N) mean over heads, input row order
    centre = (grid[1] // 2, grid[2] // 2)
    query = patch_row_index(grid, *centre)
    full = v.is_full_attention(block)
    kind = "full attention" if full else "window attention"
    panels = []
    for values, marker, what, extra in (
        (dense[query], centre, "attention from the centre patch (outlined)", "sums to 1 over what it sees"),
        (dense.mean(0), None, "mean attention received per patch", f"uniform would be {1 / n:.3g}"),
    ):
        grid_values = patch_grid_values(values, grid)
        vmin, vmax = float(grid_values.min()), float(grid_values.max())
        panels.append(
            draw_scaled_heatmap(
                pixels,
                grid_values,
                vmin=vmin,
                vmax=vmax,
                patch_size=v.patch_size,
                marker=marker,
                caption=[
                    f"{config.name} (random weights): vision block {block} ({kind}), mean over {v.num_heads} heads",
                    f"{what}; {extra}",
                    f"colour: {vmin:.3g} (min) .. {vmax:.3g} (max), over a greyscale copy of the image",
                ],
            )
        )
    side_by_side(*panels).save(written[2])

    vgrid = tuple(video_in["video_grid_thw"][0].tolist())
    first = frames_from_patches(
        video_in["pixel_values_videos"], vgrid, v.patch_size, image_mean=mean, image_std=std
    )[0]
    vcaption = [
        f"video frame 0 of {frame_count}: {vgrid[1]}x{vgrid[2]} patches, {vgrid[0]} temporal patches",
        f"-> {vgrid[0] * vgrid[1] * vgrid[2] // 4} tokens",
    ]
    draw_tiling(first, vgrid[1:], patch_size=v.patch_size, window_merged=window, caption=vcaption).save(
        written[3]
    )
    return written


def _preprocess(
    image: Image.Image,
    frames: list[Image.Image],
    fps: float,
    image_settings: VisionSettings,
    video_settings: VisionSettings,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The image and the video through their family's processor rules (what `Processor` does with a
    checkpoint that ships no processor files)."""
    image_in = image_inputs(image, None, None, None, image_settings)
    mean, std = video_settings.normalization
    if video_settings.family == "qwen3":  # time goes into the prompt as text, not second_per_grid_ts
        video_in, _ = video_qwen3.preprocess_video(
            frames,
            fps=fps,
            min_pixels=video_settings.min_pixels,
            max_pixels=video_settings.max_pixels,
            patch_size=video_settings.patch_size,
            image_mean=mean,
            image_std=std,
        )
    else:
        video_in = preprocess_video(
            frames, fps=fps, min_pixels=video_settings.min_pixels, max_pixels=video_settings.max_pixels
        )
    return image_in, video_in


def cmd_demo(args: argparse.Namespace) -> int:
    from ..generate.loop import stream

    check_kernel_choice("cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = Config.preset(FAMILIES[args.family])
    model = QwenVL(config).eval()
    v = config.vision
    console.result(
        f"qwenvl-min demo: {config.name} with seeded random weights (no download), {torch.get_num_threads()} threads"
    )

    # preprocess
    image, frames, fps = demo_image(), demo_video(), 2.0
    image.save(out / "demo_input.png")
    family = "qwen3" if config.model_type in QWEN3 else "qwen2"  # whose processor rules
    image_settings, video_settings = family_settings(family, False), family_settings(family, True)
    t0 = time.perf_counter()
    image_in, video_in = _preprocess(image, frames, fps, image_settings, video_settings)
    t_pre = time.perf_counter() - t0
    factor = v.patch_size * v.merge_size
    for what, size, inputs, grid_key, settings in (
        ("image", image.size, image_in, "image_grid_thw", image_settings),
        ("video", frames[0].size, video_in, "video_grid_thw", video_settings),
    ):
        grid = inputs[grid_key]
        t, h, w = grid[0].tolist()
        rows = inputs["pixel_values" if what == "image" else "pixel_values_videos"].shape
        budget = (settings.min_pixels, settings.max_pixels)
        if what == "video" and family == "qwen3":
            budget_text = f"{budget[0]}..{budget[1]} px for the whole clip"  # Qwen3-VL's video budget
        else:
            budget_text = f"{budget[0]}..{budget[1]} px"
        source = f"{size[0]}x{size[1]} px" + (
            f", {len(frames)} frames @ {fps:g} fps" if what == "video" else ""
        )
        console.result(f"{what}: {source}")
        console.result(
            f"  smart_resize      -> {w * v.patch_size}x{h * v.patch_size} px (multiples of {factor}; {budget_text})"
        )
        console.result(f"  grid (t, h, w)    {t} x {h} x {w} patches of {v.patch_size} px")
        console.result(f"  patches           {rows[0]} rows x {rows[1]} values")
        console.result(
            f"  windows           {window_summary(config, torch.tensor([[1, h, w]]))} (per temporal patch)"
        )
        console.result(f"  merged tokens     {t * h * w // v.merge_size**2} (2x2 patches each)")

    # prompt: a few stand-in text ids around the two vision blocks (the tiny model has no tokenizer)
    vision = image_in | video_in
    if config.model_type == "qwen2_vl":
        vision.pop("second_per_grid_ts")  # Qwen2-VL steps one position per temporal patch
    text = torch.randint(0, config.bos_token_id, (9,), generator=torch.Generator().manual_seed(1))
    ids = torch.cat([text[:5], vision_prompt(config, vision)[0], text[5:]])[None]
    positions, deltas = get_rope_index(
        config, ids, vision["image_grid_thw"], vision["video_grid_thw"], vision.get("second_per_grid_ts")
    )
    console.result(f"prompt: {ids.shape[1]} tokens; 3-D positions (t, h, w):")
    console.result("\n".join(_position_summary(config, ids, positions)))
    top = int(positions.max())
    console.result(
        f"  delta {int(deltas[0, 0])}: new token n takes position {ids.shape[1]} + n + ({int(deltas[0, 0])}) = {top + 1} + n on all axes"
    )

    # vision tower alone, reading one block's attention maps for the heatmap
    block = max(v.fullatt_block_indexes) if v.fullatt_block_indexes else v.depth - 1
    maps_name = f"visual.blocks.{block}.attn.probs"
    t0 = time.perf_counter()
    with torch.inference_mode(), model.taps(read=[maps_name]) as taps:
        model.visual(image_in["pixel_values"], image_in["image_grid_thw"])
    t_vision = time.perf_counter() - t0

    # generation: time to the first token is the prefill (vision tower included)
    t0 = time.perf_counter()
    stamps, tokens = [], []
    for step in stream(model, ids, **vision, max_new_tokens=args.new_tokens, stop_token_ids=()):
        stamps.append(time.perf_counter())
        tokens.append(int(step[0]))
    t_prefill = stamps[0] - t0
    per_token = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    console.result(
        f"timings: preprocess {_ms(t_pre)} | vision tower (image, with attention tap) {_ms(t_vision)} | "
        f"prefill incl. vision {_ms(t_prefill)} | decode {_ms(per_token)}/token"
    )
    console.result(f"generated ids: {tokens}  (random weights: ids, not words)")

    written = _demo_pictures(
        out, config, image_settings, image_in, video_in, taps.cache[maps_name], block, len(frames)
    )
    console.status("wrote: %s", "  ".join(str(p) for p in written))
    return 0
