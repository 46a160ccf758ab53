"""The `qwenvl-min` console script.

    qwenvl-min demo [--out DIR] [--family qwen2.5-vl|qwen2-vl]     tiny seeded model, token flow, PNGs
    qwenvl-min inspect IMAGE|VIDEO [--min-pixels N --max-pixels N --out PNG]   token cost, no weights
    qwenvl-min run --model DIR|HUB_ID --image F --prompt TEXT         streamed answer
    torchrun --nproc-per-node N -m qwenvl_min run --tp N --model DIR ...   the same, tensor parallel
    qwenvl-min latents --model DIR --taps NAMES --out DIR INPUTS...   taps -> one .safetensors per input
    torchrun --nproc-per-node N -m qwenvl_min latents ...             the same, data parallel
    qwenvl-min convert SRC DST                                        HF checkpoint -> ours

Inputs are told apart by suffix: VIDEO_SUFFIXES are videos (decoded with PyAV), anything else an image.
Exit status: 0 success; 1 an error the user can fix (missing file, bad checkpoint, unknown tap, prompt
too long, resource budget exceeded, out of memory), printed as one `error:` line; 2 usage errors
(argparse); 130 Ctrl-C; 143 SIGTERM. Interrupted runs leave nothing partial.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .budget import DEFAULT_MAX_VISION_TOKENS
from .cli_support import (
    DTYPES,
    FAMILIES,
    RELEASED,
    CliError,
    image_inputs,
    is_video,
    load_model,
    preprocess,
    video_inputs,
    window_summary,
)
from .config import Config
from .demo import cmd_demo
from .fs import write_atomic
from .latents import cmd_latents
from .parallel.launch import launched_distributed
from .processor import (
    IMAGE_MAX_PIXELS,
    IMAGE_MIN_PIXELS,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    concat_outputs,
    load_rgb,
)
from .signals import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, terminate_as_exception
from .validate import check_sampling

# ---- inspect ----------------------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from .overlay import draw_tiling, frames_from_patches

    config = Config.preset(RELEASED[args.family])  # only the config: no weights are built
    v = config.vision
    path = Path(args.input)
    inputs = preprocess(path, args.min_pixels, args.max_pixels, args.max_vision_tokens)
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
    if out.exists() and out.resolve() == path.resolve():
        raise CliError(f"--out {out} is the input file; choose another name for the overlay PNG")
    caption = [f"{path.name}: {t}x{h}x{w} patches -> {tokens} tokens" + (" (frame 0)" if video else "")]
    window = v.window_merged if v.family == "qwen2_5_vl" else None
    write_atomic(
        out,
        lambda tmp: draw_tiling(frames[0], (h, w), window_merged=window, caption=caption).save(
            tmp, format="PNG"
        ),
    )
    print(f"wrote: {out}")
    return 0


# ---- run --------------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from .checkpoint_processor import Processor
    from .generate import stream
    from .prompts import encode, load_tokenizer

    if not args.image and not args.video and not args.prompt:
        raise CliError("nothing to answer: give --prompt and optionally --image / --video")
    # the ranges now, before loading; None (the checkpoint's default) is checked by generate with the rest
    sampling = 1.0 if args.temperature is None else args.temperature
    check_sampling(args.max_new_tokens, sampling, args.top_k, args.top_p, args.seed)
    for path in [*args.image, *args.video]:
        if not Path(path).is_file():
            raise CliError(f"input file not found: {path}")
    show = True  # only rank 0 of a tensor-parallel run prints the answer
    if args.tp > 1 or launched_distributed():
        from .parallel.entry import load_tp_model

        model, context = load_tp_model(args.model, args.dtype, args.device, args.verify, args.tp)
        show = context.is_main
    else:
        model = load_model(args.model, args.dtype, args.device, args.verify)
    config = model.config
    directory = model.checkpoint_dir
    try:  # the checkpoint's tokenizer, processor settings and chat template
        processor = Processor.from_pretrained(directory)
        if args.tokenizer:
            processor.tokenizer = load_tokenizer(args.tokenizer)
    except FileNotFoundError as err:
        raise CliError(
            f"{err}. HF checkpoints ship tokenizer.json and the converter copies it; copy it into the model "
            "directory or pass --tokenizer PATH"
        ) from err
    budget = (args.min_pixels, args.max_pixels, args.max_vision_tokens)
    images = [image_inputs(p, *budget, processor.image) for p in args.image]
    videos = [video_inputs(p, *budget, processor.video) for p in args.video]
    vision: dict[str, Tensor] = {}
    if images:
        vision |= concat_outputs(images)
    if videos:
        vision |= concat_outputs(videos)  # Qwen2-VL checks second_per_grid_ts and does not use it
    content: list[dict[str, Any]] = [{"type": "image"} for _ in images] + [{"type": "video"} for _ in videos]
    content.append({"type": "text", "text": args.prompt or ""})
    text = processor.apply_chat_template([{"role": "user", "content": content}])
    tokenizer = processor.tokenizer
    encoded = encode(
        tokenizer,
        text,
        image_grid_thw=vision.get("image_grid_thw"),
        video_grid_thw=vision.get("video_grid_thw"),
        merge_size=config.vision.merge_size,
        max_length=config.text.max_position_embeddings,
    )
    stops = model.generation_settings.stop_token_ids  # the checkpoint's eos ids when it says
    if stops is None:
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
        stop_token_ids=list(stops) or None,
        compile=args.compile,
    ):
        token = int(step[0])
        if token in stops:
            break
        generated.append(token)
        # decode the whole answer each time: a character may span several tokens (byte-level BPE)
        text = tokenizer.decode(generated)
        if show and not text.endswith("\ufffd"):
            print(text[len(shown) :], end="", flush=True)
            shown = text
    if show:
        print(tokenizer.decode(generated)[len(shown) :])
    return 0


# ---- convert ----------------------------------------------------------------------------------------------


def _add_convert(sub: argparse._SubParsersAction) -> None:
    from .weights_convert.cli import add_arguments, run

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
    parser.add_argument(
        "--max-vision-tokens",
        type=int,
        default=None,
        help=f"refuse an input costing more vision tokens, checked before decoding (default {DEFAULT_MAX_VISION_TOKENS})",
    )


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="a Hugging Face checkpoint directory or Hub id, or a converted checkpoint (`qwenvl-min convert`)",
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="cast the weights (default: the dtype config.json names, else as stored)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check the sha256 of every shard against manifest.json first (default: sizes and headers)",
    )


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
    run.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="0 = greedy (default: the checkpoint's generation_config.json, else greedy)",
    )
    run.add_argument("--top-k", type=int, default=None, help="default: the checkpoint's, else none")
    run.add_argument("--top-p", type=float, default=None, help="default: the checkpoint's, else none")
    run.add_argument("--seed", type=int, default=None)
    run.add_argument(
        "--compile",
        action="store_true",
        help="compiled decoder (CUDA graphs on CUDA; the first answer pays the compilation, see docs)",
    )
    run.add_argument(
        "--tp",
        type=int,
        default=1,
        help="tensor-parallel degree; > 1 under torchrun with that many processes (default 1)",
    )
    _add_pixel_budget(run)
    run.set_defaults(func=cmd_run)

    latents = sub.add_parser("latents", help="save chosen taps for many inputs, one .safetensors each")
    _add_model(latents)
    latents.add_argument(
        "--taps", required=True, help="comma-separated tap names, e.g. visual.merger.input,text.layers.3"
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
        with terminate_as_exception():
            return int(args.func(args))
    except CliError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
    except (OSError, ValueError, KeyError, ImportError) as err:
        # the library's own errors already say what is wrong and what to do
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {_one_line(message)}", file=sys.stderr)
    except MemoryError:
        print(
            "error: out of memory; lower --max-pixels / --max-vision-tokens, or use a smaller --dtype",
            file=sys.stderr,
        )
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("error: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    return 1


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


if __name__ == "__main__":
    sys.exit(main())
