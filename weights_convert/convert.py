"""File conversion between Hugging Face Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints and ours, both directions.

`convert_checkpoint(src, dst)`: an HF checkpoint (directory or hub id; either key naming, flat or nested
config.json) -> our format. `export_to_hf(src, dst)`: ours -> the published HF naming, which
transformers' `from_pretrained` loads. Both:
- check everything that can be checked from config.json and the safetensors headers before reading any
  tensor data: every source key mapped or explicitly dropped, no key produced twice, shapes against the
  config, tied embeddings (a tied lm_head must equal the embeddings);
- stream: each tensor is read (safe_open), renamed/reshaped/cast and written straight into the current
  output shard, so memory holds about one tensor, never the checkpoint;
- write into a temporary directory beside DST and rename it into place at the end, so a failure leaves
  no partial DST; SRC is only read; an existing DST is replaced only with force=True.
The key table lives in `mapping.py`, shared with `QwenVL.from_hf`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from ..model.config import Config, ConfigError
from ..utils import dtypes
from ..utils.faults import pause_point
from ..utils.progress import progress_bar
from .checkpoint import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    INDEX_FILE,
    MANIFEST_FILE,
    CheckpointError,
    is_converted,
    our_config_json,
    read_json,
    read_our_config,
    scan_weights,
    shard_name,
    write_json,
)
from .companions import COMPANION_FILES, read_companions
from .destination import Destination
from .mapping import (
    MappingError,
    check_shapes,
    expected_shapes,
    hf_tensor_to_ours,
    our_key_to_hf,
    our_tensor_to_hf,
    plan_hf_to_ours,
)
from .numerics import cast_checked, check_loadable
from .safetensors_io import TensorInfo, header_sha256, write_safetensors

CONVERTER_VERSION = "2"  # bump when the written format or manifest changes
DEFAULT_SHARD_SIZE = 5 * 1000**3  # bytes; the "5GB" transformers has long used
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


@dataclass(frozen=True)
class _Item:
    """One output tensor: where it comes from and what it becomes."""

    out_key: str
    src_key: str
    src_file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * self.dtype.itemsize


# ---- public API ------------------------------------------------------------------------------------------
# Companion files (tokenizer, chat template, processor and generation settings) travel with the weights
# after the checks in companions.py, so a converted directory is enough to run `qwenvl-min run`.


def convert_checkpoint(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype | None = None,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    force: bool = False,
    progress: bool | None = None,
) -> Path:
    """Convert an HF Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint (local directory or hub id) to our format at `dst`.

    dtype: cast floating tensors (default: keep each source dtype). shard_size: bytes or "5GB"/"2GiB".
    progress: a bar (None: by `qwenvl_min.utils.progress`'s rule: on a terminal, unless quieted). Returns the absolute path of `dst`.
    """
    out_dtype, max_shard = parse_dtype(dtype), parse_size(shard_size)
    with Destination(dst, force) as dest:  # locked and checked before a possibly long download
        src_dir, source = resolve_source(src)
        _check_no_overlap(src_dir, dest.path)
        hf_config = read_json(src_dir / CONFIG_FILE, "the Hugging Face model config")
        if is_converted(hf_config):
            raise CheckpointError(
                f"{src_dir} is already a qwenvl-min checkpoint: QwenVL.from_pretrained loads it as it is; to "
                "write it back in the Hugging Face format, export it (`qwenvl-min convert --to-hf`)"
            )
        try:
            config = Config.from_hf(hf_config)
        except ConfigError as err:
            raise CheckpointError(f"{src_dir / CONFIG_FILE}: {err}") from err
        weights = scan_weights(src_dir)
        items, dropped = _plan_hf_to_ours(config, weights, out_dtype, src_dir)
        check_loadable({item.out_key: item.dtype for item in items}, src_dir)
        companions = read_companions(src_dir)
        source["layout"] = _hf_naming(weights)

        def produce(item: _Item) -> Tensor:
            tensor = hf_tensor_to_ours(config, item.out_key, _read(item))
            return cast_checked(tensor, item.dtype, item.src_key, item.src_file)

        manifest = {"layout": FORMAT, "source": source, "dropped_source_keys": dropped}
        _write_checkpoint(
            dest, items, produce, max_shard, our_config_json(config), manifest, progress, companions
        )
    return dest.path


def export_to_hf(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype | None = None,
    shard_size: int | str = DEFAULT_SHARD_SIZE,
    force: bool = False,
    progress: bool | None = None,
) -> Path:
    """Write one of our checkpoints in the published HF naming (`visual.*`, `model.*`, `lm_head.*`, nested
    config.json) that transformers 5 `from_pretrained` loads. Options as in `convert_checkpoint`."""
    out_dtype, max_shard = parse_dtype(dtype), parse_size(shard_size)
    src_dir = Path(src).expanduser().resolve()
    if (src_dir / CONFIG_FILE).is_file():
        source_config = read_json(src_dir / CONFIG_FILE, "the model config")
        if not is_converted(source_config) and "model_type" in source_config:
            raise CheckpointError(
                f"{src_dir} is already a Hugging Face checkpoint: transformers and QwenVL.from_pretrained load "
                "it as it is; exporting to the Hugging Face format (--to-hf) takes a checkpoint written by "
                "`qwenvl-min convert`"
            )
    config = read_our_config(src_dir)
    with Destination(dst, force) as dest:
        _check_no_overlap(src_dir, dest.path)
        weights = scan_weights(src_dir)
        _check_shapes(config, {key: info.shape for key, (_, info) in weights.items()}, src_dir)
        items = []
        for key in expected_shapes(config):
            path, info = weights[key]
            shape = tuple(our_tensor_to_hf(config, key, _meta(info)).shape)
            hf_key = our_key_to_hf(key, config.model_type)
            items.append(_Item(hf_key, key, path, _target_dtype(info, out_dtype), shape))
        check_loadable({item.out_key: item.dtype for item in items}, src_dir)
        companions = read_companions(src_dir)

        def produce(item: _Item) -> Tensor:
            tensor = our_tensor_to_hf(config, item.src_key, _read(item))
            return cast_checked(tensor, item.dtype, item.src_key, item.src_file)

        hf_config = config.to_hf()
        if len({item.dtype for item in items}) == 1:  # transformers' dtype="auto" reads this
            hf_config["dtype"] = _torch_name(items[0].dtype)
        manifest = {
            "layout": "huggingface",
            "source": {"path": str(src_dir), "layout": FORMAT},
            "dropped_source_keys": [],
        }
        _write_checkpoint(dest, items, produce, max_shard, hf_config, manifest, progress, companions)
    return dest.path


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """None keeps each source dtype; anything else is read by the one spelling table (`qwenvl_min.utils.dtypes`)."""
    if value is None:
        return None
    try:
        return dtypes.parse_dtype(value)
    except dtypes.DtypeError as err:
        raise CheckpointError(f"{err} (or omit it to keep the source dtype)") from None


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as "5GB" (decimal, as transformers) or "2GiB" (binary)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match or float(match.group(1)) <= 0:
        raise CheckpointError(
            f"invalid shard size {value!r}: give a positive size such as 2GB, 500MB or 1073741824"
        )
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])


def resolve_source(src: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """A local checkpoint directory, or a hub id downloaded with huggingface_hub (config + safetensors)."""
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(
                f"{path} is a file; pass the checkpoint directory that holds config.json and the safetensors files"
            )
        return path.resolve(), {"path": str(path.resolve())}
    if not (isinstance(src, str) and _HUB_ID.fullmatch(src)):
        raise CheckpointError(
            f"{src} does not exist: pass a local checkpoint directory or a Hugging Face Hub id such as "
            "Qwen/Qwen2.5-VL-7B-Instruct"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        local = snapshot_download(
            repo_id=src, allow_patterns=[CONFIG_FILE, "*.safetensors", INDEX_FILE, *COMPANION_FILES]
        )
    except RepositoryNotFoundError as err:
        raise CheckpointError(
            f"{src} is neither a local directory nor a repository on the Hugging Face Hub (a private or gated "
            "repository needs `hf auth login`)"
        ) from err
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise CheckpointError(
            f"{src} is not a local directory and could not be downloaded from the Hugging Face Hub "
            f"(offline? {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). On a connected "
            f"machine run `hf download {src} --local-dir DIR`, copy DIR here and pass DIR instead"
        ) from err
    local_path = Path(local).resolve()
    return local_path, {"hub_id": src, "revision": local_path.name, "path": str(local_path)}


# ---- planning (headers only) -----------------------------------------------------------------------------
def _plan_hf_to_ours(
    config: Config, weights: dict[str, tuple[Path, TensorInfo]], out_dtype: torch.dtype | None, src_dir: Path
) -> tuple[list[_Item], list[str]]:
    """The shared planner (`mapping.plan_hf_to_ours`) on the headers, then one `_Item` per output tensor."""
    try:
        plan = plan_hf_to_ours(
            config, {key: info.shape for key, (_, info) in weights.items()}, what=f"the weights in {src_dir}"
        )
    except MappingError as err:
        raise CheckpointError(f"{src_dir}: {err} (config: {src_dir / CONFIG_FILE})") from err
    items = []
    for key, hf_key in plan.sources.items():
        path, info = weights[hf_key]
        shape = tuple(hf_tensor_to_ours(config, key, _meta(info)).shape)
        items.append(_Item(key, hf_key, path, _target_dtype(info, out_dtype), shape))
    if plan.tied_lm_head is not None:
        lm_path, lm_info = weights[plan.tied_lm_head]
        lm_head = _Item("lm_head.weight", plan.tied_lm_head, lm_path, lm_info.dtype, lm_info.shape)
        embed = next(item for item in items if item.out_key == "text.embed_tokens.weight")
        if not torch.equal(_read(lm_head), _read(embed)):
            raise CheckpointError(
                f"{src_dir}: config.json ties lm_head to the embeddings (tie_word_embeddings) but "
                f"{lm_head.src_key} differs from {embed.src_key}; fix tie_word_embeddings in config.json"
            )
    return items, plan.dropped


def _check_shapes(config: Config, shapes: dict[str, tuple[int, ...]], src_dir: Path) -> None:
    try:
        check_shapes(config, shapes, what=f"the weights in {src_dir}")
    except MappingError as err:
        raise CheckpointError(f"{err} (from {src_dir / CONFIG_FILE})") from err


def _meta(info: TensorInfo) -> Tensor:
    # run the mapping's tensor transforms on shapes alone
    return torch.empty(info.shape, dtype=info.dtype, device="meta")


def _target_dtype(info: TensorInfo, out_dtype: torch.dtype | None) -> torch.dtype:
    return out_dtype if out_dtype is not None and info.dtype.is_floating_point else info.dtype


def _hf_naming(weights: dict[str, Any]) -> str:
    v5 = any(key.startswith(("model.visual.", "model.language_model.")) for key in weights)
    return "transformers5" if v5 else "published"


def _torch_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _read(item: _Item) -> Tensor:
    # a fresh handle per tensor: its memory map is released right after the copy, so pages of the
    # source do not pile up in our resident set over a 16 GB conversion
    try:
        with safe_open(item.src_file, framework="pt") as f:
            return f.get_tensor(item.src_key)
    except SafetensorError as err:
        raise CheckpointError(f"cannot read {item.src_key!r} from {item.src_file}: {err}") from err


# ---- writing ----------------------------------------------------------------------------------------------
def _plan_shards(items: list[_Item], max_bytes: int) -> list[list[_Item]]:
    """Greedy in key order; a tensor larger than max_bytes gets a shard of its own."""
    shards: list[list[_Item]] = []
    size = 0
    for item in items:
        if not shards or (size + item.nbytes > max_bytes and shards[-1]):
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return shards


def _write_checkpoint(
    dest: Destination,
    items: list[_Item],
    produce: Callable[[_Item], Tensor],
    max_shard: int,
    config_json: dict[str, Any],
    manifest: dict[str, Any],
    progress: bool | None,
    companions: dict[str, bytes],
) -> None:
    try:
        _write_staged(dest, items, produce, max_shard, config_json, manifest, progress, companions)
    except OSError as err:
        raise CheckpointError(
            f"writing {dest.path} failed: {err} (disk full?); {dest.path} was not created or changed"
        ) from None
    pause_point("convert.before_commit")
    dest.commit()


def _write_staged(
    dest: Destination,
    items: list[_Item],
    produce: Callable[[_Item], Tensor],
    max_shard: int,
    config_json: dict[str, Any],
    manifest: dict[str, Any],
    progress: bool | None,
    companions: dict[str, bytes],
) -> None:
    tmp = dest.make_staging()
    shards = _plan_shards(items, max_shard)
    names = [shard_name(i + 1, len(shards)) for i in range(len(shards))]
    total = sum(item.nbytes for item in items)
    dtypes: dict[str, int] = {}
    for item in items:
        dtypes[_torch_name(item.dtype)] = dtypes.get(_torch_name(item.dtype), 0) + 1
    records = []
    bar = progress_bar(  # None: on a terminal, unless the qwenvl_min logger is quieter than INFO
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"writing {dest.path.name}",
        enabled=progress,
    )
    with bar:
        for name, shard in zip(names, shards, strict=True):
            by_key = {item.out_key: item for item in shard}
            entries = [(item.out_key, item.dtype, item.shape) for item in shard]
            digest = write_safetensors(
                tmp / name, entries, partial(_produce_key, produce, by_key), {"format": "pt"}, bar.update
            )
            records.append(
                {
                    "file": name,
                    "sha256": digest,
                    "header_sha256": header_sha256(tmp / name),
                    "bytes": (tmp / name).stat().st_size,
                    "key_count": len(shard),
                }
            )
            pause_point("convert.shard_written")
    weight_map = {item.out_key: name for name, shard in zip(names, shards, strict=True) for item in shard}
    write_json(tmp / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
    write_json(tmp / CONFIG_FILE, config_json)
    copied = []
    for name, data in companions.items():
        (tmp / name).write_bytes(data)
        copied.append({"file": name, "sha256": hashlib.sha256(data).hexdigest()})
    write_json(
        tmp / MANIFEST_FILE,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "converter": "qwenvl_min.weights_convert",
            "converter_version": CONVERTER_VERSION,
            "qwenvl_min_version": _package_version(),
            **manifest,
            "dtype": next(iter(dtypes)) if len(dtypes) == 1 else "mixed",
            "dtype_counts": dtypes,
            "key_count": len(items),
            "total_bytes": total,
            "shards": records,
            "companion_files": copied,
        },
    )
    for path in tmp.iterdir():  # the rename is only atomic if every file is on disk first
        _fsync(path)
    _fsync(tmp)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _produce_key(produce: Callable[[_Item], Tensor], by_key: dict[str, _Item], key: str) -> Tensor:
    return produce(by_key[key])


def _package_version() -> str:
    try:
        return metadata.version("qwenvl-min")
    except metadata.PackageNotFoundError:
        return "not installed"  # running from a source tree; recorded as such, not guessed


# ---- destination safety -------------------------------------------------------------------------------------
def _check_no_overlap(src_dir: Path, dst_path: Path) -> None:
    # replacing or writing beside a directory inside SRC (or SRC's own parent chain) would modify SRC
    if dst_path == src_dir or src_dir in dst_path.parents or dst_path in src_dir.parents:
        raise CheckpointError(
            f"destination {dst_path} overlaps the source {src_dir}: choose a separate directory"
        )
