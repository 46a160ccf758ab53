"""transformers' `from_pretrained` keywords as our loading options: `torch_dtype` -> dtype, `device_map` ->
device, `attn_implementation` -> the kernel choice (`qwenvl_min.model.dispatch`).

- `torch_dtype` is transformers' older name of `dtype`: the same values ("auto" included), read by the
  same code; giving both is an error.
- `device_map` places the whole model on one device: "cpu", "cuda", "cuda:N", an int N (cuda:N), a
  torch.device, {"": device}, or "auto" = the one device there is (cuda:0 with one GPU, the CPU without).
  Anything that splits the model over devices ("balanced", "sequential", a dict of modules, "auto" with
  several GPUs) is refused with a pointer to tensor parallelism: here every layer is sharded over the GPUs
  instead (docs/distributed.md).
- `attn_implementation`: "eager" and "sdpa" select the torch path ("torch": SDPA, and the exact
  materializing attention whenever maps are asked for, so `output_attentions` works with either), and
  "flash_attention_2" our Triton kernels (varlen vision attention, rotary), which need a CUDA device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..utils.devices import check_device
from ..weights_convert.checkpoint import CheckpointError

_SPLITTING_MAPS = ("balanced", "balanced_low_0", "sequential")
ATTN_IMPLEMENTATIONS = {"eager": "torch", "sdpa": "torch", "flash_attention_2": "triton"}


def dtype_option(dtype: str | torch.dtype, torch_dtype: str | torch.dtype | None) -> str | torch.dtype:
    """The dtype asked for: `dtype`, or transformers' older spelling `torch_dtype` (not both)."""
    if torch_dtype is None:
        return dtype
    if not (isinstance(dtype, str) and dtype == "auto"):
        raise CheckpointError(
            f"dtype={dtype!r} and torch_dtype={torch_dtype!r} were both given; pass one (torch_dtype is "
            "transformers' older name of dtype)"
        )
    return torch_dtype


def device_option(device: str | torch.device | None, device_map: Any) -> torch.device:
    """The one device the model goes to, from `device` or transformers' `device_map` (not both)."""
    if device_map is None:
        return _checked("cpu" if device is None else device, "device")
    if device is not None:
        raise CheckpointError(
            f"device={str(device)!r} and device_map={device_map!r} were both given; pass one (device_map is "
            "transformers' spelling)"
        )
    if isinstance(device_map, Mapping):
        if set(device_map) != {""}:
            raise CheckpointError(_split_error(f"a device_map of {len(device_map)} entries"))
        device_map = device_map[""]
    if isinstance(device_map, int) and not isinstance(device_map, bool):
        device_map = f"cuda:{device_map}"
    if isinstance(device_map, str) and device_map in _SPLITTING_MAPS:
        raise CheckpointError(_split_error(f"device_map={device_map!r}"))
    if device_map == "auto":
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus > 1:
            raise CheckpointError(_split_error(f"device_map='auto' with {gpus} GPUs"))
        device_map = "cuda:0" if gpus == 1 else "cpu"
    if not isinstance(device_map, (str, torch.device)):
        raise CheckpointError(
            f"device_map must be a device ('cpu', 'cuda', 'cuda:1', an int), 'auto' or {{'': device}}, got "
            f"{device_map!r}"
        )
    return _checked(device_map, "device_map")


def kernels_option(attn_implementation: str | None, device: torch.device) -> str | None:
    """The kernel choice for transformers' `attn_implementation` (None: the model's default)."""
    if attn_implementation is None:
        return None
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise CheckpointError(
            f"attn_implementation={attn_implementation!r} is not implemented; use 'sdpa' or 'eager' (the torch "
            "path) or 'flash_attention_2' (our Triton kernels, on CUDA)"
        )
    if attn_implementation == "flash_attention_2" and device.type != "cuda":
        raise CheckpointError(
            f"attn_implementation='flash_attention_2' runs our Triton kernels, which need a CUDA device, but "
            f"the model goes to {str(device)!r}; pass device_map='cuda' or use attn_implementation='sdpa'"
        )
    return ATTN_IMPLEMENTATIONS[attn_implementation]


def _checked(device: str | torch.device, option: str) -> torch.device:
    try:
        return check_device(device, option=option)
    except ValueError as err:
        raise CheckpointError(str(err)) from None


def _split_error(what: str) -> str:
    return (
        f"{what} would split the model over devices; qwenvl-min keeps it whole on one device "
        "(device_map='cuda:0', 'cpu' or 'auto' with one GPU) or shards every layer over several GPUs with "
        "tensor parallelism (qwenvl_min.parallel.parallelize; see docs/distributed.md)"
    )
