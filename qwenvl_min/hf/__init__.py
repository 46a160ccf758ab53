"""Hugging Face I/O and calling conventions: checkpoints (HF directories, Hub ids, our converted
directories) into a `QwenVL`, and transformers' own calls on it.

`from_pretrained` / `from_hf` are what `QwenVL.from_pretrained` / `QwenVL.from_hf` delegate to; `load`
reads a directory written by our converter (`qwenvl-min convert`). `generate` and `vision_features` are
behind `QwenVL.generate` and `QwenVL.get_image_features` / `get_video_features`; `refuse` answers every
transformers keyword those entry points do not take (`keywords`).
"""

from .features import VisionFeatures, vision_features
from .generation import generate
from .keywords import UnsupportedKeyword, refuse
from .load import load
from .pretrained import from_hf, from_pretrained

__all__ = [
    "UnsupportedKeyword",
    "VisionFeatures",
    "from_hf",
    "from_pretrained",
    "generate",
    "load",
    "refuse",
    "vision_features",
]
