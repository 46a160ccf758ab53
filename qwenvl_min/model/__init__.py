"""The architecture alone: configs, layers, rotary, geometry, segments, attention, the vision tower, the
decoder, 3-D positions and the `QwenVL` class. It imports nothing of the package but `kernels` and
`utils` (docs/design.md, "Package map")."""

from .cache import KVCache
from .config import Config, ConfigError, TextConfig, VisionConfig
from .outputs import ForwardOutput
from .positions import get_rope_index
from .qwenvl import QwenVL
from .vision_inputs import VisionInputs

__all__ = [
    "Config",
    "ConfigError",
    "ForwardOutput",
    "KVCache",
    "QwenVL",
    "TextConfig",
    "VisionConfig",
    "VisionInputs",
    "get_rope_index",
]
