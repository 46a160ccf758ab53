"""File-system primitives for writing outputs safely: an exclusive lock file, atomic renames that never
replace what is already there, and permissions that follow the umask.

- `ExclusiveLock(path)`: fcntl.flock on a lock file, taken without waiting (a second run fails at once
  and says which process holds it). The file is removed on release; taking the lock re-checks that the
  path still names the locked file, so removing it can never let two holders in.
- `rename_noreplace(src, dst)`: rename that fails with FileExistsError if dst exists (Linux
  renameat2(RENAME_NOREPLACE); elsewhere an exclusive mkdir of dst that the rename then replaces, which
  still never replaces anything but the empty directory we just made).
- `rename_exchange(a, b)`: swap two paths in one step (renameat2(RENAME_EXCHANGE)); None where the
  kernel or file system cannot, so the caller takes its journaled two-rename path.
- `write_atomic(path, write, replace=True)`: a file written under a temporary name and renamed into place;
  replace=False never over an existing file (renameat2(RENAME_NOREPLACE), else a hard link).
- `apply_umask(path, mode)`: mkdtemp / mkstemp create 0700 / 0600 whatever the umask; outputs should not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = None


class LockedError(OSError):
    """Another process holds the lock."""


def current_umask() -> int:
    try:  # read without changing it (os.umask can only be read by setting it)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: Path, mode: int = 0o666) -> None:
    os.chmod(path, mode & ~current_umask())


class ExclusiveLock:
    """An exclusive, non-blocking flock on `path` (created if needed, removed on release)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666 & ~current_umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise LockedError(
                    errno.EAGAIN, f"locked by another process{f' (pid {holder})' if holder else ''}"
                ) from None
            except OSError:
                os.close(fd)
                raise
            try:  # the holder before us may have removed the file after we opened it: retry on the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self._fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: see acquire's re-check
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ExclusiveLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """True if done; False if this kernel / file system has no renameat2 with these flags."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    function = getattr(_libc, "renameat2", None)
    if function is None:
        return False
    result = function(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename src to dst; FileExistsError if dst exists (file, directory, empty or not)."""
    try:
        if _renameat2(src, dst, _RENAME_NOREPLACE):
            return
    except OSError as err:
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, "already exists", str(dst)) from None
        raise
    os.mkdir(dst, 0o700)  # FileExistsError if anything is there; ours now, and empty
    try:
        os.rename(src, dst)  # replaces only that empty directory; ENOTEMPTY if someone wrote into it
    except OSError as err:
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, "already exists", str(dst)) from None
        os.rmdir(dst)
        raise


def write_atomic(path: Path, write: Callable[[Path], None], *, replace: bool = True) -> None:
    """`write(tmp)` a temporary file beside `path`, give it umask permissions, rename it over `path`:
    a file at `path` is always complete, and a failure or signal leaves nothing (not even tmp).
    replace=False never puts it over an existing `path`, also one that appeared while writing
    (FileExistsError)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        apply_umask(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _publish_new_file(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _publish_new_file(tmp: Path, path: Path) -> None:
    """tmp -> path unless path exists: renameat2(RENAME_NOREPLACE), else a hard link (which fails on an
    existing name); FileExistsError either way."""
    try:
        if _renameat2(tmp, path, _RENAME_NOREPLACE):
            return
    except OSError as err:
        if err.errno == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "already exists", str(path)) from None
        raise
    os.link(tmp, path)  # the caller removes tmp


def rename_exchange(a: Path, b: Path) -> bool:
    """Swap a and b atomically; False if unsupported here (nothing was changed)."""
    return _renameat2(a, b, _RENAME_EXCHANGE)
