"""Hugging Face I/O: checkpoints (HF directories, Hub ids, our converted directories) into a `QwenVL`.

`from_pretrained` / `from_hf` are what `QwenVL.from_pretrained` / `QwenVL.from_hf` delegate to; `load`
reads a directory written by our converter (`qwenvl-min convert`).
"""

from .load import load
from .pretrained import from_hf, from_pretrained

__all__ = ["from_hf", "from_pretrained", "load"]
