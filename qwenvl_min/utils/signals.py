"""SIGTERM as an exception, so `finally` blocks (temporary files, staging directories, locks) run.

Python turns Ctrl-C (SIGINT) into KeyboardInterrupt but dies at once on SIGTERM, leaving whatever was half
written. `terminate_as_exception()` raises `Terminated` in the main thread instead (once: a second
SIGTERM during cleanup is ignored, SIGKILL still works). The CLIs exit with 143 (128 + SIGTERM) after it.
What a SIGKILL leaves behind is removed by the next run for the same destination (see its docstring).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_TERMINATED = 128 + signal.SIGTERM
EXIT_INTERRUPTED = 128 + signal.SIGINT


class Terminated(BaseException):
    """The process received SIGTERM; raised where it was, so cleanup runs on the way out."""


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let cleanup finish
    raise Terminated(f"terminated by signal {signum}")


@contextmanager
def terminate_as_exception() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
