"""`qwenvl-min attend`: pictures of where answer tokens look on an image, and of a vision block's attention.

    qwenvl-min attend --model DIR --image X --prompt "..." --out DIR
        [--answer "given text" | --max-new-tokens N] [--answer-tokens N] [--layers SPEC] [--vision-block B]

1. The answer: generated greedily (reproducible maps), up to the first stop token; or `--answer`, whose
   tokens are teacher-forced (the model reads them as if it had written them).
2. One forward over prompt + answer with taps on the chosen attention modules (`qwenvl_min.interp.attention_maps`
   states how the maps are averaged and what they sum to).
3. OUT/token_JJ.png for each of the first `--answer-tokens` answer tokens: its attention on each merged
   token of the image (mean over the chosen decoder layers and query heads, not renormalised), drawn over
   a greyscale copy of the resized image (its own colours never read as heat) on a colour scale from the
   map's min to max, with a colour bar; OUT/vision_block_B.png: attention received per patch in vision
   block B, with its attention windows outlined when B is a window-attention block; OUT/attend.json: the
   numbers (schema in docs/cli.md).
   Files of those names in OUT are replaced; nothing else in OUT is touched.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..generate.settings import model_defaults
from ..inputs.settings_inputs import image_inputs
from ..interp.attention_maps import (
    AnswerAttention,
    answer_attention,
    default_vision_block,
    merged_to_patch_grid,
)
from ..interp.overlay import draw_scaled_heatmap, frames_from_patches, patch_grid_values
from ..model.qwenvl import QwenVL
from ..utils import console
from ..utils.fs import write_atomic
from .options import add_model
from .support import CliError, check_input_file, is_video, load_model

JSON_NAME = "attend.json"


def register(sub: argparse._SubParsersAction) -> None:
    attend = sub.add_parser("attend", help="PNGs of where answer tokens look on an image (attention maps)")
    add_model(attend)
    add_arguments(attend)
    attend.set_defaults(func=cmd_attend)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """attend's own options (the model options are the shared ones)."""
    parser.add_argument("--image", required=True, help="the image file")
    parser.add_argument("--prompt", required=True, help="the question")
    parser.add_argument("--out", required=True, help="directory for the PNGs and attend.json")
    parser.add_argument(
        "--answer",
        default=None,
        help="take this answer instead of generating one (teacher-forced: the model reads it as its own)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=16, help="longest generated answer (default 16)"
    )
    parser.add_argument(
        "--answer-tokens",
        type=int,
        default=None,
        help="draw maps for the first N answer tokens (default: every answer token)",
    )
    parser.add_argument(
        "--layers",
        default="all",
        help="decoder layers to average: all (default), lastN, A-B (inclusive) or a comma list, e.g. 0,3,5-7",
    )
    parser.add_argument(
        "--vision-block",
        type=int,
        default=None,
        help="vision block of the vision map (default: the last full-attention block)",
    )
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer.json or a directory with it (default: --model)"
    )
    parser.add_argument(
        "--min-pixels", type=int, default=None, help="smallest resized area (default: the checkpoint's)"
    )
    parser.add_argument(
        "--max-pixels", type=int, default=None, help="largest resized area (default: the checkpoint's)"
    )


def parse_layers(spec: str, count: int) -> list[int]:
    """'all', 'lastN', 'A-B' (inclusive) or a comma list of those -> sorted distinct layer indices."""
    spec = spec.strip().lower()
    if spec == "all":
        return list(range(count))
    chosen: set[int] = set()
    try:
        for part in spec.split(","):
            part = part.strip()
            if part.startswith("last"):
                n = int(part[4:])
                if not 1 <= n <= count:
                    raise ValueError
                chosen |= set(range(count - n, count))
            elif "-" in part:
                low, high = (int(x) for x in part.split("-"))
                if low > high:
                    raise ValueError
                chosen |= set(range(low, high + 1))
            else:
                chosen.add(int(part))
    except ValueError:
        raise CliError(
            f"--layers {spec!r} is not a layer list; use all, lastN, A-B or a comma list such as 0,3,5-7 "
            f"(the model has layers 0..{count - 1})"
        ) from None
    if not chosen or min(chosen) < 0 or max(chosen) >= count:
        raise CliError(f"--layers {spec!r} names layers outside 0..{count - 1} (the model has {count})")
    return sorted(chosen)


