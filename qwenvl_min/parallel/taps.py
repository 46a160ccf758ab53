"""Taps on a tensor-parallel model: every rank reads and replaces the single-process tensor.

Most tap points carry full tensors under TP (block / layer outputs, the merger, norms, attention module
outputs, the embeddings): they are read and replaced as in one process. The others hold this rank's shard
(`plan.tap_layouts`): outputs of column-parallel projections, inputs of row-parallel ones and attention
maps (local heads). For those, a read gathers the shards, so `taps.cache[name]` is the full tensor, equal
on every rank; a replacement (a tensor or a function) is given and returns the full tensor (the same on
every rank, e.g. computed from the gathered value), and each rank keeps its own slice of it. Gathers run
only for the names asked for; every rank must ask for the same names (they are collectives).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from ..interp.taps import Replacement, Taps
from ..model.attention import SegmentMaps
from .plan import TapLayout, tap_layouts


def _gather(local: Tensor, dim: int, group: dist.ProcessGroup) -> list[Tensor]:
    pieces = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(pieces, local.contiguous(), group=group)
    return pieces


def gather_full(layout: TapLayout, local: Any, group: dist.ProcessGroup) -> Any:
    """The single-process value of a tap point from every rank's local value."""
    if isinstance(local, SegmentMaps):
        probs = [torch.cat(_gather(p, 1, group), dim=1) for p in local.probs]
        return SegmentMaps(probs, local.token_index)
    if layout.kind == "heads":
        return torch.cat(_gather(local, 1, group), dim=1)
    pieces = _gather(local, -1, group)
    if layout.kind == "qkv":  # each piece is [q_r | k_r | v_r]: regroup as [q | k | v]
        split = [p.unflatten(-1, (3, -1)) for p in pieces]
        return torch.cat(split, dim=-1).flatten(-2)
    if layout.kind == "kv_head":  # ranks r*group .. (r+1)*group - 1 hold the same kv head
        pieces = pieces[:: layout.group]
    return torch.cat(pieces, dim=-1)


def local_part(layout: TapLayout, full: Any, rank: int, tp: int) -> Any:
    """This rank's slice of a full (single-process shaped) value: the inverse of `gather_full`."""
    if isinstance(full, SegmentMaps):
        return SegmentMaps([p.chunk(tp, dim=1)[rank] for p in full.probs], full.token_index)
    if layout.kind == "heads":
        return full.chunk(tp, dim=1)[rank]
    if layout.kind == "qkv":
        return full.unflatten(-1, (3, -1)).chunk(tp, dim=-1)[rank].flatten(-2)
    if layout.kind == "kv_head":
        return full.chunk(tp // layout.group, dim=-1)[rank // layout.group]
    return full.chunk(tp, dim=-1)[rank]


class ShardedTaps(Taps):
    """`Taps` whose sharded points are gathered on read and sliced after a replacement."""

    def __init__(
        self,
        model: nn.Module,
        mesh: DeviceMesh,
        read: Iterable[str] = (),
        replace: Mapping[str, Replacement] | None = None,
    ) -> None:
        super().__init__(model, read, replace)
        self.group = mesh.get_group()
        self.rank, self.tp = mesh.get_local_rank(), mesh.size()
        self.layouts = tap_layouts(model.config, self.tp)

    def flow(self, name: str, value: Any) -> Any:
        if isinstance(value, DTensor):
            # a module input after its parallel style's input hook (the styles' hooks run before ours):
            # tap the local tensor, hand the module a DTensor of the same placement back
            new = self._flow_local(name, value.to_local())
            return DTensor.from_local(new, value.device_mesh, value.placements, run_check=False)
        return self._flow_local(name, value)

    def _flow_local(self, name: str, value: Any) -> Any:
        layout = self.layouts.get(name)
        if layout is None:
            return super().flow(name, value)
        full = super().flow(name, gather_full(layout, value, self.group))
        if name not in self.replace:
            return value  # the gathered copy was only read: the forward goes on with its own shard
        return local_part(layout, full, self.rank, self.tp)


class TensorParallelModel:
    """Mixed into a parallelized model's class (as FSDP2's `fully_shard` does): TP-aware taps, the mesh."""

    tp_mesh: DeviceMesh

    def taps(self, read: Iterable[str] = (), replace: Mapping[str, Replacement] | None = None) -> Taps:
        return ShardedTaps(self, self.tp_mesh, read, replace)  # type: ignore[arg-type]


def make_tensor_parallel(model: nn.Module, mesh: DeviceMesh) -> None:
    """Give `model` TP-aware taps by swapping its class for a subclass with `TensorParallelModel` mixed in."""
    cls = type(model)
    if not issubclass(cls, TensorParallelModel):
        model.__class__ = type(f"TensorParallel{cls.__name__}", (TensorParallelModel, cls), {})
    model.tp_mesh = mesh
