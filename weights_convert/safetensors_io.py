"""Just enough of the safetensors format for streaming conversion and memory-mapped loading.

A safetensors file is: 8 bytes (little-endian u64) header length N, N bytes of JSON
`{key: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`, then the data,
which the offsets must cover exactly (no holes, no overlap). We parse and write it ourselves because
the library's `save_file` serializes a whole dict in memory (2x a shard) and its readers copy every
tensor; here a shard is written one tensor at a time and the loader maps files without copying.
Nothing here ever unpickles.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit the reference implementation enforces

if sys.byteorder != "little":  # the format is little-endian and we write raw tensor memory
    raise ImportError(
        "qwenvl_min.weights_convert needs a little-endian machine to read and write safetensors"
    )


class SafetensorsFormatError(ValueError):
    """A file is not a complete, well-formed safetensors file."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def read_header(path: Path) -> Header:
    """Parse and validate a safetensors header without reading any tensor data.

    Detects truncated files (the data section is shorter than the header says), trailing garbage,
    malformed JSON, unknown dtypes and offsets that disagree with the shapes.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise SafetensorsFormatError(
                f"{path}: {size} bytes is too short for a safetensors file (truncated?)"
            )
        length = int.from_bytes(prefix, "little")
        if length > _MAX_HEADER_BYTES or 8 + length > size:
            raise SafetensorsFormatError(
                f"{path}: header length {length} does not fit in the file ({size} bytes): truncated or not safetensors"
            )
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise SafetensorsFormatError(f"{path}: the header is not valid JSON ({why}): corrupt file") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{path}: the header is not a JSON object: corrupt file")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsFormatError(
            f"{path}: __metadata__ must be an object of strings, got {_short(metadata)}: corrupt file"
        )
    data_start = 8 + length
    tensors: dict[str, TensorInfo] = {}
    for key, entry in header.items():
        dtype, shape, begin, end = _parse_entry(path, key, entry)
        if end - begin != math.prod(shape) * dtype.itemsize:
            raise SafetensorsFormatError(
                f"{path}: {key!r} has offsets [{begin}, {end}] that do not hold a {entry['dtype']} tensor of {shape}"
            )
        tensors[key] = TensorInfo(dtype, shape, data_start + begin, data_start + end)
    # the data must be covered exactly, in some order; a gap or an overlap means a corrupt header
    position = data_start
    for start, end in sorted((t.start, t.end) for t in tensors.values()):
        if start != position:
            raise SafetensorsFormatError(f"{path}: tensor data overlaps or leaves a gap at byte {start}")
        position = end
    if position > size:
        raise SafetensorsFormatError(
            f"{path}: the header describes {position} bytes but the file has {size}: the file is truncated"
        )
    if position < size:
        raise SafetensorsFormatError(f"{path}: {size - position} bytes after the last tensor: corrupt file")
    return Header(path, tensors, {str(k): str(v) for k, v in metadata.items()})


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_entry(path: Path, key: str, entry: object) -> tuple[torch.dtype, tuple[int, ...], int, int]:
    """One header entry -> (dtype, shape, begin, end); dims and offsets are JSON integers >= 0."""
    if not isinstance(entry, dict):
        raise SafetensorsFormatError(f"{path}: malformed header entry for {key!r}: {_short(entry)}")
    dtype_name, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise SafetensorsFormatError(
            f"{path}: malformed header entry for {key!r}: dtype {_short(dtype_name)} is not one of "
            f"{', '.join(DTYPES)}"
        )
    if not isinstance(shape, list) or not all(_is_index(d) for d in shape):
        raise SafetensorsFormatError(
            f"{path}: malformed header entry for {key!r}: shape {_short(shape)} is not a list of integers >= 0"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_index(o) for o in offsets)):
        raise SafetensorsFormatError(
            f"{path}: malformed header entry for {key!r}: data_offsets {_short(offsets)} are not two "
            "integers >= 0"
        )
    return DTYPES[dtype_name], tuple(shape), offsets[0], offsets[1]


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_safetensors(
    path: Path,
    entries: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
    produce: Callable[[str], Tensor],
    metadata: dict[str, str],
    on_tensor: Callable[[int], None] | None = None,
) -> str:
    """Write a safetensors file one tensor at a time; returns its sha256 (hashed while writing).

    `entries` declares (key, dtype, shape) up front so the header can be written first; `produce(key)`
    is called once per key, in file order, and its tensor is dropped right after it is written, so
    memory holds one tensor at a time. `on_tensor(nbytes)` reports progress.
    """
    # Larger elements first keeps every tensor aligned to its element size without padding (the
    # data section may not contain holes), which lets the loader map tensors in place.
    ordered = sorted(entries, key=lambda e: -e[1].itemsize)
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for key, dtype, shape in ordered:
        nbytes = math.prod(shape) * dtype.itemsize
        header[key] = {
            "dtype": DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # pad so the data section starts 8-byte aligned
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for chunk in (len(raw).to_bytes(8, "little"), raw):
            f.write(chunk)
            digest.update(chunk)
        for key, dtype, shape in ordered:
            tensor = produce(key)
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise RuntimeError(  # a bug in the caller's plan, never bad input
                    f"{key}: produced {tensor.dtype} {tuple(tensor.shape)}, planned {dtype} {tuple(shape)}"
                )
            data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
            f.write(data)
            digest.update(data)
            if on_tensor is not None:
                on_tensor(data.nbytes)
            del tensor, data
        f.flush()
        os.fsync(f.fileno())  # the final rename is only atomic if the data is on disk first
    return digest.hexdigest()


def mmap_tensors(header: Header) -> dict[str, Tensor]:
    """Tensors backed by a private (copy-on-write) memory map of the file: no copy, no pickle.

    Pages are read on first touch; writing to a tensor never changes the file. The map stays alive as
    long as any of the tensors does.
    """
    with open(header.path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    tensors = {}
    for key, info in header.tensors.items():
        if info.end == info.start:
            tensors[key] = torch.empty(info.shape, dtype=info.dtype)
            continue
        raw = torch.frombuffer(mapped, dtype=torch.uint8, count=info.end - info.start, offset=info.start)
        if info.start % info.dtype.itemsize:
            # files from other writers may place a tensor at an unaligned offset; copy that one
            raw = raw.clone()
        tensors[key] = raw.view(info.dtype).reshape(info.shape)
    return tensors


def header_sha256(path: Path) -> str:
    """sha256 of the length prefix and the JSON header: a cheap fingerprint of names, shapes and offsets."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
        return hashlib.sha256(prefix + f.read(min(length, _MAX_HEADER_BYTES))).hexdigest()


def file_sha256(path: Path, chunk_bytes: int = 16 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
