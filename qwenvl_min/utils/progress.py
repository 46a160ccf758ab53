"""Progress bars that appear only where a person watches them.

A bar is drawn on stderr when stderr is a terminal, unless the `qwenvl_min` logger's own level is set
above INFO (the CLI's `-q` does that; a library user can too:
`logging.getLogger("qwenvl_min").setLevel(logging.WARNING)`). In a pipe, a CI log or a file it is never
drawn: carriage-return redraws turn a log into one unreadable line per update. `enabled` overrides the
rule either way.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOGGER_NAME = "qwenvl_min"


def bars_enabled() -> bool:
    """True when a bar would be seen: stderr is a terminal and nobody asked for quiet."""
    stderr = sys.stderr
    on_terminal = bool(getattr(stderr, "isatty", None)) and stderr.isatty()
    level = logging.getLogger(LOGGER_NAME).level  # NOTSET (0) unless someone chose a level
    return on_terminal and level <= logging.INFO


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    total: float | None = None,
    desc: str | None = None,
    unit: str = "it",
    enabled: bool | None = None,
    **format_options: object,
) -> tqdm:
    """A tqdm bar on stderr, shown by the rule above unless `enabled` says otherwise.

    `format_options` go to tqdm unchanged (unit_scale, unit_divisor, leave): formatting only, never input.
    """
    show = bars_enabled() if enabled is None else enabled
    return tqdm(
        iterable, total=total, desc=desc, unit=unit, disable=not show, file=sys.stderr, **format_options
    )
