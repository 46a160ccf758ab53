"""Load a converted checkpoint: `load(path) -> QwenVL`.

The model is built on the meta device (no random init, no memory), the shards are memory-mapped
(private, copy-on-write: the files never change and pages are read when first touched), and the
tensors are assigned as the parameters (strict: every key present, none extra, shapes as configured).
Nothing is unpickled. Make a checkpoint with `qwenvl-min convert HF_DIR OUT_DIR`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..model.qwenvl import QwenVL
from ..utils.devices import check_device
from ..utils.mapped_files import note_mapped
from ..weights_convert.checkpoint import CheckpointError, read_our_config, scan_weights, verify_manifest
from ..weights_convert.mapping import MappingError, check_state_dict
from ..weights_convert.safetensors_io import mmap_tensors, read_header


def load(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    verify: bool = False,
) -> QwenVL:
    """A QwenVL in eval mode from a converted checkpoint directory.

    dtype: cast floating weights (default: as stored). device: where the weights end up; on "cpu" with
    the stored dtype the parameters stay memory-mapped (no copy). Every load checks each shard's size
    and header against manifest.json (cheap); verify=True checks the sha256 of every byte instead.

    The shards are mapped, not copied: do not modify or truncate them in place while a model loaded from
    them runs (a truncated mapped file kills the process with SIGBUS). Replace a checkpoint by writing a
    new directory and renaming it (what `convert --force` does): running jobs keep the old files.
    """
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise CheckpointError(f"dtype must be a floating torch dtype such as torch.bfloat16, got {dtype!r}")
    try:
        device = check_device(device, option="device")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    directory = Path(path).expanduser()
    config = read_our_config(directory)
    files = sorted({file for file, _ in scan_weights(directory).values()})
    state = {}
    for file in files:
        state.update(mmap_tensors(read_header(file)))
    try:
        check_state_dict(config, state)
    except MappingError as err:
        raise CheckpointError(f"{directory}: {err}; re-convert the checkpoint") from err
    verify_manifest(directory, full=verify)
    viewed = False
    for key, tensor in state.items():
        kept = tensor
        if dtype is not None and tensor.is_floating_point():
            kept = kept.to(dtype)
        kept = kept.to(device)
        viewed |= kept.data_ptr() == tensor.data_ptr() and tensor.numel() > 0
        state[key] = kept
    if viewed:  # a SIGBUS report can name the shards (qwenvl_min.utils.mapped_files)
        note_mapped(directory, files)
    with torch.device("meta"):
        model = QwenVL(config)
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if leftover:  # a tensor the model needs but the checkpoint does not provide: a bug, not bad input
        raise RuntimeError(f"parameters or buffers still on the meta device after loading: {leftover[:8]}")
    return model.eval()
