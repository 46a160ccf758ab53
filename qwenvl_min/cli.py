"""The `qwenvl-min` console script.

    qwenvl-min demo [--out DIR] [--family qwen2.5-vl|qwen2-vl]     tiny seeded model, token flow, PNGs
    qwenvl-min inspect IMAGE|VIDEO [--min-pixels N --max-pixels N --out PNG]   token cost, no weights
    qwenvl-min run --model DIR --image F --prompt TEXT                streamed answer
    qwenvl-min latents --model DIR --taps NAMES --out DIR INPUTS...   taps -> one .safetensors per input
    qwenvl-min convert SRC DST                                        HF checkpoint -> ours

Inputs are told apart by suffix: VIDEO_SUFFIXES are videos (decoded with PyAV), anything else an image.
Errors the user can fix (missing file, bad checkpoint, unknown tap, prompt too long) print one line and
exit with status 1; argparse usage errors exit with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .config import Config
from .model import QwenVL
from .positions import get_rope_index
from .processor import (
    IMAGE_MAX_PIXELS,
    IMAGE_MIN_PIXELS,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    concat_outputs,
    load_rgb,
    preprocess_image,
    preprocess_video,
    smart_resize,
)
from .segments import window_layout
from .taps import SegmentMaps, Taps

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FAMILIES = {"qwen2.5-vl": "tiny-qwen2.5-vl", "qwen2-vl": "tiny-qwen2-vl"}  # demo models
RELEASED = {"qwen2.5-vl": "qwen2.5-vl-7b", "qwen2-vl": "qwen2-vl-7b"}  # inspect: the released vision geometry


class CliError(Exception):
    """A problem the user can fix; printed as one line."""


# ---- shared helpers ---------------------------------------------------------------------------------------


def is_video(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def image_inputs(
    path: str | os.PathLike[str], min_pixels: int | None, max_pixels: int | None
) -> dict[str, Tensor]:
    """An image file -> the model's image kwargs (None: the processor's default pixel budget)."""
    return preprocess_image(
        path,
        min_pixels=IMAGE_MIN_PIXELS if min_pixels is None else min_pixels,
        max_pixels=IMAGE_MAX_PIXELS if max_pixels is None else max_pixels,
    )


def video_inputs(
    path: str | os.PathLike[str], min_pixels: int | None, max_pixels: int | None
) -> dict[str, Tensor]:
    """A video file -> the model's video kwargs (every frame, fps from the container; default video budget)."""
    return preprocess_video(
        path,
        min_pixels=VIDEO_MIN_PIXELS if min_pixels is None else min_pixels,
        max_pixels=VIDEO_MAX_PIXELS if max_pixels is None else max_pixels,
    )


def preprocess(
    path: str | os.PathLike[str], min_pixels: int | None, max_pixels: int | None
) -> dict[str, Tensor]:
    """One input file, image or video by suffix -> the model's vision kwargs."""
    return (video_inputs if is_video(path) else image_inputs)(path, min_pixels, max_pixels)


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


def load_model(path: str, dtype: str | None, device: str) -> QwenVL:
    from .load import load
    from .weights_convert.checkpoint import CheckpointError

    try:
        return load(path, dtype=None if dtype is None else DTYPES[dtype], device=device)
    except CheckpointError as err:
        raise CliError(f"{err} (`qwenvl-min convert SRC DST` runs the same converter)") from err


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