def _processor(model: QwenVL, tokenizer: str | None) -> Any:
    from ..inputs.processor import Processor
    from ..inputs.prompts import load_tokenizer

    try:
        processor = Processor.from_pretrained(model.checkpoint_dir)
        if tokenizer:
            processor.tokenizer = load_tokenizer(tokenizer)
    except FileNotFoundError as err:
        raise CliError(
            f"{err}. HF checkpoints ship tokenizer.json and the converter copies it; copy it into the model "
            "directory or pass --tokenizer PATH"
        ) from err
    return processor


def _stop_ids(model: QwenVL, tokenizer: Any) -> list[int]:
    stops = model_defaults(model).stop_token_ids
    if stops is None:
        names = ("<|im_end|>", "<|endoftext|>")
        stops = [i for i in map(tokenizer.token_to_id, names) if i is not None]
    return list(stops)


def _answer_ids(
    args: argparse.Namespace, model: QwenVL, tokenizer: Any, prompt: dict[str, Tensor], vision: dict
) -> list[int]:
    from ..generate.loop import generate

    if args.answer is not None:
        ids = tokenizer.encode(args.answer, add_special_tokens=False).ids
        if not ids:
            raise CliError("--answer is empty; give the answer text, or leave --answer out to generate one")
        return ids
    stops = _stop_ids(model, tokenizer)
    device = model.text.embed_tokens.weight.device
    new = generate(
        model,
        prompt["input_ids"],
        **{k: t.to(device) for k, t in vision.items()},
        max_new_tokens=args.max_new_tokens,
        temperature=0,
        stop_token_ids=stops or None,
    )[0].tolist()
    answer = []
    for token in new:
        if token in stops:
            break
        answer.append(token)
    if not answer:
        raise CliError("the model answered with a stop token at once; pass the answer to map with --answer")
    return answer


