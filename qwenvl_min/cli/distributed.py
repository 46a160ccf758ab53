"""What the CLI's distributed entry points share: a TP model for `run --tp N`, the data-parallel share of
`latents` inputs, and one-summary collectives."""

from __future__ import annotations

from typing import Any, TypeVar

import torch.distributed as dist

from ..model.qwenvl import QwenVL
from ..parallel.launch import DistContext, init_distributed, tp_mesh
from ..parallel.sharded_load import load_sharded
from ..utils.dtypes import parse_dtype
from ..utils.validate import guard_finite_hidden_states
from ..weights_convert.checkpoint import CheckpointError
from .support import CliError, check_kernel_choice

T = TypeVar("T")


def load_tp_model(
    path: str, dtype: str | None, device: str, verify: bool, tp: int, finite_guard: bool = True
) -> tuple[QwenVL, DistContext]:
    """Join the torchrun job and load `path` sharded over all of its ranks (`--tp` must equal the world).
    `finite_guard` as in `support.load_model` (off under compiled decoding)."""
    context = init_distributed(device)
    check_kernel_choice(str(context.device))
    mesh = tp_mesh(context, tp)
    try:
        model = load_sharded(path, mesh, dtype=None if dtype is None else parse_dtype(dtype), verify=verify)
    except CheckpointError as err:
        raise CliError(f"{err} (`qwenvl-min convert SRC DST` runs the same converter)") from err
    if finite_guard:
        guard_finite_hidden_states(model)
    return model, context


def share(items: list[T], context: DistContext) -> list[T]:
    """This rank's inputs: every world_size-th one from its rank (deterministic, no coordination)."""
    return items[context.rank :: context.world_size]


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's `value` (picklable), in rank order, on every rank."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
