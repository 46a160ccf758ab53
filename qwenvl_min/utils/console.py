"""Where the command line writes: the one rule for every command (`qwenvl-min ...` and
`python -m qwenvl_min.weights_convert`), documented in docs/cli.md ("Where things go").

- **results** go to stdout (`result`, `result_json`): what the command was asked for and a script reads —
  the inspect report, the streamed answer, the latents summary, the attend table, the demo's walk through
  the model, one JSON object with `--json` (then nothing else is on stdout);
- **status** goes to stderr through the `qwenvl_min` logger at INFO (`status`): what the command did or is
  doing — `wrote: PATH`, a skipped input, `run`'s token counts and speed, "compiling ..."; `-q` silences it
  (WARNING), `-qq` leaves errors only, `-v` adds DEBUG detail (`detail`); a library user sets the same
  level with `logging.getLogger("qwenvl_min").setLevel(...)`;
- **errors** go to stderr as one `error: ...` line (`error`), never silenced; usage errors too (`Parser`);
- **progress bars** go to stderr, on a terminal only and not with `-q` (`qwenvl_min.utils.progress`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

from .progress import LOGGER_NAME

_LOG = logging.getLogger(LOGGER_NAME)


def result(text: str = "", *, end: str = "\n") -> None:
    """Part of the command's result, on stdout (flushed: a streamed answer shows as it comes)."""
    print(text, end=end, file=sys.stdout, flush=True)


def result_json(value: Any) -> None:
    """The command's whole result as one JSON object on stdout (`--json`)."""
    print(json.dumps(value), file=sys.stdout, flush=True)


def status(message: str, *args: object) -> None:
    """What the command did or is doing, on stderr; silenced by -q."""
    _LOG.info(message, *args)


def detail(message: str, *args: object) -> None:
    """Debug detail on stderr, shown with -v."""
    _LOG.debug(message, *args)


def one_line(message: object) -> str:
    return " ".join(str(message).split())


def error(message: object) -> None:
    """One `error: ...` line on stderr (never silenced)."""
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)


def log_level(quiet: int, verbose: int) -> int:
    """INFO by default; each -q one level up (WARNING, ERROR), each -v down (DEBUG)."""
    return min(logging.ERROR, max(logging.DEBUG, logging.INFO + 10 * (quiet - verbose)))


@contextlib.contextmanager
def command_output(level: int) -> Iterator[None]:
    """Status through the `qwenvl_min` logger to this call's stderr at `level`, for the block only: a
    program that calls a command's `main()` keeps its own logging setup afterwards."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    before = _LOG.level, _LOG.propagate
    _LOG.addHandler(handler)
    _LOG.setLevel(level)
    _LOG.propagate = False
    try:
        yield
    finally:
        _LOG.removeHandler(handler)
        _LOG.setLevel(before[0])
        _LOG.propagate = before[1]


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line, like every other error (exit status 2): what is wrong,
    and where the options are listed, instead of the whole usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {one_line(message)} (`{self.prog} --help` lists the options)\n")
