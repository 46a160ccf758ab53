"""`QwenVL.from_pretrained(path_or_hub_id)` and `QwenVL.from_hf(config, state_dict)`: a Hugging Face
checkpoint (or one of ours) straight into a model.

Accepted: an HF checkpoint directory (either key naming, `model.safetensors` or shards with an index, flat
4.x or nested 5.x config.json), a Hub id (downloaded with huggingface_hub; offline, a clear error), or a
directory written by our converter (handed to `qwenvl_min.hf.load`).

Loading an HF directory:
- config.json -> `Config.from_hf` (its refusals are documented in docs/hf.md);
- the safetensors headers -> `plan_hf_to_ours`, the planner the converter uses: every key mapped or dropped
  on purpose (rotary buffers, a tied lm_head that must equal the embeddings), shapes against the config,
  all before any tensor data is read;
- the model is built on the meta device and each tensor is a view into a private memory map of its shard.
  Kept in its stored dtype on the CPU, a weight *is* that view (nothing is copied; pages are read when
  first used). Cast or moved to another device, the converted tensor is the only copy: the source pages
  just read are dropped from the map right away, so peak memory stays about one copy of the weights in
  the requested dtype.
As with `load`: do not modify or truncate the shards while a model mapped from them runs (the shards kept
as views are recorded with `qwenvl_min.utils.mapped_files.note_mapped`, so a SIGBUS report can name them).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..generate.settings import generation_settings
from ..model.config import Config, ConfigError
from ..model.qwenvl import QwenVL
from ..utils.dtypes import DtypeError, accepted, parse_dtype
from ..utils.mapped_files import note_mapped
from ..weights_convert.checkpoint import CONFIG_FILE, CheckpointError, is_converted, read_json, scan_weights
from ..weights_convert.convert import resolve_source
from ..weights_convert.mapping import MappingError, hf_state_dict_to_ours, hf_tensor_to_ours, plan_hf_to_ours
from ..weights_convert.numerics import LOADABLE
from ..weights_convert.safetensors_io import TensorInfo
from .load import load
from .load_options import device_option, dtype_option, kernels_option

_PAGE = mmap.PAGESIZE


def from_pretrained(
    path_or_hub_id: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    verify: bool = False,
    torch_dtype: str | torch.dtype | None = None,
    device_map: Any = None,
    attn_implementation: str | None = None,
) -> QwenVL:
    """A QwenVL in eval mode; `model.checkpoint_dir` is the resolved directory and
    `model.generation_settings` its generation_config.json (the defaults of `qwenvl_min.generate`); its
    processor files and chat template are read by `qwenvl_min.Processor.from_pretrained`.

    dtype: "auto" (the dtype config.json names, else as stored), a torch floating dtype, or a name of
    `qwenvl_min.utils.dtypes` ("float32" / "fp32", "bfloat16" / "bf16", "float16" / "fp16" / "half", ...).
    device: where the weights end up ("cpu", the default, "cuda", "cuda:1"). verify: check the sha256 of
    every shard of a converted checkpoint against its manifest (HF checkpoints have no manifest: asking
    for it there is an error).

    transformers' spellings (`qwenvl_min.hf.load_options`): torch_dtype (= dtype), device_map (one device,
    "auto" included), attn_implementation ("sdpa" / "eager": the torch path, "flash_attention_2": the
    Triton kernels on CUDA).
    """
    dtype = dtype_option(dtype, torch_dtype)
    device = device_option(device, device_map)
    kernels = kernels_option(attn_implementation, device)
    directory, _ = resolve_source(path_or_hub_id)
    config_json = read_json(directory / CONFIG_FILE, "the model config")
    if is_converted(config_json):
        requested = _requested_dtype(dtype, None, directory)
        model = load(directory, dtype=requested, device=device, verify=verify)
    else:
        if verify:
            raise CheckpointError(
                f"{directory} is a Hugging Face checkpoint: it has no manifest to verify (verify / --verify "
                "checks the checksums our converter records); drop verify"
            )
        model = _from_hf_directory(directory, config_json, dtype, device)
    if kernels is not None:
        model.set_kernels(kernels)
    model.checkpoint_dir = directory
    model.generation_settings = generation_settings(directory)
    return model


def from_hf(config: Any, state_dict: Mapping[str, Tensor], *, share: bool = False) -> QwenVL:
    """`QwenVL.from_hf`: a model in eval mode from an HF config (a config.json dict or a transformers config
    object) and an HF state dict in either key naming (strict: every key mapped or dropped on purpose).

    The weights are copied (detached), so changing ours never changes the source model and back.
    share=True uses the given tensors themselves as our parameters (no copy, no extra memory): then an
    in-place change on either side shows on the other.
    """
    if not isinstance(share, bool):
        raise TypeError(f"share must be True or False, got {share!r}")
    cfg = Config.from_hf(config)
    ours = hf_state_dict_to_ours(cfg, state_dict)
    if not share:
        ours = {key: tensor.detach().clone() for key, tensor in ours.items()}
    with torch.device("meta"):
        model = QwenVL(cfg)
    model.load_state_dict(ours, strict=True, assign=True)
    return model.eval()


def _requested_dtype(dtype: str | torch.dtype, named: object, directory: Path) -> torch.dtype | None:
    """None keeps each tensor as stored; "auto" takes config.json's dtype when it names one. Names are read
    by the one spelling table (`qwenvl_min.utils.dtypes`: "bf16", "half", "torch.float16", ...)."""
    if isinstance(dtype, torch.dtype) and dtype not in LOADABLE:
        raise CheckpointError(
            f"dtype {dtype} cannot hold model weights; use torch.float32, torch.bfloat16 or torch.float16"
        )
    if isinstance(dtype, str) and dtype.strip().lower() == "auto":
        if named is None:
            return None
        try:
            return parse_dtype(named)  # type: ignore[arg-type]
        except DtypeError:
            raise CheckpointError(
                f"{directory / CONFIG_FILE} names dtype {named!r}, which is none of {accepted()}; pass "
                "dtype= explicitly"
            ) from None
    try:
        return parse_dtype(dtype)
    except DtypeError as err:
        raise CheckpointError(f'{err}, or "auto" (the dtype config.json names)') from None


def _from_hf_directory(
    directory: Path, config_json: dict, dtype: str | torch.dtype, target_device: torch.device
) -> QwenVL:
    try:
        config = Config.from_hf(config_json)
    except ConfigError as err:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {err}") from err
    named = config_json.get("dtype", config_json.get("torch_dtype"))
    requested = _requested_dtype(dtype, named, directory)
    weights = scan_weights(directory)  # headers only: index against shards, every key's file and offsets
    try:
        plan = plan_hf_to_ours(
            config,
            {key: info.shape for key, (_, info) in weights.items()},
            what=f"the weights in {directory}",
        )
    except MappingError as err:
        raise CheckpointError(f"{directory}: {err} (config: {directory / CONFIG_FILE})") from err
    stored = {weights[hf_key][1].dtype for hf_key in plan.sources.values()}
    if requested is None and (len(stored) != 1 or not stored <= set(LOADABLE)):
        names = sorted(str(d).removeprefix("torch.") for d in stored)
        raise CheckpointError(
            f"{directory}: the weights are stored as {names}; the model runs in one floating dtype, so pass "
            "dtype=torch.bfloat16 (or float16 / float32)"
        )
    maps = _Maps()
    if plan.tied_lm_head is not None:
        lm_head = maps.view(*weights[plan.tied_lm_head])
        embed = maps.view(*weights[plan.sources["text.embed_tokens.weight"]])
        if not torch.equal(lm_head, embed):
            raise CheckpointError(
                f"{directory}: config.json ties lm_head to the embeddings (tie_word_embeddings) but "
                f"{plan.tied_lm_head} differs from them; fix tie_word_embeddings in config.json"
            )
        del lm_head, embed
        maps.drop(*weights[plan.tied_lm_head])
    state: dict[str, Tensor] = {}
    viewed: set[Path] = set()  # shards some parameter stays a view of
    for key, hf_key in plan.sources.items():
        path, info = weights[hf_key]
        source = hf_tensor_to_ours(config, key, maps.view(path, info))
        tensor = source.to(target_device)  # to the device first: a cast on a GPU needs no host copy
        if requested is not None and tensor.is_floating_point() and tensor.dtype != requested:
            tensor = tensor.to(requested)
        if tensor.data_ptr() != source.data_ptr() or tensor.device != source.device:
            maps.drop(path, info)  # the converted copy is all we keep: release the pages just read
        else:
            viewed.add(path)
        state[key] = tensor
    note_mapped(directory, viewed)  # a SIGBUS report can name them (qwenvl_min.utils.mapped_files)
    with torch.device("meta"):
        model = QwenVL(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


class _Maps:
    """One private (copy-on-write) memory map per shard; tensors are views into it."""

    def __init__(self) -> None:
        self._maps: dict[Path, mmap.mmap] = {}

    def _map(self, path: Path) -> mmap.mmap:
        if path not in self._maps:
            with open(path, "rb") as f:
                self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._maps[path]

    def view(self, path: Path, info: TensorInfo) -> Tensor:
        if info.end == info.start:
            return torch.empty(info.shape, dtype=info.dtype)
        raw = torch.frombuffer(
            self._map(path), dtype=torch.uint8, count=info.end - info.start, offset=info.start
        )
        if info.start % info.dtype.itemsize:  # another writer placed it unaligned: copy that one
            raw = raw.clone()
        return raw.view(info.dtype).reshape(info.shape)

    def drop(self, path: Path, info: TensorInfo) -> None:
        """Forget the resident pages of one tensor's bytes (clean private pages: a later read of a
        neighbouring tensor simply reads them from the file again)."""
        if info.end == info.start or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = info.start // _PAGE * _PAGE
        self._map(path).madvise(mmap.MADV_DONTNEED, start, info.end - start)
