"""The `qwenvl-min` console script.

    qwenvl-min demo [--out DIR] [--family qwen2.5-vl|qwen2-vl]     tiny seeded model, token flow, PNGs
    qwenvl-min inspect IMAGE|VIDEO [--min-pixels N --max-pixels N --out PNG]   token cost, no weights
    qwenvl-min run --model DIR|HUB_ID --image F --prompt TEXT         streamed answer
    torchrun --nproc-per-node N -m qwenvl_min run --tp N --model DIR ...   the same, tensor parallel
    qwenvl-min latents --model DIR --taps NAMES --out DIR INPUTS...   taps -> one .safetensors per input
    torchrun --nproc-per-node N -m qwenvl_min latents ...             the same, data parallel
    qwenvl-min attend --model DIR --image F --prompt TEXT --out DIR   where answer tokens look (PNGs)
    qwenvl-min convert SRC DST                                        HF checkpoint -> ours

Global options (before or after the subcommand): `--version`; `-q` (warnings and errors only, no progress
bars; `-qq` errors only) and `-v` (debug detail) set the level of the `qwenvl_min` logger, which writes
status and progress to stderr; results go to stdout (`--json` on `inspect` and `latents`: one JSON object,
schema in docs/cli.md).

Inputs are told apart by suffix: VIDEO_SUFFIXES are videos (decoded with PyAV), anything else an image.
Exit status: 0 success; 1 an error the user can fix (missing file, bad checkpoint, unknown tap, prompt
too long, resource budget exceeded, out of memory), printed as one `error:` line; 2 usage errors
(argparse); 130 Ctrl-C; 143 SIGTERM. Interrupted runs leave nothing partial.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..generate.compiled import COMPILE_MODES, DEBUG_BACKENDS
from ..generate.settings import model_defaults
from ..generate.text_stream import TextStream
from ..inputs.budget import DEFAULT_MAX_VISION_TOKENS
from ..inputs.preprocess import (
    IMAGE_MAX_PIXELS,
    IMAGE_MIN_PIXELS,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    concat_outputs,
    load_rgb,
)
from ..inputs.qwen_vl_rules import frame_pixel_budget
from ..model.config import Config
from ..parallel.launch import launched_distributed
from ..utils.fs import write_atomic
from ..utils.progress import LOGGER_NAME
from ..utils.signals import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, terminate_as_exception
from ..utils.validate import check_sampling
from .attend import add_arguments as add_attend_arguments
from .attend import cmd_attend
from .demo import cmd_demo
from .latents import cmd_latents
from .support import (
    DTYPES,
    FAMILIES,
    RELEASED,
    CliError,
    VideoFlags,
    image_inputs,
    is_video,
    load_model,
    pixel_range,
    preprocess,
    video_inputs,
    window_summary,
)

log = logging.getLogger(__name__)

# ---- inspect ----------------------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..interp.overlay import draw_tiling, frames_from_patches

    config = Config.preset(RELEASED[args.family])  # only the config: no weights are built
    v = config.vision
    path = Path(args.input)
    flags = VideoFlags.from_args(args)
    inputs = preprocess(path, args.min_pixels, args.max_pixels, args.max_vision_tokens, flags=flags)
    video = is_video(path)
    grid_key, rows_key = (
        ("video_grid_thw", "pixel_values_videos") if video else ("image_grid_thw", "pixel_values")
    )
    grid = inputs[grid_key]
    t, h, w = grid[0].tolist()
    tokens = t * h * w // v.merge_size**2
    frames = frames_from_patches(inputs[rows_key], (t, h, w))
    if video:  # qwen-vl-utils' per-frame budget for this many frames (the total-pixel cap included)
        low, _ = pixel_range(args.min_pixels, args.max_pixels, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)
        lo, hi = frame_pixel_budget(
            t * v.temporal_patch_size,
            factor=v.patch_size * v.merge_size,
            min_pixels=low,
            max_pixels=args.max_pixels,
            total_pixels=args.total_pixels,
        )
        lo, hi = int(lo), int(hi)
    else:
        lo, hi = pixel_range(args.min_pixels, args.max_pixels, IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS)
    windows = window_summary(config, torch.tensor([[1, h, w]]))
    report: dict[str, Any] = {  # the --json schema (docs/cli.md)
        "input": str(path),
        "kind": "video" if video else "image",
        "family": args.family,
        "input_size": None if video else list(load_rgb(path).size),
        "frames_used": t * v.temporal_patch_size if video else None,
        "seconds_per_temporal_patch": float(inputs["second_per_grid_ts"][0]) if video else None,
        "resized": [w * v.patch_size, h * v.patch_size],
        "pixel_budget": [lo, hi],
        "grid_thw": [t, h, w],
        "patches": t * h * w,
        "values_per_patch": int(inputs[rows_key].shape[1]),
        "merged_tokens": tokens,
        "prompt_tokens": tokens + 2,
        "windows": windows,
    }
    if not args.json:
        print(f"{path} ({'video' if video else 'image'})")
        if not video:
            print(f"  input size        {report['input_size'][0]}x{report['input_size'][1]} px (w x h)")
        else:
            print(
                f"  frames used       {t * v.temporal_patch_size} (after padding to a multiple of {v.temporal_patch_size}), "
                f"{report['seconds_per_temporal_patch']:g} s per temporal patch"
            )
        print(f"  smart_resize      {w * v.patch_size}x{h * v.patch_size} px (pixel budget {lo}..{hi})")
        print(f"  grid (t, h, w)    {t} x {h} x {w}")
        print(f"  patches           {t * h * w} rows x {inputs[rows_key].shape[1]} values")
        print(f"  windows ({args.family}) {windows} per temporal patch")
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
    if args.json:
        print(json.dumps(report | {"overlay": str(out)}))
    log.info("wrote: %s", out)
    return 0


# ---- run --------------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from ..generate.loop import stream
    from ..inputs.processor import Processor
    from ..inputs.prompts import encode, load_tokenizer

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
        from .distributed import load_tp_model

        model, context = load_tp_model(
            args.model, args.dtype, args.device, args.verify, args.tp, finite_guard=not args.compile
        )
        show = context.is_main
    else:
        # compiled decoding refuses forward hooks; generate checks every step's logits anyway
        model = load_model(args.model, args.dtype, args.device, args.verify, finite_guard=not args.compile)
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
    flags = VideoFlags.from_args(args)
    videos = [video_inputs(p, *budget, processor.video, flags) for p in args.video]
    vision: dict[str, Tensor] = {}
    if images:
        vision |= concat_outputs(images)
    if videos:
        vision |= concat_outputs(videos)  # Qwen2-VL checks second_per_grid_ts and does not use it
    content: list[dict[str, Any]] = [{"type": "image"} for _ in images] + [{"type": "video"} for _ in videos]
    content.append({"type": "text", "text": args.prompt or ""})
    text = processor.apply_chat_template([{"role": "user", "content": content}])
    tokenizer = processor.tokenizer
    try:
        encoded = encode(
            tokenizer,
            text,
            image_grid_thw=vision.get("image_grid_thw"),
            video_grid_thw=vision.get("video_grid_thw"),
            merge_size=config.vision.merge_size,
            max_length=config.text.max_position_embeddings,
        )
    except ValueError as err:
        if "tokens long, over the limit" not in str(err):
            raise
        raise CliError(f"{str(err).split(';')[0]}; {FEWER_TOKENS}, or shorten --prompt") from err
    stops = model_defaults(model).stop_token_ids  # the checkpoint's eos ids when it says
    if stops is None:
        stops = [
            i
            for i in (tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>"))
            if i is not None
        ]
    device = model.text.embed_tokens.weight.device
    vision = {k: t.to(device) for k, t in vision.items()}
    pieces = TextStream(tokenizer)  # incremental: each token's new text, never the whole answer again
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
        piece = pieces.push(token)
        if show and piece:
            print(piece, end="", flush=True)
    if show:
        print(pieces.finish())
    return 0


# ---- convert ----------------------------------------------------------------------------------------------


def _add_convert(sub: argparse._SubParsersAction) -> None:
    from ..weights_convert.cli import add_arguments, run

    parser = sub.add_parser("convert", help="convert a Hugging Face checkpoint (dir or hub id) to qwenvl-min")
    add_arguments(parser)
    parser.set_defaults(func=run)


# ---- entry point ------------------------------------------------------------------------------------------


FEWER_TOKENS = (
    "use fewer vision tokens: --max-pixels (images and video frames), --fps / --num-frames / --max-frames / "
    "--total-pixels (videos)"
)


def _add_pixel_budget(parser: argparse.ArgumentParser) -> None:
    """The size flags (per kind: a flag given wins over the checkpoint's processor config, which wins over
    the library default) and the video sampling flags (qwen-vl-utils' rules unless given)."""
    parser.add_argument(
        "--min-pixels",
        type=int,
        default=None,
        help="smallest resized area of an image / a video frame (default per kind: the checkpoint's "
        "processor config for images, else 56*56; 128*28*28 for video frames)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="largest resized area of an image / a video frame (default per kind: the checkpoint's "
        "processor config for images, else 1280*28*28; 768*28*28 for video frames, less for long videos); "
        "below a kind's default minimum it lowers that minimum too",
    )
    parser.add_argument(
        "--fps",
        type=float,
        default=None,
        help="video frames kept per second (default 2, as qwen-vl-utils; not with --num-frames)",
    )
    parser.add_argument(
        "--num-frames",
        type=int,
        default=None,
        help="keep this many video frames, evenly spaced, first and last included (rounded to even)",
    )
    parser.add_argument(
        "--max-frames",
        type=int,
        default=None,
        help="at most this many video frames with --fps (default 768)",
    )
    parser.add_argument(
        "--total-pixels",
        type=int,
        default=None,
        help="pixel budget of all frames of a video together: long videos get smaller frames (default "
        "0.9*128000*28*28, qwen-vl-utils' cap)",
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
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    _add_verbosity(parser, default=0)
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
    inspect.add_argument("--json", action="store_true", help="print the report as one JSON object")
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
        nargs="?",
        const=True,
        default=False,
        choices=[*COMPILE_MODES, *DEBUG_BACKENDS],  # bare --compile gives True (not checked here)
        metavar="MODE",
        help="compiled decoder: CUDA graphs on CUDA, inductor on CPU; MODE picks a torch.compile mode "
        f"({', '.join(COMPILE_MODES)}) or a debug backend ({', '.join(DEBUG_BACKENDS)}); the first "
        "answer pays the compilation (docs/compiled_generation.md)",
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
    latents.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    _add_pixel_budget(latents)
    latents.set_defaults(func=cmd_latents)

    attend = sub.add_parser("attend", help="PNGs of where answer tokens look on an image (attention maps)")
    _add_model(attend)
    add_attend_arguments(attend)
    attend.set_defaults(func=cmd_attend)

    _add_convert(sub)
    for subcommand in sub.choices.values():  # -q / -v after the subcommand too (absent: the global value)
        _add_verbosity(subcommand, default=argparse.SUPPRESS)
    return parser


def package_version() -> str:
    try:
        return metadata.version("qwenvl-min")
    except metadata.PackageNotFoundError:
        return "(not installed: running from a source tree)"


def _add_verbosity(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "-q", "--quiet", action="count", default=default, help="warnings and errors only, no progress bars"
    )
    parser.add_argument("-v", "--verbose", action="count", default=default, help="debug detail on stderr")


def _log_level(args: argparse.Namespace) -> int:
    """INFO by default; each -q one level up (WARNING, ERROR), -v down to DEBUG."""
    steps = getattr(args, "quiet", 0) - getattr(args, "verbose", 0)
    return min(logging.ERROR, max(logging.DEBUG, logging.INFO + 10 * steps))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # status and progress through the package logger, to the stderr of this call; restored afterwards so
    # that a program calling main() keeps its own logging setup
    logger = logging.getLogger(LOGGER_NAME)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    before = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(_log_level(args))
    logger.propagate = False
    try:
        return _run_command(args)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before[0])
        logger.propagate = before[1]


def _run_command(args: argparse.Namespace) -> int:
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
