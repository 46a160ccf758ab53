"""Sharded loading: each rank reads only its own slices of the weights from the safetensors shards.

    model = load_sharded(path, mesh)        # a converted checkpoint or a Hugging Face directory

The model is built on the meta device and parallelized there (`plan.parallelize`), so every parameter
already knows its placement; then, one tensor at a time, the rank's slice is copied out of a memory map of
its shard file into a freshly allocated local tensor (in the stored dtype, or `dtype`), and the mapped
pages it touched are dropped again (madvise DONTNEED). Peak RSS per rank is therefore the rank's weights
(about weights / TP, plus the replicated norms and patch embedding) plus the pages of the one tensor
being read (at most the largest tensor, for column slices of a row-parallel weight). Nothing is
unpickled and no rank ever holds another rank's shard.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard
from torch.distributed.tensor.placement_types import _StridedShard

from ..generate.settings import generation_settings
from ..model.config import Config, ConfigError
from ..model.qwenvl import QwenVL
from ..weights_convert.checkpoint import (
    CONFIG_FILE,
    CheckpointError,
    is_converted,
    read_json,
    read_our_config,
    scan_weights,
    verify_manifest,
)
from ..weights_convert.mapping import MappingError, check_shapes, hf_tensor_to_ours, plan_hf_to_ours
from ..weights_convert.safetensors_io import TensorInfo
from .plan import parallelize

Source = tuple[Path, TensorInfo]  # shard file and the tensor's place in it


def _sources(directory: Path, verify: bool) -> tuple[Config, dict[str, Source], Source | None]:
    """Config, our key -> where its tensor lies, and the key of a tied lm_head an HF checkpoint stores."""
    data = read_json(directory / CONFIG_FILE, "the model config")
    found = scan_weights(directory)  # headers only
    shapes = {key: info.shape for key, (_, info) in found.items()}
    if is_converted(data):
        config = read_our_config(directory)
        try:
            check_shapes(config, shapes, str(directory))
        except MappingError as err:
            raise CheckpointError(f"{err}; re-convert the checkpoint") from err
        verify_manifest(directory, full=verify)
        return config, found, None
    if verify:
        raise CheckpointError(
            f"{directory} is a Hugging Face checkpoint, which has no manifest to verify against; drop "
            "--verify or convert it first"
        )
    try:
        config = Config.from_hf(data)
        plan = plan_hf_to_ours(config, shapes, str(directory))
    except (ConfigError, MappingError) as err:
        raise CheckpointError(f"{directory}: {err}") from err
    tied = None if plan.tied_lm_head is None else found[plan.tied_lm_head]
    return config, {ours: found[hf] for ours, hf in plan.sources.items()}, tied


def local_slice(placement: Placement, full: Tensor, rank: int, tp: int) -> Tensor:
    """This rank's part of a full tensor for a 1-D mesh placement (a view, no copy)."""
    if isinstance(placement, _StridedShard):  # split into split_factor chunks, shard each, concatenate
        d = placement.dim
        chunks = full.unflatten(d, (placement.split_factor, -1))
        size = chunks.shape[d + 1] // tp
        return chunks.narrow(d + 1, rank * size, size).flatten(d, d + 1)
    if isinstance(placement, Shard):
        size = full.shape[placement.dim] // tp
        return full.narrow(placement.dim, rank * size, size)
    if isinstance(placement, Replicate):
        return full
    raise TypeError(f"sharded loading does not know the placement {placement}")


