"""qwenvl-min: a small, readable PyTorch + Triton reimplementation of Qwen2-VL and Qwen2.5-VL."""

from .config import Config, ConfigError, TextConfig, VisionConfig

__all__ = ["Config", "ConfigError", "TextConfig", "VisionConfig"]
