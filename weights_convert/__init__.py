"""Hugging Face <-> qwenvl-min weight conversion (installed as `qwenvl_min.weights_convert`).

mapping.py: the key/tensor mapping (pure functions); convert.py: file conversion, both directions;
checkpoint.py: directory format and manifest; safetensors_io.py: streaming writer and mmap reader.
"""

from .checkpoint import CheckpointError
from .convert import convert_checkpoint, export_to_hf
from .mapping import (
    MappingError,
    canonical_hf_key,
    check_shapes,
    check_state_dict,
    expected_shapes,
    hf_key_to_ours,
    hf_state_dict_to_ours,
    our_key_to_hf,
    our_state_dict_to_hf,
)

__all__ = [
    "CheckpointError",
    "MappingError",
    "canonical_hf_key",
    "check_shapes",
    "check_state_dict",
    "convert_checkpoint",
    "expected_shapes",
    "export_to_hf",
    "hf_key_to_ours",
    "hf_state_dict_to_ours",
    "our_key_to_hf",
    "our_state_dict_to_hf",
]