class _MappedFile:
    """One shard file mapped copy-on-write; `read` views one tensor, `release` drops its pages."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)

    def read(self, info: TensorInfo) -> Tensor:
        count = info.end - info.start
        if count == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        raw = torch.frombuffer(self.map, dtype=torch.uint8, count=count, offset=info.start)
        if info.start % info.dtype.itemsize:
            raw = raw.clone()  # another writer's unaligned tensor: copy that one
        return raw.view(info.dtype).reshape(info.shape)

    def release(self, info: TensorInfo) -> None:
        """Drop the mapped pages of a tensor from this process (they stay in the page cache)."""
        start = info.start - info.start % mmap.PAGESIZE
        if info.end > start:
            self.map.madvise(mmap.MADV_DONTNEED, start, info.end - start)


def _owners(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    return {
        f"{prefix}.{name}" if prefix else name: (module, name)
        for prefix, module in model.named_modules()
        for name, _ in module.named_parameters(recurse=False)
    }


def load_sharded(
    path: str | os.PathLike[str],
    mesh: DeviceMesh,
    *,
    dtype: torch.dtype | None = None,
    verify: bool = False,
    kernels: str | None = None,
) -> QwenVL:
    """A tensor-parallel QwenVL (eval mode) over the 1-D `mesh`, each rank reading only its slices.

    path: a converted checkpoint (`qwenvl-min convert`) or a Hugging Face directory (config.json and
    safetensors shards in either key naming). dtype: cast floating weights (default: as stored). The
    weights go to the mesh's device (this rank's GPU under NCCL). Every rank must call it (collective).
    """
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise CheckpointError(f"dtype must be a floating torch dtype such as torch.bfloat16, got {dtype!r}")
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a checkpoint directory")
    config, sources, tied = _sources(directory, verify)
    rank, tp = mesh.get_local_rank(), mesh.size()
    device = (
        torch.device(mesh.device_type, torch.cuda.current_device()) if mesh.device_type == "cuda" else None
    )
    with torch.device("meta"):
        model = QwenVL(config, kernels=kernels)
    parallelize(model, mesh)

    owners = _owners(model)
    by_file: dict[Path, list[str]] = {}
    for key in owners:
        by_file.setdefault(sources[key][0], []).append(key)
    for file, keys in by_file.items():
        mapped = _MappedFile(file)
        for key in sorted(keys, key=lambda k: sources[k][1].start):  # file order: sequential reads
            info = sources[key][1]
            module, name = owners[key]
            _fill(config, module, name, key, mapped.read(info), dtype, device, rank, tp)
            mapped.release(info)
        del mapped  # the map closes once the last view of it is gone
    if tied is not None:
        _check_tied_head(model, tied, mesh)
    # the checkpoint's own processor, chat template and generation settings, as from_pretrained records
    model.checkpoint_dir = directory
    model.generation_settings = generation_settings(directory)
    return model.eval()


def _fill(
    config: Config,
    module: nn.Module,
    name: str,
    key: str,
    stored: Tensor,
    dtype: torch.dtype | None,
    device: torch.device | None,
    rank: int,
    tp: int,
) -> None:
    """Copy this rank's slice of `stored` (as on disk) into a new local parameter of `module`."""
    meta = getattr(module, name)
    full = hf_tensor_to_ours(
        config, key, stored
    )  # the patch embedding's view; a hub-layout expert transposed
    target = dtype if dtype is not None and full.is_floating_point() else full.dtype
    if isinstance(meta, DTensor):
        placement = meta.placements[0]
        part = local_slice(placement, full, rank, tp)
        local = torch.empty(part.shape, dtype=target, device=device)
        local.copy_(part)
        value: Tensor = DTensor.from_local(
            local, meta.device_mesh, meta.placements, run_check=False, shape=meta.shape, stride=meta.stride()
        )
    else:
        value = torch.empty(full.shape, dtype=target, device=device)
        value.copy_(full)
    module.register_parameter(name, nn.Parameter(value, requires_grad=meta.requires_grad))


def _check_tied_head(model: QwenVL, stored_head: Source, mesh: DeviceMesh) -> None:
    """A tied HF checkpoint that still stores lm_head: it must equal the embeddings. Each rank compares
    its own vocab rows; all ranks raise together."""
    embed = model.text.embed_tokens.weight
    file, info = stored_head
    stored = local_slice(
        embed.placements[0], _MappedFile(file).read(info), mesh.get_local_rank(), mesh.size()
    )
    same = torch.tensor(int(torch.equal(stored.to(embed.dtype), embed.to_local().cpu())))
    same = same.to(embed.device)  # NCCL reduces CUDA tensors only
    dist.all_reduce(same, op=dist.ReduceOp.MIN, group=mesh.get_group())
    if not same.item():
        raise CheckpointError("config ties lm_head to the embeddings but lm_head.weight differs from them")
