"""qwenvl-min: a small, readable PyTorch + Triton reimplementation of Qwen2-VL and Qwen2.5-VL."""

from .checkpoint_processor import Processor
from .config import Config, ConfigError, TextConfig, VisionConfig
from .load import load
from .model import ForwardOutput, QwenVL
from .positions import get_rope_index
from .taps import SegmentMaps, Taps, tap_names
from .text import KVCache

__all__ = [
    "Config",
    "ConfigError",
    "ForwardOutput",
    "KVCache",
    "Processor",
    "QwenVL",
    "SegmentMaps",
    "Taps",
    "TextConfig",
    "VisionConfig",
    "get_rope_index",
    "load",
    "tap_names",
]
