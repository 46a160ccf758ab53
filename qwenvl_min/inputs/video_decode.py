"""Reading video files with PyAV: only the frames that are kept become arrays, in one decoding pass.

    header = probe("clip.mp4")                     # rate, size, frame count: no frame decoded
    frames, total = read_frames(header, [0, 15, 30], transform)

How the frame count is known before decoding (the samplers need it to choose indices):
- `stream.frames`, the count the container states (MP4/MOV/AVI keep it in their index), else
- round(duration · rate), the duration from the stream or else the container (MKV/WebM state no count).
`read_frames` counts the frames it decodes. It decodes to the end of the stream (or of the asked range),
so the count is verified on the way: when it differs from the header's, the caller re-chooses its indices
from the true count and, only if they changed, decodes once more (`read_sampled`). A correct header, the
normal case, means one pass.

What one pass costs: a video codec cannot skip decoding the frames between two kept ones (each depends on
the previous), but it can skip converting them: only kept frames go through `to_ndarray` (YUV -> RGB, the
expensive copy) and the caller's transform (the resize), so at most one source-size RGB frame is alive at a
time. Frames before the first kept one are skipped by seeking to the keyframe before it; decoding stops
after the last frame of the asked range. A progress bar (`qwenvl_min.utils.progress`, shown only on a terminal)
counts decoded frames of long videos.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..utils.progress import progress_bar
from ..utils.validate import finite_number
from .budget import check_source_size

LOGGER = logging.getLogger(__name__)
BAR_FROM_FRAMES = 600  # draw a progress bar from this many frames to decode (about 20 s of 30 fps video)

FrameTransform = Callable[[np.ndarray], Any]  # an (H, W, 3) uint8 RGB frame -> what the caller keeps


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise ImportError(
            "reading video files needs PyAV: pip install 'qwenvl-min[video]' (or pass decoded frames and fps)"
        ) from None
    return av


@dataclass(frozen=True)
class VideoHeader:
    """What a video file says about itself, read without decoding a frame."""

    path: str
    fps: float  # the stream's average frame rate
    frames: int  # the stated frame count, or the one estimated from the duration (see `counted_by`)
    counted_by: str  # "stream" (the container's count) or "duration" (round(duration * fps))
    width: int
    height: int
    start_time: float  # seconds of the first frame (usually 0)


def _is_still_image(format_name: str) -> bool:
    """FFmpeg reads pictures as one-frame "videos" through its image demuxers (image2, jpeg_pipe, png_pipe,
    webp_pipe, ...): a picture passed as a video is named as such instead of failing as a short video."""
    return format_name == "image2" or format_name.endswith("_pipe")


def probe(path: str | os.PathLike, fps: float | None = None) -> VideoHeader:
    """Open a video file and read its rate, size and frame count. `fps` replaces the stated rate."""
    av = _av()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"video file not found: {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"expected a video file, got a directory: {path!r}")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"{path!r} has no video stream")
            if _is_still_image(container.format.name):
                raise ValueError(
                    f"{path!r} is a still image ({container.format.name}), not a video; pass it as an image"
                )
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            width, height = stream.codec_context.width, stream.codec_context.height
            stated = stream.frames
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / 1_000_000  # av.time_base: microseconds
            else:
                seconds = None
            start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    except av.error.FFmpegError as e:
        raise ValueError(f"could not decode video file {path!r} (not a video, or corrupt): {e}") from e
    if width and height:
        check_source_size(f"video {path!r}", width, height)
    if fps is None:
        if not rate:
            raise ValueError(f"{path!r} does not state a frame rate; pass fps")
        fps = finite_number("the frame rate", float(rate), positive=True, hint=f"of {path!r}; pass fps")
    if stated > 0:
        frames, counted_by = stated, "stream"
    elif seconds:
        frames, counted_by = max(1, round(seconds * fps)), "duration"
    else:
        raise ValueError(
            f"{path!r} states neither a frame count nor a duration, so frames cannot be chosen before "
            "decoding; remux it (e.g. ffmpeg -i IN -c copy OUT.mp4) or pass decoded frames"
        )
    return VideoHeader(path, fps, frames, counted_by, width, height, start)


def read_frames(
    header: VideoHeader,
    indices: Sequence[int],
    transform: FrameTransform,
    *,
    stop_after: int | None = None,
    seek: bool = True,
) -> tuple[list[Any], int | None]:
    """Decode `header.path` once and return ([transform(frame i) for i in indices], frame count).

    `indices` are ascending, distinct frame numbers. Decoding starts at the keyframe before indices[0]
    and runs to the end of the stream, or stops after frame `stop_after` (a range's last frame). The
    count is the number of frames in the stream when decoding reached its end, else None (not known).
    Indices past the real end are missing from the result: the caller compares the count and re-chooses.
    A seek that lands past indices[0] (a container with a poor index) is retried from the start.
    """
    av = _av()
    wanted = list(indices)
    if any(b <= a for a, b in zip(wanted, wanted[1:])) or (wanted and wanted[0] < 0):
        raise ValueError("frame indices must be ascending, distinct and >= 0")
    keep = set(wanted)
    last = stop_after
    kept: list[Any] = []
    count: int | None = None
    overshot = False
    expected = (last + 1 if last is not None else header.frames) - (wanted[0] if wanted else 0)
    try:
        with av.open(header.path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame threads: same pixels, decoded on every core
            first = _seek(container, stream, header, wanted[0] if wanted and seek else 0)
            bar = progress_bar(
                total=max(expected, 1),
                desc="decoding video",
                unit="frame",
                enabled=None if expected >= BAR_FROM_FRAMES else False,
                leave=False,
            )
            with bar:
                index = None
                for frame in container.decode(stream):
                    # after a seek the first frame's number comes from its time; then frames are counted
                    if index is None:
                        index = first(frame)
                        if index is None:
                            continue  # a frame without a timestamp cannot be placed after a seek
                        if wanted and index > wanted[0]:
                            overshot = True
                            break
                    else:
                        index += 1
                    bar.update(1)
                    if index in keep:
                        kept.append(transform(frame.to_ndarray(format="rgb24")))
                    if last is not None and index >= last:
                        break
                else:
                    count = 0 if index is None else index + 1
    except av.error.FFmpegError as e:
        raise ValueError(f"could not decode video file {header.path!r} (not a video, or corrupt): {e}") from e
    if overshot:
        LOGGER.info("%s: seeking went past frame %d; decoding from the start", header.path, wanted[0])
        return read_frames(header, wanted, transform, stop_after=stop_after, seek=False)
    return kept, count


def _seek(container: Any, stream: Any, header: VideoHeader, target: int) -> Callable[[Any], int | None]:
    """Seek to the keyframe at or before frame `target`; return how to number the first decoded frame."""
    if target == 0:
        return lambda frame: 0
    tb = stream.time_base
    offset = (header.start_time + target / header.fps) / tb
    container.seek(max(0, math.floor(offset) - 1), backward=True, any_frame=False, stream=stream)

    def number(frame: Any) -> int | None:
        if frame.pts is None:
            return None
        return round((float(frame.pts * tb) - header.start_time) * header.fps)

    return number


def read_sampled(
    header: VideoHeader,
    choose: Callable[[int], tuple[Sequence[int], int | None]],
    transform_for: Callable[[int], FrameTransform],
) -> tuple[list[Any], list[int], int]:
    """Choose indices from the header's count, decode, verify the count; decode again only if it was
    wrong and the indices change. `choose(total)` -> (ascending indices, last frame of the range or None);
    `transform_for(kept count)` -> the per-frame transform (it may check budgets first).
    Returns (kept frames, their indices, the verified frame count)."""
    total = header.frames
    indices, stop = choose(total)
    frames, counted = read_frames(header, indices, transform_for(len(indices)), stop_after=stop)
    if counted is not None and counted != total:
        if counted == 0:
            raise ValueError(f"video file {header.path!r} has no decodable frames")
        LOGGER.info(
            "%s: the %s says %d frames, %d were decoded; choosing frames again",
            header.path,
            "container" if header.counted_by == "stream" else "duration",
            total,
            counted,
        )
        total = counted
        fresh, stop = choose(total)
        if list(fresh) != list(indices):
            indices = fresh
            frames, _ = read_frames(header, indices, transform_for(len(indices)), stop_after=stop)
    if len(frames) != len(indices):
        raise ValueError(
            f"video file {header.path!r}: {len(indices)} frames were chosen but only {len(frames)} could be "
            "decoded (a truncated or damaged file?)"
        )
    return frames, list(indices), total
