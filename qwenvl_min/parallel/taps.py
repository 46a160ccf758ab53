"""Taps on a tensor-parallel model: every rank reads and replaces the single-process tensor.

Most tap points carry full tensors under TP (block / layer outputs, the merger, norms, attention module
outputs, the embeddings): they are read and replaced as in one process. The others hold this rank's shard
(`plan.tap_shards`): outputs of column-parallel projections, inputs of row-parallel ones and attention
maps (local heads). For those, a read gathers the shards, so `taps.cache[name]` is the full tensor, equal
on every rank; a replacement (a tensor or a function) is given and returns the full tensor (the same on
every rank, e.g. computed from the gathered value), and each rank keeps its own slice of it. Gathers run
only for the names asked for; every rank must ask for the same names (they are collectives).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from ..model.attention import SegmentMaps
from .plan import TapShard, tap_shards


def _gather(local: Tensor, dim: int, group: dist.ProcessGroup) -> list[Tensor]:
    pieces = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(pieces, local.contiguous(), group=group)
    return pieces


def gather_full(shard: TapShard, local: Any, group: dist.ProcessGroup) -> Any:
    """The single-process value of a tap point from every rank's local value."""
    if isinstance(local, SegmentMaps):
        probs = [torch.cat(_gather(p, 1, group), dim=1) for p in local.probs]
        return SegmentMaps(probs, local.token_index)
    if shard.kind == "heads":
        return torch.cat(_gather(local, 1, group), dim=1)
    pieces = _gather(local, shard.dim, group)
    if shard.kind == "qkv":  # each piece is [q_r | k_r | v_r]: regroup as [q | k | v]
        split = [p.unflatten(-1, (3, -1)) for p in pieces]
        return torch.cat(split, dim=-1).flatten(-2)
    if shard.kind == "kv_head":  # ranks r*group .. (r+1)*group - 1 hold the same kv head
        pieces = pieces[:: shard.group]
    return torch.cat(pieces, dim=shard.dim)


def local_part(shard: TapShard, full: Any, rank: int, tp: int) -> Any:
    """This rank's slice of a full (single-process shaped) value: the inverse of `gather_full`."""
    if isinstance(full, SegmentMaps):
        return SegmentMaps([p.chunk(tp, dim=1)[rank] for p in full.probs], full.token_index)
    if shard.kind == "heads":
        return full.chunk(tp, dim=1)[rank]
    if shard.kind == "qkv":
        return full.unflatten(-1, (3, -1)).chunk(tp, dim=-1)[rank].flatten(-2)
    if shard.kind == "kv_head":
        return full.chunk(tp // shard.group, dim=shard.dim)[rank // shard.group]
    return full.chunk(tp, dim=shard.dim)[rank]


@dataclass(frozen=True)
class TapSharding:
    """How the taps of one tensor-parallel model turn local values into single-process ones and back."""

    group: dist.ProcessGroup
    rank: int
    tp: int
    shards: dict[str, TapShard]  # tap name -> how its local value is sharded (absent: full on every rank)

    def flow(self, name: str, value: Any, single_process_flow: Callable[[str, Any], Any]) -> Any:
        """Pass one tap's local value through `single_process_flow` (record / replace) as the full value."""
        if isinstance(value, DTensor):
            # a module input after its parallel style's input hook (the styles' hooks run before ours):
            # tap the local tensor, hand the module a DTensor of the same placement back
            new = self.flow(name, value.to_local(), single_process_flow)
            return DTensor.from_local(new, value.device_mesh, value.placements, run_check=False)
        shard = self.shards.get(name)
        if shard is None:
            return single_process_flow(name, value)
        full = gather_full(shard, value, self.group)
        flowed = single_process_flow(name, full)
        if flowed is full:
            return value  # only read: the forward goes on with its own shard
        return local_part(shard, flowed, self.rank, self.tp)


def tap_sharding(model: nn.Module) -> TapSharding | None:
    """The sharding of a model `parallelize` sharded (found from its DTensor parameters), else None."""
    mesh = next((p.device_mesh for p in model.parameters() if isinstance(p, DTensor)), None)
    if mesh is None:
        return None
    tp = mesh.size()
    return TapSharding(mesh.get_group(), mesh.get_local_rank(), tp, tap_shards(model.config, tp))
