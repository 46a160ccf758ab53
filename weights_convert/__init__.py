"""Hugging Face <-> qwenvl-min weight conversion (installed as `qwenvl_min.weights_convert`)."""

from .mapping import (
    MappingError,
    canonical_hf_key,
    check_state_dict,
    expected_shapes,
    hf_key_to_ours,
    hf_state_dict_to_ours,
    our_key_to_hf,
    our_state_dict_to_hf,
)

__all__ = [
    "MappingError",
    "canonical_hf_key",
    "check_state_dict",
    "expected_shapes",
    "hf_key_to_ours",
    "hf_state_dict_to_ours",
    "our_key_to_hf",
    "our_state_dict_to_hf",
]
