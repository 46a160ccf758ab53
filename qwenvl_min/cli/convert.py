"""`qwenvl-min convert SRC DST`: a Hugging Face checkpoint (directory or Hub id) to our layout, or back with
--to-hf (the converter itself: `qwenvl_min.weights_convert`)."""

from __future__ import annotations

import argparse

from ..weights_convert.cli import add_arguments, run


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("convert", help="convert a Hugging Face checkpoint (dir or hub id) to qwenvl-min")
    add_arguments(parser)
    parser.set_defaults(func=run)
