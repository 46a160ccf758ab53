"""Checkpoint directories on disk: file names, our config.json and manifest, and finding the weights.

Shared by the converter (both directions) and `qwenvl_min.hf.load`. A directory holds `config.json` and
either one `model.safetensors` or shards listed in `model.safetensors.index.json` (the HF convention;
our converted checkpoints always use an index). Converted checkpoints also carry `manifest.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..model.config import Config, ConfigError
from .safetensors_io import (
    Header,
    SafetensorsFormatError,
    TensorInfo,
    file_sha256,
    header_sha256,
    read_header,
)

FORMAT = "qwenvl-min"  # marker in our config.json and in every manifest.json
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
CONVERT_HINT = "qwenvl-min convert HF_CHECKPOINT_DIR_OR_HUB_ID OUTPUT_DIR"


class CheckpointError(ValueError):
    """A checkpoint directory or a conversion request is unusable; the message says why and what to do."""


def shard_name(index: int, count: int) -> str:
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing ({what})")
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        why = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise CheckpointError(f"{path} is not valid JSON ({why}); it should be the {what}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} should hold a JSON object ({what}), found {type(data).__name__}")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def is_converted(config_json: dict[str, Any]) -> bool:
    return config_json.get("format") == FORMAT


def our_config_json(config: Config) -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **config.to_dict()}


def read_our_config(directory: Path) -> Config:
    """Config of a converted checkpoint; explains how to convert when handed something else."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory} is not a directory. qwenvl_min.hf.load expects a checkpoint converted with "
            f"`{CONVERT_HINT}`"
        )
    data = read_json(directory / CONFIG_FILE, "the model config")
    if not is_converted(data):
        if "model_type" in data:
            raise CheckpointError(
                f'{directory} is a Hugging Face checkpoint, not a qwenvl-min one (its config.json has no "format": '
                f'"{FORMAT}" marker): QwenVL.from_pretrained loads it as it is, and `qwenvl-min convert '
                f"{directory} OUTPUT_DIR` converts it"
            )
        raise CheckpointError(
            f'{directory} is not a qwenvl-min checkpoint (its config.json has no "format": "{FORMAT}" marker); '
            f"write one with `{CONVERT_HINT}`"
        )
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} has format_version {data.get('format_version')!r}; this qwenvl-min reads "
            f"{FORMAT_VERSION}. Re-convert it from the Hugging Face checkpoint"
        )
    fields = {k: v for k, v in data.items() if k not in ("format", "format_version")}
    try:
        return Config.from_dict(fields)
    except ConfigError as err:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {err}") from err


def scan_weights(directory: Path) -> dict[str, tuple[Path, TensorInfo]]:
    """Every tensor key with its file and (dtype, shape, offsets), checking the index against the shards.

    Reads headers only. Errors name the missing shard, the keys the index places in the wrong shard,
    or keys a shard holds that the index does not list (strictness: nothing is silently ignored).
    """
    index_path = directory / INDEX_FILE
    if index_path.is_file():
        index = read_json(index_path, "the shard index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f'{index_path} has no "weight_map" naming the shard of each tensor')
        by_file: dict[str, list[str]] = {}
        for key, name in weight_map.items():
            by_file.setdefault(str(name), []).append(key)
        found: dict[str, tuple[Path, TensorInfo]] = {}
        for name, keys in by_file.items():
            if Path(name).name != name:
                raise CheckpointError(f"{index_path} names shard {name!r} outside the checkpoint directory")
            if not (directory / name).is_file():
                raise CheckpointError(
                    f"shard {name} named in {index_path} is missing ({len(keys)} tensors, e.g. {keys[0]!r}); "
                    "the download or copy is incomplete"
                )
            held = _header(directory / name).tensors
            absent = sorted(k for k in keys if k not in held)
            extra = sorted(set(held) - set(keys))
            if absent:
                raise CheckpointError(
                    f"{index_path} places keys in {name} that the shard does not hold: {preview(absent)}"
                )
            if extra:
                raise CheckpointError(f"{name} holds keys that {index_path} does not list: {preview(extra)}")
            found.update((key, (directory / name, held[key])) for key in keys)
        return {key: found[key] for key in weight_map}  # index order
    single = directory / SINGLE_FILE
    if single.is_file():
        return {key: (single, info) for key, info in _header(single).tensors.items()}
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")) or any(directory.glob("*.pth")):
        raise CheckpointError(
            f"{directory} holds only pickle-based weights (.bin/.pt), which qwenvl-min never unpickles. "
            "Re-save them as safetensors with transformers (from_pretrained(...).save_pretrained(dir)) first"
        )
    raise CheckpointError(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def _header(path: Path) -> Header:
    try:
        return read_header(path)
    except SafetensorsFormatError as err:
        raise CheckpointError(f"{err}. Re-download or re-create this file") from err


def preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"


def verify_manifest(directory: Path, full: bool = True) -> dict[str, Any]:
    """Check every shard against manifest.json; returns the manifest.

    full=False (what `load` does by default, milliseconds): each shard's size and the sha256 of its
    header (names, dtypes, shapes, offsets), which catch a truncated, extended, swapped or re-written
    shard. full=True (`verify=True` / `--verify`): the sha256 of every byte, which also catches a
    flipped bit in the tensor data."""
    manifest = read_json(directory / MANIFEST_FILE, "the conversion manifest written with the shards")
    records = manifest.get("shards")
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise CheckpointError(f"{directory / MANIFEST_FILE} lists no shards; re-convert the checkpoint")
    missing, changed = [], []
    for record in records:
        path = directory / str(record.get("file"))
        if Path(str(record.get("file"))).name != str(record.get("file")) or not path.is_file():
            missing.append(path.name)
        elif full:
            if file_sha256(path) != record.get("sha256"):
                changed.append(path.name)
        elif path.stat().st_size != record.get("bytes") or (
            "header_sha256" in record and header_sha256(path) != record["header_sha256"]
        ):
            changed.append(path.name)
    if missing or changed:
        what = "sha256" if full else "size or header sha256"
        raise CheckpointError(
            f"{directory} does not match its manifest: missing shards {missing}, shards whose {what} changed "
            f"{changed}. The copy is incomplete or corrupt; copy or convert it again"
        )
    return manifest
