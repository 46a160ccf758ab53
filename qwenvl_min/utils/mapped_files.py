"""Which checkpoint files this process has memory-mapped, and a clear last word if one changes under it.

The loaders keep weights as views into private memory maps of the shards (no copy). If a shard is then
truncated or rewritten *in place* (`cp new.safetensors ckpt/`, an editor, `truncate`), the next read of a
page that no longer exists kills the process with SIGBUS. No Python code can run at that moment: the
fault happens inside a C kernel (a matmul reading the weight), the thread cannot go on, and a
`signal.signal` handler would only run after the faulting instruction, which is retried forever. So:

- `note_mapped(checkpoint, files)` records, when a loader keeps views into `files`, each file's identity
  (device, inode) and state (size, mtime) at that moment;
- `report_bus_errors()` (the CLI calls it before loading; library users may) starts one small watcher
  process (`qwenvl_min.utils.bus_error_watch`) with a pipe to it, sends it every record, and points
  `faulthandler` at that pipe. faulthandler's handler is C code made for this moment: on a fatal signal
  it writes "Fatal Python error: Bus error" and the tracebacks to the pipe with plain write() calls and
  lets the process die as before. The watcher, alive and outside the dying process, reads that, checks
  the files it opened at registration (fstat of the mapped inode itself, so a file renamed away or
  replaced is told apart from one changed in place) and prints one `error:` line naming the checkpoint,
  the file and what changed. Other fatal errors (a segfault) are passed on as faulthandler wrote them.

The watcher exits when the pipe closes, i.e. when this process (and any child it forked) has ended; it
runs in its own session, so Ctrl-C on the terminal reaches only this process. docs/safety.md has the
story for users.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import select
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass

LOG = logging.getLogger(__name__)
READY_TIMEOUT_S = 10.0
MARK = b"\x1eqwenvl-min-mapped "  # starts a registration line on the pipe (faulthandler never writes \x1e)


@dataclass(frozen=True)
class MappedFile:
    checkpoint: str  # the checkpoint directory, as the user named it to the loader (resolved)
    path: str
    dev: int
    ino: int
    size: int
    mtime_ns: int


_MAPPED: list[MappedFile] = []  # process-wide, like the mappings themselves
_PIPE: int | None = None  # the write end to the watcher, once report_bus_errors() started it
_WATCHER: subprocess.Popen | None = None  # kept: it runs as long as this process


def note_mapped(checkpoint: str | os.PathLike[str], files: Iterable[str | os.PathLike[str]]) -> None:
    """A loader keeps views into `files` of `checkpoint`: remember them (and tell the watcher, if any)."""
    for file in sorted({os.fspath(f) for f in files}):
        try:
            st = os.stat(file)
        except OSError:
            continue
        record = MappedFile(os.fspath(checkpoint), file, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        _MAPPED.append(record)
        _send(record)


def mapped_files() -> list[MappedFile]:
    """Everything this process has recorded as mapped (a checkpoint counts from its load on)."""
    return list(_MAPPED)


def report_bus_errors() -> bool:
    """Start the watcher (once per process) so that a SIGBUS from a changed checkpoint ends with one line
    saying so. Returns False if the watcher cannot be started (nothing else changes then)."""
    global _PIPE, _WATCHER
    if _PIPE is not None:
        return True
    read_end, write_end = os.pipe()  # both non-inheritable: only the watcher gets the read end, as stdin
    try:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "qwenvl_min.utils.bus_error_watch"],
            stdin=read_end,
            stdout=subprocess.PIPE,
            start_new_session=True,  # not in the terminal's process group: Ctrl-C is for this process only
        )
    except OSError as err:
        os.close(write_end)
        LOG.debug("no SIGBUS report: the watcher process did not start (%s)", err)
        return False
    finally:
        os.close(read_end)
    # wait until it listens (~60 ms, once per process): a crash right after loading is then reported at
    # once, before the shell prints its prompt, not after
    assert watcher.stdout is not None
    ready, _, _ = select.select([watcher.stdout], [], [], READY_TIMEOUT_S)
    if not ready or watcher.stdout.read(1) != b"+":
        watcher.kill()
        watcher.wait()
        os.close(write_end)
        LOG.debug("no SIGBUS report: the watcher process did not answer")
        return False
    watcher.stdout.close()
    _PIPE, _WATCHER = write_end, watcher
    faulthandler.enable(file=write_end, all_threads=True)
    for record in _MAPPED:
        _send(record)
    return True


def _send(record: MappedFile) -> None:
    if _PIPE is None:
        return
    line = MARK + json.dumps(asdict(record)).encode() + b"\n"
    try:
        os.write(_PIPE, line)  # one write under PIPE_BUF (4 KiB): never interleaved with another
    except OSError as err:
        LOG.debug("the SIGBUS watcher is gone (%s); no report", err)
