"""The command-line options several commands share: the model to load, and the pixel / frame budgets."""

from __future__ import annotations

import argparse

from ..inputs.budget import DEFAULT_MAX_VISION_TOKENS
from ..utils.dtypes import DtypeError, accepted, dtype_name, parse_dtype

FEWER_TOKENS = (
    "use fewer vision tokens: --max-pixels (images and video frames), --fps / --num-frames / --max-frames / "
    "--total-pixels (videos)"
)


def add_pixel_budget(parser: argparse.ArgumentParser) -> None:
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


def dtype_argument(value: str) -> str:
    """--dtype: any spelling of the table in `qwenvl_min.utils.dtypes`, kept as its canonical name (what
    outputs record: `--dtype fp16` and `--dtype float16` are the same run)."""
    try:
        return dtype_name(parse_dtype(value))
    except DtypeError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="a Hugging Face checkpoint directory or Hub id, or a converted checkpoint (`qwenvl-min convert`)",
    )
    parser.add_argument(
        "--dtype",
        type=dtype_argument,
        default=None,
        metavar="DTYPE",
        help=f"cast the weights to {accepted()} (default: the dtype config.json names, else as stored)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check the sha256 of every shard against manifest.json first (default: sizes and headers)",
    )
