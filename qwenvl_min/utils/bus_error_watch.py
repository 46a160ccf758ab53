"""The watcher process of `qwenvl_min.utils.mapped_files` (`python -m qwenvl_min.utils.bus_error_watch`).

stdin is a pipe from the watched process. It carries registration lines (`MARK` + JSON of a
`MappedFile`) and, if that process dies of a fatal signal, what faulthandler writes then. On
"Fatal Python error: Bus error" this prints, at once, one `error:` line naming the checkpoint and each of
its mapped files that changed since it was mapped (fstat of the file opened at registration: the mapped
inode itself). Anything else faulthandler wrote is passed on to stderr unchanged at the end. It exits
when the pipe closes (the watched process is gone), silently when nothing happened.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from .mapped_files import MARK

BUS_ERROR = b"Fatal Python error: Bus error"


def _describe(record: dict, fd: int | None) -> str | None:
    """How the mapped file changed since it was mapped, or None if it did not."""
    if fd is None:  # it was replaced before the watcher could open it: the mapped inode is unknown
        return None
    st = os.fstat(fd)
    if st.st_size < record["size"]:
        return f"truncated from {record['size']} to {st.st_size} bytes"
    if st.st_size != record["size"] or st.st_mtime_ns != record["mtime_ns"]:
        when = time.strftime("%H:%M:%S", time.localtime(st.st_mtime_ns / 1e9))
        return f"rewritten in place at {when} ({record['size']} bytes when mapped, {st.st_size} now)"
    return None


def report(records: list[tuple[dict, int | None]]) -> tuple[str, bool]:
    """The error line for a SIGBUS, and whether a changed file explains it."""
    changed = [(r, how) for r, fd in records if (how := _describe(r, fd)) is not None]
    checkpoints = sorted({r["checkpoint"] for r, _ in records})
    if changed:
        files = "; ".join(f"{os.path.basename(r['path'])} {how}" for r, how in changed)
        where = sorted({r["checkpoint"] for r, _ in changed})
        return (
            f"error: killed by SIGBUS: the memory-mapped checkpoint {', '.join(where)} changed under this "
            f"process ({files}), so pages of its weights no longer exist. Replace a checkpoint a job is using "
            "by writing a new directory and renaming it, never in place (docs/safety.md)",
            True,
        )
    if checkpoints:
        return (
            f"error: killed by SIGBUS while the checkpoint {', '.join(checkpoints)} was memory-mapped, but "
            "none of its files changed size or time since loading: the cause is elsewhere (a failing disk or "
            "network file system?); faulthandler's report follows",
            False,
        )
    return "", False


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the watched process decides about interrupts
    os.write(1, b"+")  # listening: the watched process goes on
    os.close(1)
    records: list[tuple[dict, int | None]] = []
    crash = bytearray()
    explained = False
    buffer = b""
    while chunk := os.read(0, 65536):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.startswith(MARK):
                record = json.loads(line[len(MARK) :])
                try:
                    fd = os.open(record["path"], os.O_RDONLY)
                    st = os.fstat(fd)
                    if (st.st_dev, st.st_ino) != (record["dev"], record["ino"]):
                        os.close(fd)
                        fd = None
                except OSError:
                    fd = None
                records.append((record, fd))
                continue
            crash += line + b"\n"
            if line.startswith(BUS_ERROR):
                message, explained = report(records)
                if message:
                    print(message, file=sys.stderr, flush=True)
    crash += buffer
    if crash and not explained:
        sys.stderr.buffer.write(bytes(crash))
        sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