# ---- demo -------------------------------------------------------------------------------------------------


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
    image_in: dict[str, Tensor],
    video_in: dict[str, Tensor],
    maps: SegmentMaps,
    block: int,
    frame_count: int,
) -> list[Path]:
    """The demo's PNGs: image tiling, attention heatmaps of `block`, first video frame tiling."""
    from .overlay import draw_heatmap, draw_tiling, frames_from_patches, patch_grid_values, patch_row_index

    v = config.vision
    grid = tuple(image_in["image_grid_thw"][0].tolist())
    pixels = frames_from_patches(image_in["pixel_values"], grid)[0]
    caption = [
        f"{config.name}: {grid[1]}x{grid[2]} patches of 14 px -> {grid[1] * grid[2] // 4} tokens",
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
    draw_tiling(pixels, grid[1:], window_merged=window, caption=caption).save(written[1])

    n = grid[1] * grid[2]
    dense = maps.dense(n).mean(0)  # (N, N) mean over heads, input row order
    centre = (grid[1] // 2, grid[2] // 2)
    query = patch_row_index(grid, *centre)
    from_centre = draw_heatmap(
        pixels,
        patch_grid_values(dense[query], grid),
        marker=centre,
        caption=[f"block {block}: attention from the centre patch", "(mean over heads)"],
    )
    received = draw_heatmap(
        pixels,
        patch_grid_values(dense.mean(0), grid),
        caption=[f"block {block}: mean attention received", "per patch (mean over heads, queries)"],
    )
    panel = Image.new(
        "RGB",
        (from_centre.width + received.width + 8, max(from_centre.height, received.height)),
        (24, 24, 28),
    )
    panel.paste(from_centre, (0, 0))
    panel.paste(received, (from_centre.width + 8, 0))
    panel.save(written[2])

    vgrid = tuple(video_in["video_grid_thw"][0].tolist())
    first = frames_from_patches(video_in["pixel_values_videos"], vgrid)[0]
    vcaption = [
        f"video frame 0 of {frame_count}: {vgrid[1]}x{vgrid[2]} patches, {vgrid[0]} temporal patches",
        f"-> {vgrid[0] * vgrid[1] * vgrid[2] // 4} tokens",
    ]
    draw_tiling(first, vgrid[1:], window_merged=window, caption=vcaption).save(written[3])
    return written


def cmd_demo(args: argparse.Namespace) -> int:
    from .generate import stream

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = Config.preset(FAMILIES[args.family])
    model = QwenVL(config).eval()
    v = config.vision
    print(
        f"qwenvl-min demo: {config.name} with seeded random weights (no download), {torch.get_num_threads()} threads"
    )

    # preprocess
    image, frames, fps = demo_image(), demo_video(), 2.0
    image.save(out / "demo_input.png")
    t0 = time.perf_counter()
    image_in = preprocess_image(image)
    video_in = preprocess_video(frames, fps=fps)
    t_pre = time.perf_counter() - t0
    for what, size, inputs, grid_key, budget in (
        ("image", image.size, image_in, "image_grid_thw", (IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS)),
        ("video", frames[0].size, video_in, "video_grid_thw", (VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)),
    ):
        grid = inputs[grid_key]
        t, h, w = grid[0].tolist()
        rows = inputs["pixel_values" if what == "image" else "pixel_values_videos"].shape
        resized = smart_resize(size[1], size[0], v.patch_size * v.merge_size, *budget)
        source = f"{size[0]}x{size[1]} px" + (
            f", {len(frames)} frames @ {fps:g} fps" if what == "video" else ""
        )
        print(f"{what}: {source}")
        print(
            f"  smart_resize      -> {resized[1]}x{resized[0]} px (multiples of 28; {budget[0]}..{budget[1]} px)"
        )
        print(f"  grid (t, h, w)    {t} x {h} x {w} patches of {v.patch_size} px")
        print(f"  patches           {rows[0]} rows x {rows[1]} values")
        print(f"  windows           {window_summary(config, torch.tensor([[1, h, w]]))} (per temporal patch)")
        print(f"  merged tokens     {t * h * w // v.merge_size**2} (2x2 patches each)")

    # prompt: a few stand-in text ids around the two vision blocks (the tiny model has no tokenizer)
    vision = image_in | video_in
    if config.model_type == "qwen2_vl":
        vision.pop("second_per_grid_ts")  # Qwen2-VL steps one position per temporal patch
    text = torch.randint(0, config.bos_token_id, (9,), generator=torch.Generator().manual_seed(1))
    ids = torch.cat([text[:5], vision_prompt(config, vision)[0], text[5:]])[None]
    positions, deltas = get_rope_index(
        config, ids, vision["image_grid_thw"], vision["video_grid_thw"], vision.get("second_per_grid_ts")
    )
    print(f"prompt: {ids.shape[1]} tokens; 3-D positions (t, h, w):")
    print("\n".join(_position_summary(config, ids, positions)))
    top = int(positions.max())
    print(
        f"  delta {int(deltas[0, 0])}: new token n takes position {ids.shape[1]} + n + ({int(deltas[0, 0])}) = {top + 1} + n on all axes"
    )

    # vision tower alone, reading one block's attention maps for the heatmap
    block = max(v.fullatt_block_indexes) if v.fullatt_block_indexes else v.depth - 1
    taps = model.taps(read=[f"vision.blocks.{block}.attn.probs"])
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.visual.run(image_in["pixel_values"], image_in["image_grid_thw"], taps)
    t_vision = time.perf_counter() - t0

    # generation: time to the first token is the prefill (vision tower included)
    t0 = time.perf_counter()
    stamps, tokens = [], []
    for step in stream(model, ids, **vision, max_new_tokens=args.new_tokens, stop_token_ids=()):
        stamps.append(time.perf_counter())
        tokens.append(int(step[0]))
    t_prefill = stamps[0] - t0
    per_token = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    print(
        f"timings: preprocess {_ms(t_pre)} | vision tower (image, with attention tap) {_ms(t_vision)} | "
        f"prefill incl. vision {_ms(t_prefill)} | decode {_ms(per_token)}/token"
    )
    print(f"generated ids: {tokens}  (random weights: ids, not words)")

    written = _demo_pictures(
        out, config, image_in, video_in, taps.cache[f"vision.blocks.{block}.attn.probs"], block, len(frames)
    )
    print("wrote: " + "  ".join(str(p) for p in written))
    return 0


# ---- inspect ----------------------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from .overlay import draw_tiling, frames_from_patches

    config = Config.preset(RELEASED[args.family])  # only the config: no weights are built
    v = config.vision
    path = Path(args.input)
    inputs = preprocess(path, args.min_pixels, args.max_pixels)
    video = is_video(path)
    grid_key, rows_key = (
        ("video_grid_thw", "pixel_values_videos") if video else ("image_grid_thw", "pixel_values")
    )
    grid = inputs[grid_key]
    t, h, w = grid[0].tolist()
    tokens = t * h * w // v.merge_size**2
    frames = frames_from_patches(inputs[rows_key], (t, h, w))
    print(f"{path} ({'video' if video else 'image'})")
    if not video:
        width, height = load_rgb(path).size
        print(f"  input size        {width}x{height} px (w x h)")
    else:
        print(
            f"  frames used       {t * v.temporal_patch_size} (after padding to a multiple of {v.temporal_patch_size}), "
            f"{float(inputs['second_per_grid_ts'][0]):g} s per temporal patch"
        )
    lo = args.min_pixels if args.min_pixels is not None else (VIDEO_MIN_PIXELS if video else IMAGE_MIN_PIXELS)
    hi = args.max_pixels if args.max_pixels is not None else (VIDEO_MAX_PIXELS if video else IMAGE_MAX_PIXELS)
    print(f"  smart_resize      {w * v.patch_size}x{h * v.patch_size} px (pixel budget {lo}..{hi})")
    print(f"  grid (t, h, w)    {t} x {h} x {w}")
    print(f"  patches           {t * h * w} rows x {inputs[rows_key].shape[1]} values")
    print(f"  windows ({args.family}) {window_summary(config, torch.tensor([[1, h, w]]))} per temporal patch")
    print(
        f"  merged tokens     {tokens} (+2 for <|vision_start|>/<|vision_end|> = {tokens + 2} prompt tokens)"
    )
    out = Path(args.out) if args.out else Path(f"{path.stem}.tiling.png")
    caption = [f"{path.name}: {t}x{h}x{w} patches -> {tokens} tokens" + (" (frame 0)" if video else "")]
    window = v.window_merged if v.family == "qwen2_5_vl" else None
    draw_tiling(frames[0], (h, w), window_merged=window, caption=caption).save(out)
    print(f"wrote: {out}")
    return 0


# ---- run --------------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from .generate import stream
    from .prompts import encode_chat, load_tokenizer

    if not args.image and not args.video and not args.prompt:
        raise CliError("nothing to answer: give --prompt and optionally --image / --video")
    for path in [*args.image, *args.video]:
        if not Path(path).is_file():
            raise CliError(f"input file not found: {path}")
    model = load_model(args.model, args.dtype, args.device)
    config = model.config
    tokenizer_path = args.tokenizer or args.model
    try:
        tokenizer = load_tokenizer(tokenizer_path)
    except FileNotFoundError as err:
        raise CliError(
            f"{err}. Converted checkpoints do not carry the tokenizer yet: copy tokenizer.json from the Hugging "
            "Face checkpoint into the model directory, or pass --tokenizer PATH"
        ) from err
    images = [image_inputs(p, args.min_pixels, args.max_pixels) for p in args.image]
    videos = [video_inputs(p, args.min_pixels, args.max_pixels) for p in args.video]
    vision: dict[str, Tensor] = {}
    if images:
        vision |= concat_outputs(images)
    if videos:
        vision |= concat_outputs(videos)
        if config.model_type == "qwen2_vl":
            vision.pop("second_per_grid_ts")  # Qwen2-VL steps one position per temporal patch
    content: list[dict[str, Any]] = [{"type": "image"} for _ in images] + [{"type": "video"} for _ in videos]
    content.append({"type": "text", "text": args.prompt or ""})
    encoded = encode_chat(
        tokenizer,
        [{"role": "user", "content": content}],
        image_grid_thw=vision.get("image_grid_thw"),
        video_grid_thw=vision.get("video_grid_thw"),
        merge_size=config.vision.merge_size,
        max_length=config.text.max_position_embeddings,
    )
    stops = [
        i
        for i in (tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>"))
        if i is not None
    ]
    device = model.text.embed_tokens.weight.device
    vision = {k: t.to(device) for k, t in vision.items()}
    generated: list[int] = []
    shown = ""
    for step in stream(
        model,
        encoded["input_ids"],
        attention_mask=encoded["attention_mask"],
        **vision,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop_token_ids=stops or None,
    ):
        token = int(step[0])
        if token in stops:
            break
        generated.append(token)
        # decode the whole answer each time: a character may span several tokens (byte-level BPE)
        text = tokenizer.decode(generated)
        if not text.endswith("\ufffd"):
            print(text[len(shown) :], end="", flush=True)
            shown = text
    print(tokenizer.decode(generated)[len(shown) :])
    return 0


# ---- latents ----------------------------------------------------------------------------------------------


def _tap_tensors(name: str, value: object) -> dict[str, Tensor]:
    """A tap value as named tensors: vision attention maps are stored per segment-length group."""
    if isinstance(value, SegmentMaps):
        out = {}
        for g, (probs, index) in enumerate(zip(value.probs, value.token_index)):
            out[f"{name}.group{g}.probs"] = probs
            out[f"{name}.group{g}.token_index"] = index
        return out
    assert isinstance(value, Tensor), f"tap {name} gave {type(value).__name__}"
    return {name: value}


def _write_atomic(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write to a temporary file in the same directory, then rename: a file at `path` is always complete."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: t.detach().cpu().contiguous().clone() for k, t in tensors.items()}, str(tmp), metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cmd_latents(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    names = [n.strip() for n in args.taps.split(",") if n.strip()]
    if not names:
        raise CliError("--taps is empty; name at least one tap, e.g. vision.pre_merge,text.layers.0")
    inputs = [Path(p) for p in args.inputs]
    stems = Counter(p.stem for p in inputs)
    if clash := sorted(s for s, n in stems.items() if n > 1):
        raise CliError(
            f"several inputs share the output name(s) {clash}; outputs are named after the input stem"
        )
    model = load_model(args.model, args.dtype, args.device)
    try:
        Taps(model.config, read=names)  # check the names before any work
    except KeyError as err:
        raise CliError(err.args[0]) from err
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = model.text.embed_tokens.weight.device
    written, skipped, failed = 0, 0, []
    bar = tqdm(inputs, unit="input", disable=args.no_progress, file=sys.stderr)
    for path in bar:
        target = out / f"{path.stem}.safetensors"
        if target.exists():
            skipped += 1
            continue
        try:
            vision = preprocess(path, args.min_pixels, args.max_pixels)
            if model.config.model_type == "qwen2_vl":
                vision.pop("second_per_grid_ts", None)
            taps = model.taps(read=names)
            ids = vision_prompt(model.config, vision).to(device)
            with torch.inference_mode():
                model.run(ids, **{k: t.to(device) for k, t in vision.items()}, taps=taps)
            tensors: dict[str, Tensor] = {}
            for name in names:
                tensors |= _tap_tensors(name, taps.cache[name])
            grid = vision.get("image_grid_thw", vision.get("video_grid_thw"))
            metadata = {
                "source": str(path.resolve()),
                "kind": "video" if is_video(path) else "image",
                "grid_thw": json.dumps(grid[0].tolist()),
                "taps": json.dumps(names),
                "model": str(Path(args.model).resolve()),
                "model_type": model.config.model_type,
                "input_ids": json.dumps(ids[0].tolist()),
            }
            _write_atomic(target, tensors, metadata)
            written += 1
        except (OSError, ValueError, ImportError) as err:
            failed.append((path, f"{type(err).__name__}: {err}"))
            tqdm.write(f"failed: {path}: {err}", file=sys.stderr)
    bar.close()
    print(f"latents: {written} written, {skipped} skipped (already in {out}), {len(failed)} failed")
    for path, why in failed:
        print(f"  failed {path}: {why}")
    return 1 if failed else 0


# ---- convert ----------------------------------------------------------------------------------------------


def _add_convert(sub: argparse._SubParsersAction) -> None:
    try:
        from .weights_convert.cli import add_arguments, run
    except ImportError as err:
        reason = f"the weights converter is not importable: {err}"

        def unavailable(_: argparse.Namespace) -> int:
            raise CliError(reason)

        sub.add_parser("convert", help="(unavailable) " + reason).set_defaults(func=unavailable)
        return
    parser = sub.add_parser("convert", help="convert a Hugging Face checkpoint (dir or hub id) to qwenvl-min")
    add_arguments(parser)
    parser.set_defaults(func=run)


# ---- entry point ------------------------------------------------------------------------------------------


def _add_pixel_budget(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-pixels",
        type=int,
        default=None,
        help="smallest resized area (default: the processor's, per kind)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="largest resized area (default: the processor's, per kind)",
    )


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="a converted checkpoint directory (see `qwenvl-min convert`)"
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="cast the weights (default: as stored)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwenvl-min", description="Qwen2-VL / Qwen2.5-VL in small, readable PyTorch"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="token flow, timings and pictures on a tiny seeded model (no download)"
    )
    demo.add_argument(
        "--out", default="qwenvl-min-demo", help="directory for the PNGs (default ./qwenvl-min-demo)"
    )
    demo.add_argument("--family", choices=sorted(FAMILIES), default="qwen2.5-vl")
    demo.add_argument("--new-tokens", type=int, default=8, help="tokens to generate (default 8)")
    demo.set_defaults(func=cmd_demo)

    inspect = sub.add_parser("inspect", help="token cost and tiling of an image or video (no weights)")
    inspect.add_argument("input", help="an image or video file")
    _add_pixel_budget(inspect)
    inspect.add_argument(
        "--family", choices=sorted(FAMILIES), default="qwen2.5-vl", help="whose windows to draw"
    )
    inspect.add_argument("--out", default=None, help="overlay PNG (default ./<name>.tiling.png)")
    inspect.set_defaults(func=cmd_inspect)

    run = sub.add_parser("run", help="answer a prompt about images / videos, streamed")
    _add_model(run)
    run.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    run.add_argument("--video", action="append", default=[], help="video file (repeatable)")
    run.add_argument("--prompt", default="", help="the question")
    run.add_argument(
        "--tokenizer", default=None, help="tokenizer.json or a directory with it (default: --model)"
    )
    run.add_argument("--max-new-tokens", type=int, default=256)
    run.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    run.add_argument("--top-k", type=int, default=None)
    run.add_argument("--top-p", type=float, default=None)
    run.add_argument("--seed", type=int, default=None)
    _add_pixel_budget(run)
    run.set_defaults(func=cmd_run)

    latents = sub.add_parser("latents", help="save chosen taps for many inputs, one .safetensors each")
    _add_model(latents)
    latents.add_argument(
        "--taps", required=True, help="comma-separated tap names, e.g. vision.pre_merge,text.layers.3"
    )
    latents.add_argument("--out", required=True, help="output directory (existing outputs are skipped)")
    latents.add_argument("inputs", nargs="+", help="image / video files")
    latents.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_pixel_budget(latents)
    latents.set_defaults(func=cmd_latents)

    _add_convert(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
    except (OSError, ValueError, KeyError, ImportError) as err:
        # the library's own errors already say what is wrong and what to do
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
