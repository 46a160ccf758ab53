"""`python -m qwenvl_min.weights_convert SRC DST [--to-hf] [--dtype D] [--shard-size S] [--force]`.

`add_arguments` / `run` let the `qwenvl-min convert` subcommand reuse the same options.
"""

from __future__ import annotations

import argparse

from ..utils import console
from ..utils.dtypes import accepted
from ..utils.signals import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, terminate_as_exception
from .checkpoint import CheckpointError
from .convert import DEFAULT_SHARD_SIZE, convert_checkpoint, export_to_hf
from .destination import DestinationExists


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", help="HF checkpoint directory or hub id (with --to-hf: a qwenvl-min checkpoint)"
    )
    parser.add_argument("dst", help="output directory (must not exist unless --force)")
    parser.add_argument(
        "--to-hf",
        "--reverse",
        dest="to_hf",
        action="store_true",
        help="convert a qwenvl-min checkpoint back to the Hugging Face format (transformers from_pretrained)",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        help=f"cast floating weights to one of {accepted()} (default: keep each tensor's dtype)",
    )
    parser.add_argument(
        "--shard-size",
        default=DEFAULT_SHARD_SIZE,
        help="largest output shard, e.g. 5GB (default), 2GiB, 500MB or a byte count",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace DST if it is an earlier conversion output"
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bar (default: shown on a terminal)",
    )


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 written, 1 refused (the one-line error says why), 130 Ctrl-C, 143 SIGTERM; nothing
    partial is left in the last three cases."""
    action = export_to_hf if args.to_hf else convert_checkpoint
    try:
        with terminate_as_exception():
            out = action(
                args.src,
                args.dst,
                dtype=args.dtype,
                shard_size=args.shard_size,
                force=args.force,
                progress=args.progress,
            )
    except DestinationExists as err:
        console.error(err.message("--force"))  # the flag, not the Python argument
        return 1
    except CheckpointError as err:
        console.error(err)
        return 1
    except KeyboardInterrupt:
        console.error(f"interrupted; {args.dst} was not written or changed")
        return EXIT_INTERRUPTED
    except Terminated:
        console.error(f"terminated (SIGTERM); {args.dst} was not written or changed")
        return EXIT_TERMINATED
    console.status("wrote: %s", out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = console.Parser(
        prog="python -m qwenvl_min.weights_convert",
        description="Convert Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints between the Hugging Face format and qwenvl-min's.",
    )
    add_arguments(parser)
    parser.add_argument("-q", "--quiet", action="count", default=0, help="no status line or progress bar")
    args = parser.parse_args(argv)
    with console.command_output(console.log_level(args.quiet, 0)):  # the same rule as `qwenvl-min convert`
        return run(args)
