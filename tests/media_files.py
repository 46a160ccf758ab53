"""Small media files for tests that need a real file on disk (shared by the inputs and CLI tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_mp4(path: Path, frames: int, width: int = 64, height: int = 48, fps: int = 4) -> Path:
    """An MPEG-4 file of `frames` frames, frame k a flat grey of 40 * k."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(frames):
            frame = np.full((height, width, 3), 40 * k % 256, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path
