"""The `qwenvl-min` console script.

    qwenvl-min demo [--out DIR] [--family qwen2.5-vl|qwen2-vl]     tiny seeded model, token flow, PNGs
    qwenvl-min inspect IMAGE|VIDEO [--model DIR] [--png PATH]       token cost (that checkpoint's budget), no weights
    qwenvl-min run --model DIR|HUB_ID --image F --prompt TEXT         streamed answer
    torchrun --nproc-per-node N -m qwenvl_min run --tp N --model DIR ...   the same, tensor parallel
    qwenvl-min latents --model DIR --taps NAMES --out DIR INPUTS...   taps -> one .safetensors per input
    torchrun --nproc-per-node N -m qwenvl_min latents ...             the same, data parallel
    qwenvl-min attend --model DIR --image F --prompt TEXT --out DIR   where answer tokens look (PNGs)
    qwenvl-min convert SRC DST                                        HF checkpoint -> ours

Global options (before or after the subcommand): `--version`; `-q` (no status lines or progress bars;
`-qq` errors only) and `-v` (debug detail) set the level of the `qwenvl_min` logger. Where results, status
and errors go is decided in one place, `qwenvl_min.utils.console` (results on stdout, `--json` on
`inspect`, `run` and `latents` as one JSON object, schemas in docs/cli.md; status and progress on stderr).

Inputs are told apart by suffix: VIDEO_SUFFIXES are videos (decoded with PyAV), anything else an image.
Exit status: 0 success; 1 an error the user can fix (missing file, bad checkpoint, unknown tap, prompt
too long, resource budget exceeded, out of memory), printed as one `error:` line; 2 usage errors (one
`error:` line too); 130 Ctrl-C; 143 SIGTERM. Interrupted runs leave nothing partial. A checkpoint shard
changed under a run ends it with SIGBUS and one line naming the shard (`qwenvl_min.utils.mapped_files`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from ..utils import console
from ..utils.signals import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, terminate_as_exception
from . import attend, convert, demo, inspect, latents, run
from .support import CliError


def build_parser() -> argparse.ArgumentParser:
    parser = console.Parser(
        prog="qwenvl-min", description="Qwen2-VL / Qwen2.5-VL / Qwen3-VL in small, readable PyTorch"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    _add_verbosity(parser, default=0)
    sub = parser.add_subparsers(dest="command", required=True)  # subcommands are console.Parser too
    for command in (demo, inspect, run, latents, attend, convert):
        command.register(sub)
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
        "-q",
        "--quiet",
        action="count",
        default=default,
        help="no status lines or progress bars (-qq: errors only)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=default, help="debug detail on stderr")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # where status, results and errors go: `qwenvl_min.utils.console`, the one rule for every command
    with console.command_output(console.log_level(getattr(args, "quiet", 0), getattr(args, "verbose", 0))):
        return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    try:
        with terminate_as_exception():
            return int(args.func(args))
    except CliError as err:
        console.error(err)
    except (OSError, ValueError, KeyError, ImportError) as err:
        # the library's own errors already say what is wrong and what to do
        console.error(err.args[0] if isinstance(err, KeyError) and err.args else err)
    except MemoryError:
        console.error("out of memory; lower --max-pixels / --max-vision-tokens, or use a smaller --dtype")
    except KeyboardInterrupt:
        console.error("interrupted")
        return EXIT_INTERRUPTED
    except Terminated:
        console.error("terminated (SIGTERM)")
        return EXIT_TERMINATED
    return 1
