"""Generation: `generate` / `stream` (eager or compiled decoding) over a `QwenVL`."""

from .loop import generate, stream

__all__ = ["generate", "stream"]
