"""qwenvl-min: a small, readable PyTorch + Triton reimplementation of Qwen2-VL and Qwen2.5-VL."""

from .checkpoint_processor import Processor
from .config import Config, ConfigError, TextConfig, VisionConfig
from .load import load
from .media_sources import FetchLimits
from .model import ForwardOutput, QwenVL
from .positions import get_rope_index
from .taps import SegmentMaps, Taps, tap_names
from .text import KVCache
from .vision_messages import PreparedVision, SampledVideo, prepare_vision

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
