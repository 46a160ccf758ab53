"""qwenvl-min: a small, readable PyTorch + Triton reimplementation of Qwen2-VL and Qwen2.5-VL."""

from .hf.load import load
from .inputs.media_sources import FetchLimits
from .inputs.processor import Processor
from .inputs.vision_messages import PreparedVision, SampledVideo, prepare_vision
from .interp.taps import SegmentMaps, Taps, tap_names
from .model.config import Config, ConfigError, TextConfig, VisionConfig
from .model.positions import get_rope_index
from .model.qwenvl import ForwardOutput, QwenVL
from .model.text import KVCache

__all__ = [
    "Config",
    "ConfigError",
    "FetchLimits",
    "ForwardOutput",
    "KVCache",
    "PreparedVision",
    "Processor",
    "QwenVL",
    "SampledVideo",
    "SegmentMaps",
    "Taps",
    "TextConfig",
    "VisionConfig",
    "get_rope_index",
    "load",
    "prepare_vision",
    "tap_names",
]
