"""`--format webdataset`: inputs' records in tar shards that the `webdataset` library reads as they are.

    OUT/shard-000-000000.tar, OUT/shard-000-000001.tar, ...      (shard-<rank>-<index>.tar)
        <key>.safetensors   the tap tensors, with the metadata in its header (as a latents file)
        <key>.json          the same metadata as a JSON object (`records`)

- A key is the input's output name with every "." made "_" (WebDataset splits a member name at the first
  dot of its file name into key and extension); "/" from directory inputs stays.
- A shard holds at most `shard_size` bytes (the tar, padding included) unless one sample alone is larger,
  which then has a shard of its own. It is written under a hidden temporary name in OUT and renamed when
  full or when the run ends, so a `shard-*.tar` is always complete. Interrupted (Ctrl-C, SIGTERM, an
  error), the shard being written is cut back to its last whole sample and renamed; after a SIGKILL its
  temporary file is left and the next run removes it (its inputs are redone).
- A rerun reads the complete shards' JSON members first and skips every input already there with the
  same settings; new shards take the next free index, so existing shards are never rewritten.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import time
from pathlib import Path
from typing import Any, BinaryIO

from torch import Tensor

from ..utils.faults import pause_point
from ..utils.fs import apply_umask
from .records import safetensors_bytes, settings_problem

DEFAULT_SHARD_SIZE = 1 << 30  # 1 GiB
_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
_SHARD = re.compile(r"shard-(\d+)-(\d+)\.tar")


def sample_key(name: str) -> str:
    return name.replace(".", "_")


def _member_size(data: bytes) -> int:
    return _BLOCK + -(-len(data) // _BLOCK) * _BLOCK  # header block + data padded to whole blocks


def _closed_size(offset: int) -> int:
    """Bytes of a tar whose members end at `offset`, after the two end blocks and the record padding."""
    return -(-(offset + 2 * _BLOCK) // _RECORD) * _RECORD


class ShardError(ValueError):
    """A shard in OUT cannot be read; the message names it."""


def read_shard_settings(path: Path) -> dict[str, Any]:
    """key -> recorded settings of every sample in one complete shard."""
    found: dict[str, Any] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    data = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                    found[member.name.removesuffix(".json")] = data.get("settings")
    except (tarfile.TarError, OSError, json.JSONDecodeError, AttributeError) as err:
        raise ShardError(
            f"{path} is not a complete latents shard ({err}); move it out of the way and rerun"
        ) from None
    return found


class WebDatasetShards:
    """The shards of one rank in OUT (see the module docstring)."""

    def __init__(self, out: Path, shard_size: int = DEFAULT_SHARD_SIZE, rank: int = 0) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1 byte, got {shard_size}")
        self.out, self.shard_size, self.rank = out, shard_size, rank
        self.done: dict[str, Any] | None = None  # key -> settings in complete shards (read on first use)
        self._file: BinaryIO | None = None
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._target: Path | None = None
        self._samples = 0
        self._whole = 0  # offset after the last whole sample

    def clean_stale(self) -> None:
        """Temporary shards of killed runs (the caller holds OUT's lock)."""
        for tmp in self.out.glob(".shard-*.tar.*.tmp"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)

    def _complete(self) -> dict[str, Any]:
        if self.done is None:
            self.done = {}
            for path in sorted(self.out.glob("shard-*.tar")):
                if _SHARD.fullmatch(path.name) and path.is_file():
                    self.done |= read_shard_settings(path)
        return self.done

    def problem(self, name: str, settings: dict[str, Any]) -> str | None | bool:
        """False: not there yet; None: finished with these settings; else why it cannot be reused."""
        done = self._complete()
        key = sample_key(name)
        if key not in done:
            return False
        why = settings_problem(done[key], settings)
        if why is None:
            return None
        return f"sample {key} is already in a shard of {self.out} but {why}; move that shard away to redo it"

    def _next_index(self) -> int:
        indices = [
            int(m.group(2))
            for p in self.out.glob("shard-*.tar")
            if (m := _SHARD.fullmatch(p.name)) and int(m.group(1)) == self.rank
        ]
        return max(indices, default=-1) + 1

    def _open(self) -> None:
        self._target = self.out / f"shard-{self.rank:03d}-{self._next_index():06d}.tar"
        self._tmp = self.out / f".{self._target.name}.{os.getpid()}.tmp"
        self._file = open(self._tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._samples, self._whole = 0, 0

    def write(self, name: str, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> None:
        key = sample_key(name)
        members = [
            (f"{key}.safetensors", safetensors_bytes(tensors, metadata)),
            (f"{key}.json", json.dumps(metadata).encode()),
        ]
        size = sum(_member_size(data) for _, data in members)
        if self._tar is not None and self._samples and _closed_size(self._whole + size) > self.shard_size:
            self.close()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for member_name, data in members:
            info = tarfile.TarInfo(member_name)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            self._tar.addfile(info, io.BytesIO(data))
            pause_point("latents.shard_member")
        self._samples += 1
        self._whole = self._tar.offset
        if self.done is not None:
            self.done[key] = metadata.get("settings")

    def close(self) -> None:
        """Finish the open shard: cut back to its last whole sample, close the tar, rename it; a shard with
        no whole sample, or one that cannot be finished (a full disk), is removed."""
        if self._tar is None or self._file is None or self._tmp is None or self._target is None:
            return
        tar, file, tmp, target = self._tar, self._file, self._tmp, self._target
        self._tar = self._file = self._tmp = self._target = None
        try:
            if self._samples:
                file.seek(self._whole)
                file.truncate()
                tar.offset = self._whole
                tar.close()  # the two end blocks and the record padding
                file.flush()
                os.fsync(file.fileno())
                file.close()
                apply_umask(tmp)
                os.replace(tmp, target)
        finally:
            file.close()
            tmp.unlink(missing_ok=True)