def cmd_attend(args: argparse.Namespace) -> int:
    from ..inputs.prompts import encode

    image_path = Path(args.image)
    check_input_file(image_path, "an image")
    if not args.prompt.strip():
        raise CliError('--prompt is empty; give the question, e.g. --prompt "What is in the picture?"')
    if is_video(image_path):
        raise CliError(f"{image_path} is a video; attend maps onto one image (pass an image file)")
    if args.max_new_tokens < 1 or (args.answer_tokens is not None and args.answer_tokens < 1):
        raise CliError("--max-new-tokens and --answer-tokens must be at least 1")
    model = load_model(args.model, args.dtype, args.device, args.verify)
    cfg = model.config
    layers = parse_layers(args.layers, cfg.text.num_layers)
    block = default_vision_block(model) if args.vision_block is None else args.vision_block
    if not 0 <= block < cfg.vision.depth:
        raise CliError(f"--vision-block {block} is outside 0..{cfg.vision.depth - 1}")
    processor = _processor(model, args.tokenizer)
    tokenizer = processor.tokenizer
    vision = image_inputs(image_path, args.min_pixels, args.max_pixels, None, processor.image)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": args.prompt}]}]
    prompt = encode(
        tokenizer,
        processor.apply_chat_template(messages),
        image_grid_thw=vision["image_grid_thw"],
        merge_size=cfg.vision.merge_size,
        max_length=cfg.text.max_position_embeddings,
    )
    answer = _answer_ids(args, model, tokenizer, prompt, vision)
    length = prompt["input_ids"].shape[1]
    context = cfg.text.max_position_embeddings
    if length + len(answer) > context:
        raise CliError(
            f"the prompt ({length} tokens) plus the answer ({len(answer)}) exceed the model's context of "
            f"{context}; shorten them or lower --max-pixels"
        )
    shown = len(answer) if args.answer_tokens is None else min(args.answer_tokens, len(answer))
    sequence = torch.cat([prompt["input_ids"], torch.tensor([answer])], dim=1)
    queries = [length - 1 + j for j in range(shown)]  # the position whose logits picked answer token j
    maps = answer_attention(model, sequence, vision, queries, layers, block)

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"cannot create {out}: {err.strerror or err}; choose another --out") from None
    grid = tuple(vision["image_grid_thw"][0].tolist())
    mean, std = processor.image.normalization
    frame = frames_from_patches(
        vision["pixel_values"], grid, cfg.vision.patch_size, image_mean=mean, image_std=std
    )[0]
    name = model.checkpoint_dir.name if model.checkpoint_dir else args.model
    heads, kv_heads = cfg.text.num_heads, cfg.text.num_kv_heads
    layer_text = _layer_text(layers, cfg.text.num_layers)
    tokens = []
    console.result(f"answer: {tokenizer.decode(answer)}")
    for j in range(shown):
        values = maps.image[j]
        share = float(maps.image_share[j])
        vmin, vmax = float(values.min()), float(values.max())
        piece = _token_text(tokenizer, answer[j])
        caption = [
            f"{name}: answer token {j} {piece!r} (id {answer[j]}), query at position {queries[j]} (it picked the token)",
            f"decoder {layer_text}, mean over {heads} query heads ({kv_heads} kv heads): softmax probabilities",
            f"share of the token's attention on the image: {share:.3f} (not renormalised; the rest is on text)",
            f"colour: attention on each image token (2x2 patches), {vmin:.3g} (min) .. {vmax:.3g} (max)",
        ]
        picture = draw_scaled_heatmap(
            frame,
            merged_to_patch_grid(values, grid[1:], cfg.vision.merge_size),
            vmin=vmin,
            vmax=vmax,
            patch_size=cfg.vision.patch_size,
            caption=caption,
        )
        path = out / f"token_{j:02d}.png"
        _save(picture, path)
        console.result(f"  token {j:>2} {piece!r:<16} image share {share:.3f}   max {vmax:.3g}")
        tokens.append(
            {
                "index": j,
                "id": answer[j],
                "text": piece,
                "query_position": queries[j],
                "image_share": share,
                "image_share_per_layer": [float(x) for x in maps.image_share_per_layer[:, j]],
                "min": vmin,
                "max": vmax,
                "png": path.name,
            }
        )
    vision_record = _vision_picture(model, maps, frame, grid, name, out)
    record = {
        "model": str(model.checkpoint_dir or args.model),
        "image": str(image_path.resolve()),
        "prompt": args.prompt,
        "answer": tokenizer.decode(answer),
        "answer_ids": answer,
        "answer_given": args.answer is not None,
        "prompt_tokens": length,
        "grid_thw": list(grid),
        "layers": layers,
        "query_heads": heads,
        "kv_heads": kv_heads,
        "tokens": tokens,
        "vision": vision_record,
    }
    write_atomic(out / JSON_NAME, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    console.status("wrote: %s (%d token maps, 1 vision map, %s)", out, len(tokens), JSON_NAME)
    return 0


def _vision_picture(
    model: QwenVL, maps: AnswerAttention, frame: Any, grid: tuple[int, int, int], name: str, out: Path
) -> dict[str, Any]:
    """Draw the vision map to OUT/vision_block_B.png; returns its attend.json record."""
    v = model.config.vision
    block = maps.vision_block
    received = maps.received
    patches = grid[1] * grid[2]
    values = patch_grid_values(received, grid, v.merge_size)
    vmin, vmax = float(received.min()), float(received.max())
    full = v.is_full_attention(block)
    window = None if full else v.window_merged * v.merge_size  # patches a side
    caption = [
        f"{name}: vision block {block} ({'full attention' if full else 'window attention'}), "
        f"mean over {v.num_heads} heads and {patches} query patches",
        f"attention received per patch (sums to 1 over the image: {float(received.sum()):.3f})",
        f"colour: {vmin:.3g} (min) .. {vmax:.3g} (max); uniform would be {1 / patches:.3g}",
    ]
    if window is not None:
        caption.append(
            f"blue lines: its attention windows of {window}x{window} patches (a patch sees its own)"
        )
    path = out / f"vision_block_{block}.png"
    picture = draw_scaled_heatmap(
        frame,
        values,
        vmin=vmin,
        vmax=vmax,
        patch_size=v.patch_size,
        caption=caption,
        window_patches=window,
    )
    _save(picture, path)
    return {
        "block": block,
        "full_attention": full,
        "window_patches": window,
        "patches": patches,
        "min": vmin,
        "max": vmax,
        "sum": float(received.sum()),
        "png": path.name,
    }


def _token_text(tokenizer: Any, token_id: int) -> str:
    """The token as text, or its vocabulary entry when alone it is no printable text (a piece of a
    multi-byte character, a control byte)."""
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    if text and text.isprintable() and "\ufffd" not in text:
        return text
    return tokenizer.id_to_token(token_id) or f"<id {token_id}>"


def _layer_text(layers: list[int], count: int) -> str:
    if layers == list(range(count)):
        return f"layers 0-{count - 1} (all {count}, mean)"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]} (mean of {len(layers)})"
    return f"layers {','.join(map(str, layers))} (mean of {len(layers)})"


def _save(picture: Any, path: Path) -> None:
    write_atomic(path, lambda tmp: picture.save(tmp, format="PNG"))
