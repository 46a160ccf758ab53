"""qwenvl-min: a small, readable PyTorch + Triton reimplementation of Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE.

The public names below are imported on first use, so `from qwenvl_min import QwenVL` loads the model
alone (torch and einops), not the image / video / tokenizer stack the inputs need. Where each lives:
docs/design.md, "Package map".
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_HOMES = {
    "Config": "qwenvl_min.model.config",
    "ConfigError": "qwenvl_min.model.config",
    "TextConfig": "qwenvl_min.model.config",
    "VisionConfig": "qwenvl_min.model.config",
    "QwenVL": "qwenvl_min.model.qwenvl",
    "ForwardOutput": "qwenvl_min.model.outputs",
    "KVCache": "qwenvl_min.model.cache",
    "VisionInputs": "qwenvl_min.model.vision_inputs",
    "get_rope_index": "qwenvl_min.model.positions",
    "load": "qwenvl_min.hf.load",
    "GenerationSettings": "qwenvl_min.generate.settings",
    "Processor": "qwenvl_min.inputs.processor",
    "FetchLimits": "qwenvl_min.inputs.media_sources",
    "PreparedVision": "qwenvl_min.inputs.vision_messages",
    "SampledVideo": "qwenvl_min.inputs.vision_messages",
    "prepare_vision": "qwenvl_min.inputs.vision_messages",
    "preprocess_image": "qwenvl_min.inputs.preprocess",
    "preprocess_video": "qwenvl_min.inputs.preprocess",
    "SegmentMaps": "qwenvl_min.model.attention",
    "Taps": "qwenvl_min.interp.taps",
    "tap_names": "qwenvl_min.interp.taps",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'qwenvl_min' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
