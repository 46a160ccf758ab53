"""qwen-vl-utils 0.0.14 as a test oracle, on a machine where torchvision cannot be installed.

qwen-vl-utils imports torchvision at the top of its module, and torchvision has no build beside the pinned
CPU torch. It uses torchvision (and, for its other video backend, decord) only for I/O and one resize, so
`install()` puts small stand-ins for exactly those into sys.modules before importing it:
- torchvision.__version__ (qwen-vl-utils compares it with 0.19);
- torchvision.io.read_video(path, start_pts, end_pts, pts_unit="sec", output_format="TCHW"): decodes with
  PyAV and returns (T, C, H, W) uint8, an empty audio tensor and {"video_fps": average rate}, keeping the
  frames torchvision keeps: pts in [floor(start / time_base), ceil(end / time_base)], plus the last frame
  before the start when no frame sits exactly on it;
- torchvision.transforms.functional.resize(video, [h, w], BICUBIC, antialias=True): what torchvision does
  for tensors: torch's antialiased bicubic `interpolate` in float32, then clamped to 0..255 and rounded
  back to uint8 for uint8 input;
- torchvision.transforms.InterpolationMode (BICUBIC);
- decord.VideoReader(path): len(), get_avg_fps(), get_batch(indices).asnumpy() (N, H, W, 3), by PyAV.
Everything else — smart_resize, smart_nframes, the frame range and index choice, the total-pixel cap,
fetch_image, fetch_video, process_vision_info — is qwen-vl-utils' own code, run unmodified.
Its torchvision backend is forced (FORCE_QWENVL_VIDEO_READER=torchvision, read at its import); `backend()`
switches to its decord path for the cases that need it.

Users install it the same way: pip install --no-deps qwen-vl-utils==0.0.14 av packaging pillow requests
(its own dependencies, none of them torchvision; it still needs torchvision, decord or torchcodec to read
video files itself).
"""

from __future__ import annotations

import contextlib
import enum
import math
import os
import sys
import types
from collections.abc import Iterator

import av
import numpy as np
import torch

TALLY: dict[str, tuple[int, int]] = {}  # kind -> (cases compared, equal); conftest's summary reports it
DRAWN = "(drawn by hypothesis)"  # ends the kinds whose cases hypothesis draws: not a fixed count


class InterpolationMode(enum.Enum):
    BICUBIC = "bicubic"


def resize(video: torch.Tensor, size: list[int], interpolation=InterpolationMode.BICUBIC, antialias=True):
    if interpolation is not InterpolationMode.BICUBIC or antialias is not True:
        raise NotImplementedError("the stand-in resizes only bicubic with antialias, what qwen-vl-utils asks")
    # contiguous: the channels-last view read_video returns takes a much slower interpolate path (same values)
    x = (video.float() if video.dtype == torch.uint8 else video).contiguous()
    x = torch.nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    if video.dtype == torch.uint8:
        return x.clamp(0, 255).round().to(torch.uint8)
    return x


def read_video(path, start_pts=0.0, end_pts=None, pts_unit="pts", output_format="THWC"):
    if pts_unit != "sec":
        raise NotImplementedError("qwen-vl-utils reads with pts_unit='sec'")
    with av.open(path) as container:
        stream = container.streams.video[0]
        first = math.floor(start_pts / stream.time_base)
        last = math.inf if end_pts is None else math.ceil(end_pts / stream.time_base)
        frames = {frame.pts: frame for frame in container.decode(stream)}
        fps = float(stream.average_rate)
    chosen = sorted(pts for pts in frames if first <= pts <= last)
    earlier = [pts for pts in frames if pts < first]
    if first > 0 and first not in frames and earlier:
        chosen.insert(0, max(earlier))
    video = torch.from_numpy(np.stack([frames[p].to_ndarray(format="rgb24") for p in chosen]))
    if output_format == "TCHW":
        video = video.permute(0, 3, 1, 2)
    return video, torch.empty(1, 0), {"video_fps": fps}


class VideoReader:
    def __init__(self, path):
        with av.open(path) as container:
            stream = container.streams.video[0]
            self._frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            self._fps = float(stream.average_rate)

    def __len__(self):
        return len(self._frames)

    def get_avg_fps(self):
        return self._fps

    def get_batch(self, indices):
        batch = np.stack([self._frames[i] for i in indices])
        return types.SimpleNamespace(asnumpy=lambda: batch)


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    vars(module).update(attributes)
    return module


def install():
    """Import qwen_vl_utils.vision_process with the stand-ins and return it. The stand-ins leave
    sys.modules again afterwards (qwen-vl-utils holds them as its globals), so other tests never see a
    fake torchvision (importlib.util.find_spec would fail on it)."""
    functional = _module("torchvision.transforms.functional", resize=resize)
    transforms = _module("torchvision.transforms", functional=functional, InterpolationMode=InterpolationMode)
    io = _module("torchvision.io", read_video=read_video)
    torchvision = _module("torchvision", __version__="0.24.0", io=io, transforms=transforms)
    with _temporarily({m.__name__: m for m in (torchvision, io, transforms, functional)}):
        saved = os.environ.get("FORCE_QWENVL_VIDEO_READER")
        os.environ["FORCE_QWENVL_VIDEO_READER"] = "torchvision"  # read once, at import
        try:
            import qwen_vl_utils.vision_process as vision_process
        finally:
            if saved is None:
                os.environ.pop("FORCE_QWENVL_VIDEO_READER")
            else:
                os.environ["FORCE_QWENVL_VIDEO_READER"] = saved
    return vision_process


@contextlib.contextmanager
def _temporarily(modules: dict[str, types.ModuleType]) -> Iterator[None]:
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@contextlib.contextmanager
def backend(vision_process, name: str) -> Iterator[None]:
    """Run qwen-vl-utils with its decord video backend for the block (decord stand-in importable)."""
    saved = vision_process.FORCE_QWENVL_VIDEO_READER
    vision_process.FORCE_QWENVL_VIDEO_READER = name
    vision_process.get_video_reader_backend.cache_clear()
    try:
        with _temporarily({"decord": _module("decord", VideoReader=VideoReader)}):
            yield
    finally:
        vision_process.FORCE_QWENVL_VIDEO_READER = saved
        vision_process.get_video_reader_backend.cache_clear()
