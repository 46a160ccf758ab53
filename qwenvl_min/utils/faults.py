"""Named pause points for fault-injection tests: a deterministic way to stop a run at a chosen moment.

`pause_point(name)` does nothing unless
- a callback is registered in `HOOKS[name]` (in-process tests), which is called; or
- the environment variable QWENVL_MIN_PAUSE_AT is `name=DIR` (subprocess tests): the process writes its
  pid to DIR/reached and blocks opening the FIFO DIR/go until the test opens it for writing, so the test
  can kill it, signal it, or race another run against it at exactly that point, without sleeps.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

ENV = "QWENVL_MIN_PAUSE_AT"
HOOKS: dict[str, Callable[[], None]] = {}


def pause_point(name: str) -> None:
    hook = HOOKS.get(name)
    if hook is not None:
        hook()
    point, _, directory = os.environ.get(ENV, "").partition("=")
    if point != name or not directory:
        return
    folder = Path(directory)
    (folder / "reached.tmp").write_text(str(os.getpid()))
    os.replace(folder / "reached.tmp", folder / "reached")
    with open(folder / "go") as fifo:  # blocks until the test opens the FIFO for writing
        fifo.read()
