"""Where a conversion writes: one locked, atomic, re-checked destination.

`Destination(dst, force)` is used as a context manager around the whole conversion:
1. lock: `.DST.lock` beside DST (fcntl.flock, not waiting): a second conversion to the same DST stops at
   once with an error naming the holder;
2. clean up after killed runs: under the lock no other run can be using `.DST.partial-*` staging
   directories, so leftovers of a SIGKILL are removed (and a replaced DST that a kill left hidden in a
   `.DST.old-*` directory is put back);
3. check DST: absent, or (force) replaceable: empty, or written by this converter with nothing in it the
   manifest does not account for;
4. `staging`: a fresh directory beside DST (same file system, permissions from the umask);
5. `commit()`: re-checks DST under the lock and moves staging into place in one step: rename without
   replacing (a DST that appeared meanwhile is never touched), or with force an atomic exchange
   (renameat2 RENAME_EXCHANGE), after which only the files the old manifest lists are deleted. Where the
   exchange is unsupported, a two-rename swap whose intermediate state the next run repairs.
On any exit the staging directory, the lock file and parent directories this run created are removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from types import TracebackType

from ..utils.fs import ExclusiveLock, LockedError, apply_umask, rename_exchange, rename_noreplace
from .checkpoint import CONFIG_FILE, FORMAT, INDEX_FILE, MANIFEST_FILE, CheckpointError, read_json

STAGING_MARK = ".qwenvl-min-staging"  # written first into every staging directory


class DestinationExists(CheckpointError):
    """DST exists (or appeared while converting) and force was not given. The message names the remedy
    in the caller's terms: `force=True` in Python (str(err)), `--force` on the command line
    (`err.message("--force")`)."""

    def __init__(self, path: Path, *, appeared: bool) -> None:
        self.path, self.appeared = path, appeared
        super().__init__(self.message("force=True"))

    def message(self, force: str) -> str:
        if self.appeared:
            return (
                f"{self.path} appeared while converting (another program created it); it was left untouched "
                f"and this conversion discarded: remove it, or pass {force} to replace it"
            )
        return f"{self.path} already exists; pass {force} to replace it"


class Destination:
    def __init__(self, dst: str | os.PathLike[str], force: bool) -> None:
        self.path = Path(dst).expanduser().resolve()
        self.force = force
        self.staging: Path | None = None
        self._lock = ExclusiveLock(self.path.parent / f".{self.path.name}.lock")
        self._created: list[Path] = []  # parent directories this run made (removed if it fails)
        self._committed = False

    # ---- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> Destination:
        self._make_parents()
        try:
            self._lock.acquire()
        except LockedError as err:
            self._remove_created_parents()
            raise CheckpointError(
                f"another conversion is writing {self.path} ({err.strerror}); wait for it to finish or "
                "choose another destination"
            ) from None
        except OSError as err:
            self._remove_created_parents()
            raise CheckpointError(
                f"cannot write into {self.path.parent}: {err.strerror}; choose a writable destination"
            ) from None
        try:
            self._clean_stale()
            self.check()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()

    def _close(self) -> None:
        try:
            if self.staging is not None and self.staging.exists():
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self._lock.release()
            if not self._committed:
                self._remove_created_parents()

    def _make_parents(self) -> None:
        missing = []
        for parent in [self.path.parent, *self.path.parent.parents]:
            if parent.exists():
                break
            missing.append(parent)
        try:
            for parent in reversed(missing):
                parent.mkdir()
                self._created.append(parent)
        except OSError as err:
            self._remove_created_parents()
            raise CheckpointError(
                f"cannot write into {self.path.parent}: {err.strerror or err}; choose a writable destination"
            ) from None

    def _remove_created_parents(self) -> None:
        for parent in reversed(self._created):
            try:
                parent.rmdir()  # only if still empty: never what someone else put there
            except OSError:
                break
        self._created = []

    # ---- checks ------------------------------------------------------------------------------------
    def check(self) -> None:
        """DST may be written: absent, or replaceable with force. Raises CheckpointError otherwise."""
        if not os.path.lexists(self.path):
            return
        if not self.force:
            raise DestinationExists(self.path, appeared=False)
        replaceable_files(self.path)

    def _clean_stale(self) -> None:
        parent = self.path.parent
        for old in sorted(parent.glob(f".{glob_escape(self.path.name)}.old-*")):
            hidden = old / self.path.name
            if not os.path.lexists(self.path) and hidden.is_dir():
                os.rename(hidden, self.path)  # a kill between the two renames of a fallback swap
            if _ours_to_remove(hidden) and _ours_to_remove(old, allow_child=self.path.name):
                shutil.rmtree(old, ignore_errors=True)
        for stale in parent.glob(f".{glob_escape(self.path.name)}.partial-*"):
            if _ours_to_remove(stale):
                shutil.rmtree(stale, ignore_errors=True)

    # ---- writing -----------------------------------------------------------------------------------
    def make_staging(self) -> Path:
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=self.path.parent))
            (staging / STAGING_MARK).write_text(str(os.getpid()))
            apply_umask(staging, 0o777)
        except OSError as err:
            raise CheckpointError(
                f"cannot write into {self.path.parent}: {err.strerror or err}; choose a writable destination"
            ) from None
        self.staging = staging
        return staging

    def commit(self) -> None:
        """Move the finished staging directory to DST (see the module docstring)."""
        assert self.staging is not None, "make_staging() first"
        (self.staging / STAGING_MARK).unlink()
        try:
            if not os.path.lexists(self.path):
                self._rename_into_place()
            elif not self.force:
                raise DestinationExists(self.path, appeared=True)
            else:
                old_files = replaceable_files(self.path)  # re-checked: it may have changed meanwhile
                if rename_exchange(self.staging, self.path):
                    _remove_listed(self.staging, old_files, self.path)  # staging now holds the old DST
                else:
                    self._two_rename_swap(old_files)
        except OSError as err:
            raise CheckpointError(
                f"moving the finished conversion to {self.path} failed: {err}; {self.path} is unchanged"
            ) from None
        self._committed = True

    def _rename_into_place(self) -> None:
        try:
            rename_noreplace(self.staging, self.path)
        except FileExistsError:
            raise DestinationExists(self.path, appeared=True) from None

    def _two_rename_swap(self, old_files: list[str]) -> None:
        hidden = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old-", dir=self.path.parent))
        os.rename(self.path, hidden / self.path.name)
        try:
            rename_noreplace(self.staging, self.path)
        except BaseException:
            os.rename(hidden / self.path.name, self.path)
            hidden.rmdir()
            raise
        _remove_listed(hidden / self.path.name, old_files, self.path)
        hidden.rmdir()


def replaceable_files(path: Path) -> list[str]:
    """The names in `path` that --force may delete: all of them, and all written by this converter.

    Raises CheckpointError naming what is not ours: another kind of file, a directory without our
    manifest, or files the manifest does not account for (a user's notes, a second model)."""
    if not path.is_dir() or path.is_symlink():
        raise CheckpointError(
            f"refusing to replace {path}: it is not a directory written by this converter; remove it "
            "yourself if it can go"
        )
    names = sorted(os.listdir(path))
    if not names:
        return []
    try:
        manifest = read_json(path / MANIFEST_FILE, "manifest")
    except CheckpointError:
        manifest = {}
    if manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"refusing to replace {path}: it is neither empty nor a directory written by this converter "
            f"(no {MANIFEST_FILE} with format {FORMAT!r}); remove it yourself if it can go"
        )
    listed = {CONFIG_FILE, INDEX_FILE, MANIFEST_FILE}
    for group in ("shards", "companion_files"):
        records = manifest.get(group)
        if isinstance(records, list):
            listed |= {str(r.get("file")) for r in records if isinstance(r, dict)}
    foreign = [n for n in names if n not in listed or not (path / n).is_file() or (path / n).is_symlink()]
    if foreign:
        raise CheckpointError(
            f"refusing to replace {path}: it holds {foreign[:8]}, which this converter did not write "
            f"(not in its {MANIFEST_FILE}); move them out first, or remove {path} yourself"
        )
    return names


def _remove_listed(directory: Path, names: list[str], dst: Path) -> None:
    for name in names:
        (directory / name).unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        kept = directory.with_name(f"{dst.name}.kept-files-{os.getpid()}")
        os.rename(directory, kept)
        warnings.warn(
            f"files appeared in the old {dst} while it was replaced; they were kept in {kept}", stacklevel=3
        )


def _ours_to_remove(path: Path, allow_child: str | None = None) -> bool:
    """A leftover we may delete: our staging mark, our manifest, or empty (a kill right after mkdtemp)."""
    if not path.exists():
        return True
    if not path.is_dir() or path.is_symlink():
        return False
    names = set(os.listdir(path)) - ({allow_child} if allow_child else set())
    if not names or STAGING_MARK in names:
        return True
    try:
        return read_json(path / MANIFEST_FILE, "manifest").get("format") == FORMAT
    except CheckpointError:
        return False


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
