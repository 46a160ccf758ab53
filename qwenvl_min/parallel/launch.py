"""Joining a torch.distributed job started by torchrun: rendezvous checks, backend and device choice.

    torchrun --nproc-per-node 2 -m qwenvl_min run --tp 2 --model DIR ...          # one node
    torchrun --nnodes 2 --nproc-per-node 4 --node-rank R --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 -m qwenvl_min run --tp 8 ...                # two nodes

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in every process. The backend
follows the device: NCCL for CUDA (each process takes cuda:LOCAL_RANK), gloo for CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from .plan import TensorParallelError

RENDEZVOUS_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
LAUNCH_HINT = "launch with `torchrun --nproc-per-node N -m qwenvl_min ...`"


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device  # this process's device (cuda:LOCAL_RANK on CUDA)
    backend: str  # "nccl" or "gloo"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    """True when this process was started by torchrun (or another launcher setting WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def _env_int(name: str) -> int:
    raw = os.environ[name]
    try:
        value = int(raw)
    except ValueError:
        raise TensorParallelError(f"{name}={raw!r} is not an integer; {LAUNCH_HINT}") from None
    return value


def init_distributed(device: str) -> DistContext:
    """Join the process group described by torchrun's environment variables (idempotent).

    `device` is "cpu" or "cuda" (a CUDA index is chosen from LOCAL_RANK). Raises TensorParallelError
    naming what is missing when the rendezvous variables are absent or inconsistent.
    """
    missing = [name for name in RENDEZVOUS_VARS if name not in os.environ]
    if missing:
        raise TensorParallelError(
            f"distributed run without the rendezvous variables {', '.join(missing)}; {LAUNCH_HINT}"
        )
    rank, world, local = (_env_int(name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if not 0 <= rank < world:
        raise TensorParallelError(f"RANK={rank} is outside 0..WORLD_SIZE-1 = {world - 1}; {LAUNCH_HINT}")
    kind = torch.device(device).type
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise TensorParallelError("--device cuda but CUDA is not available; use --device cpu (gloo)")
        if local >= torch.cuda.device_count():
            raise TensorParallelError(
                f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} GPUs; start at most that "
                "many processes per node (--nproc-per-node)"
            )
        torch.cuda.set_device(local)
        where, backend = torch.device("cuda", local), "nccl"
    elif kind == "cpu":
        where, backend = torch.device("cpu"), "gloo"
    else:
        raise TensorParallelError(f"distributed runs use --device cpu (gloo) or cuda (NCCL), got {device!r}")
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=where if kind == "cuda" else None)
    return DistContext(rank, world, where, backend)


def tp_mesh(context: DistContext, tp: int) -> DeviceMesh:
    """The 1-D mesh over all ranks for a TP degree, which must equal the world size."""
    if tp != context.world_size:
        raise TensorParallelError(
            f"--tp {tp} but {context.world_size} processes were started; tensor parallelism uses one "
            f"group of all of them: start --nproc-per-node {tp} (times nodes) processes or pass "
            f"--tp {context.world_size}"
        )
    return init_device_mesh(context.device.type, (tp,))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
