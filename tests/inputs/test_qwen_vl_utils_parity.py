"""`prepare_vision` against qwen-vl-utils 0.0.14 itself, on a grid of images, videos and options.

qwen-vl-utils runs unmodified; only its I/O and resize primitives come from test stand-ins
(tests/qwen_vl_utils_oracle.py: torchvision.io.read_video and transforms.functional.resize by PyAV and
torch's antialiased bicubic interpolate, as torchvision does them for tensors; decord.VideoReader by PyAV
for its decord backend). Install it without torchvision with
`pip install --no-deps qwen-vl-utils==0.0.14 av packaging pillow requests` (the `test` extra does).

Equal means: the same kept frame indices, the same sizes, bit-equal pixels (images through PIL, video
frames through the tensor resize) and the same sampled fps. Every case compared is counted; conftest
prints "qwen-vl-utils parity: N cases compared, N equal: F fixed cases + D drawn by hypothesis" at the end
of the run. F is the same every run (docs/preprocessing.md quotes it); D is the resize-rule draws that
qwen-vl-utils can size (those past its ratio limit or with a zero side are checked, not counted), so it
moves a little with hypothesis' draws. Where qwen-vl-utils fails
or does something we chose not to do, a test below shows both behaviours (docs/preprocessing.md, table).
"""

from __future__ import annotations

import fractions
import math
import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps
from qwen_vl_utils_oracle import DRAWN, TALLY, backend, install

from qwenvl_min import prepare_vision
from qwenvl_min.inputs.qwen_vl_rules import fit_size


@pytest.fixture(scope="module")
def qvu():
    return install()


def _tally(kind: str, equal: bool) -> bool:
    """Count one compared case of `kind` (the summary line splits the total by kind)."""
    compared, same = TALLY.get(kind, (0, 0))
    TALLY[kind] = (compared + 1, same + bool(equal))
    return equal


def _noise(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _ours_image(item):
    return prepare_vision([{"role": "user", "content": [item]}]).images[0]


def _same_image(ours: Image.Image, theirs: Image.Image) -> bool:
    return ours.size == theirs.size and np.array_equal(np.asarray(ours), np.asarray(theirs.convert("RGB")))


# ---- sizes: the resize rule alone ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, derandomize=True)  # a stable count to quote
@given(
    h=st.integers(1, 4000),
    w=st.integers(1, 4000),
    min_tokens=st.sampled_from([4, 64, 128, 256]),
    max_tokens=st.sampled_from([256, 768, 1280, 16384]),
)
def test_fit_size_equals_smart_resize(qvu, h, w, min_tokens, max_tokens):
    lo, hi = min_tokens * 784, max_tokens * 784
    if max(h, w) / min(h, w) > 200:
        with pytest.raises(ValueError, match="aspect ratio"):
            fit_size(h, w, 28, lo, hi)
        return
    theirs = qvu.smart_resize(h, w, 28, lo, hi)
    ours = fit_size(h, w, 28, lo, hi)
    if min(theirs) == 0:  # qwen-vl-utils floors a thin image's short side to 0; we keep one factor
        assert ours == tuple(max(28, s) for s in theirs)
        return
    assert _tally(f"resize rule {DRAWN}", ours == theirs)


# ---- images -------------------------------------------------------------------------------------------------

IMAGE_CASES = [
    ((480, 640), {}),
    ((20, 20), {}),
    ((10, 2000), {}),  # ratio 200: qwen-vl-utils keeps 28 x 1988 (HF: 28 x 812)
    ((2000, 15), {}),
    ((1000, 1500), {"max_pixels": 256 * 784}),
    ((97, 150), {"min_pixels": 512 * 784}),
    ((300, 301), {"min_pixels": 4 * 784, "max_pixels": 64 * 784}),
    ((1200, 1900), {}),
    ((333, 500), {"resized_height": 280, "resized_width": 420}),
    ((333, 500), {"resized_height": 100, "resized_width": 50}),
]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
@pytest.mark.parametrize(("size", "options"), IMAGE_CASES)
def test_images_equal_qwen_vl_utils(qvu, mode, size, options):
    image = Image.fromarray(_noise(*size, 4), "RGBA").convert(mode)
    item = {"type": "image", "image": image, **options}
    assert _tally("images", _same_image(_ours_image(item), qvu.fetch_image(item)))


def test_image_sources_equal_qwen_vl_utils(qvu, tmp_path):
    """A path, a file:// URI and a data: URI give qwen-vl-utils' pixels (PNG round trip, no EXIF)."""
    import base64

    path = tmp_path / "photo.png"
    Image.fromarray(_noise(150, 230, 4), "RGBA").save(path)
    data = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    for source in (str(path), f"file://{path}", data):
        item = {"type": "image", "image": source, "max_pixels": 100 * 784}
        assert _tally("images", _same_image(_ours_image(item), qvu.fetch_image(item)))
    item = {"type": "image_url", "image_url": str(path)}
    assert _tally("images", _same_image(_ours_image(item), qvu.fetch_image(item)))


def test_la_alpha_is_composited_like_rgba(qvu):
    """qwen-vl-utils composites RGBA onto white but converts LA straight to RGB (the alpha is dropped and
    hidden grey shows). We composite every kind of transparency onto white: LA equals its RGBA version."""
    image = Image.fromarray(_noise(60, 90, 4), "RGBA").convert("LA")
    ours = _ours_image({"type": "image", "image": image})
    assert _same_image(ours, qvu.fetch_image({"type": "image", "image": image.convert("RGBA")}))
    assert not _same_image(ours, qvu.fetch_image({"type": "image", "image": image}))


def test_exif_orientation_is_applied(qvu, tmp_path):
    """qwen-vl-utils ignores EXIF orientation (the model sees the photo sideways); we turn it upright."""
    exif = Image.Exif()
    exif[ImageOps.ExifTags.Base.Orientation] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(_noise(50, 120)).save(path, exif=exif.tobytes(), quality=95)
    ours = _ours_image({"type": "image", "image": str(path)})
    upright = ImageOps.exif_transpose(Image.open(path))
    assert _same_image(ours, qvu.fetch_image({"type": "image", "image": upright}))
    assert qvu.fetch_image({"type": "image", "image": str(path)}).size != ours.size


def test_thin_image_that_qwen_vl_utils_cannot_resize(qvu):
    """Scaling a 30 x 5000 image into 100000 pixels floors its height to 0 in qwen-vl-utils, and PIL
    refuses the resize; we keep the short side at one factor (28), as HF does."""
    image = Image.fromarray(_noise(30, 5000))
    item = {"type": "image", "image": image, "max_pixels": 100000}
    with pytest.raises(ValueError, match="height and width must be > 0"):
        qvu.fetch_image(item)
    beta = (30 * 5000 / 100000) ** 0.5
    assert _ours_image(item).size == (int(5000 / beta / 28) * 28, 28)  # (w, h) = (4060, 28)


# ---- videos -------------------------------------------------------------------------------------------------

RATES = {6: 6, 24: 24, 30: 30, 29.97: fractions.Fraction(30000, 1001)}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Tiny MPEG-4 clips written with PyAV, one per (frames, fps, height, width), made on first use."""
    folder, made = tmp_path_factory.mktemp("clips"), {}

    def clip(frames: int, fps: float, height: int = 48, width: int = 64) -> str:
        key = (frames, fps, height, width)
        if key not in made:
            path = str(folder / f"{frames}-{fps}-{height}x{width}.mp4")
            rng = np.random.default_rng(frames)
            with av.open(path, "w") as container:
                stream = container.add_stream("mpeg4", rate=RATES[fps])
                stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
                for k in range(frames):
                    base = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
                    picture = np.kron(base, np.ones((8, 8, 1), np.uint8))  # blocks: survives the codec
                    picture[: k % height] //= 2  # and moves, so every frame differs
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
                container.mux(stream.encode())
            made[key] = path
        return made[key]

    return clip


def _theirs_video(qvu, item):
    (video, metadata), sample_fps = qvu.fetch_video(
        item, return_video_sample_fps=True, return_video_metadata=True
    )
    return video, [int(i) for i in metadata["frames_indices"]], sample_fps, metadata.get("video_backend")


def _same_video(ours, video, indices, sample_fps) -> bool:
    assert torch.equal(video, video.round()), "qwen-vl-utils' frames hold whole levels"
    theirs = video.to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (T, H, W, 3)
    return (
        list(ours.frame_indices) == indices
        and ours.frames.shape == theirs.shape
        and np.array_equal(ours.frames, theirs)
        and ours.sample_fps == sample_fps
    )


def _ours_video(item):
    return prepare_vision([{"role": "user", "content": [item]}], max_tokens=10**9).videos[0]


VIDEO_CASES = [
    # (frames, fps, options)
    (10, 6, {}),
    (40, 24, {}),
    (40, 30, {}),
    (37, 29.97, {}),
    (40, 30, {"fps": 5.0}),
    (40, 24, {"fps": 0.5}),
    (12, 6, {"fps": 6.0}),
    (40, 30, {"nframes": 7}),
    (12, 24, {"nframes": 12}),
    (40, 24, {"fps": 4.0, "min_frames": 10}),
    (40, 30, {"fps": 30.0, "max_frames": 9}),
    (20, 24, {"min_frames": 10}),
    (40, 30, {"total_pixels": 4 * 128 * 784}),  # the long-video cap: less than 128 tokens a frame
    (16, 6, {"fps": 6.0, "total_pixels": 16 * 784 * 28}),
    (16, 24, {"max_pixels": 200 * 784}),
    (16, 24, {"min_pixels": 300 * 784}),
    (16, 24, {"min_pixels": 16 * 784, "max_pixels": 64 * 784}),
    (16, 24, {"resized_height": 112, "resized_width": 140}),
]


@pytest.mark.parametrize(("frames", "fps", "options"), VIDEO_CASES)
def test_video_files_equal_qwen_vl_utils(qvu, clips, frames, fps, options):
    path = clips(frames, fps)
    item = {"type": "video", "video": path, **options}
    video, indices, sample_fps, used = _theirs_video(qvu, dict(item))
    assert used == "torchvision"
    assert _tally("video files", _same_video(_ours_video(item), video, indices, sample_fps))


@pytest.mark.parametrize(("height", "width"), [(32, 32), (36, 100), (64, 48)])
def test_video_sizes_equal_qwen_vl_utils(qvu, clips, height, width):
    item = {"type": "video", "video": clips(12, 24, height, width)}
    video, indices, sample_fps, _ = _theirs_video(qvu, dict(item))
    assert _tally("video files", _same_video(_ours_video(item), video, indices, sample_fps))


RANGE_CASES = [
    (40, 24, {"video_start": 0.5}),
    (40, 24, {"video_end": 1.0}),
    (40, 30, {"video_start": 0.25, "video_end": 1.1}),
    (37, 29.97, {"video_start": 0.2, "video_end": 0.9, "fps": 10.0}),
    (24, 6, {"video_start": 1.0, "video_end": 100.0, "fps": 3.0}),
]


@pytest.mark.parametrize(("frames", "fps", "options"), RANGE_CASES)
def test_video_ranges_equal_qwen_vl_utils_frame_rule(qvu, clips, frames, fps, options):
    """video_start / video_end as frame numbers, ceil(start·fps)..floor(end·fps): the rule of
    qwen-vl-utils' decord and torchcodec readers (its default ones when installed)."""
    item = {"type": "video", "video": clips(frames, fps), **options}
    with backend(qvu, "decord"):
        video, indices, sample_fps, used = _theirs_video(qvu, dict(item))
    assert used == "decord"
    assert _tally("video files", _same_video(_ours_video(item), video, indices, sample_fps))


def test_qwen_vl_utils_readers_disagree_on_a_start_between_frames(qvu, clips):
    """Its torchvision reader also keeps the last frame *before* video_start when no frame sits exactly on
    it (torchvision's rule, meant for audio): 0.5 s of a 30 fps clip starts at frame 15 by the frame rule,
    at frame 14 by that one. We follow the frame rule."""
    item = {"type": "video", "video": clips(40, 30), "video_start": 0.51, "nframes": 4}
    _, by_time, _, _ = _theirs_video(qvu, dict(item))
    with backend(qvu, "decord"):
        _, by_frame, _, _ = _theirs_video(qvu, dict(item))
    assert by_frame[0] == math.ceil(0.51 * 30) == 16
    assert list(_ours_video(item).frame_indices) == by_frame
    # torchvision's frames are numbered from the clip's start: one extra frame moves every index
    assert len(by_time) == len(by_frame) and by_time != [i - 16 for i in by_frame]


def test_frame_lists_equal_qwen_vl_utils(qvu):
    """Frames whose size is already a multiple of 56 (see the next test for why 56) and an odd count
    (qwen-vl-utils repeats the last frame)."""
    for count, (h, w), options in [
        (3, (112, 168), {}),
        (4, (112, 112), {"sample_fps": 1.0}),
        (3, (224, 112), {"total_pixels": 3 * 784 * 20}),
        (2, (168, 168), {"max_pixels": 150 * 784}),
    ]:
        frames = [Image.fromarray(_noise(h, w, seed=k)) for k in range(count)]
        item = {"type": "video", "video": frames, **options}
        video, sample_fps = qvu.fetch_video(dict(item), return_video_sample_fps=True)
        ours = _ours_video(item)
        theirs = video.to(torch.uint8).permute(0, 2, 3, 1).numpy()
        assert _tally(
            "frame lists",
            ours.frames.shape == theirs.shape
            and np.array_equal(ours.frames, theirs)
            and ours.sample_fps == sample_fps,
        )


def test_frame_lists_are_resized_once(qvu):
    """qwen-vl-utils resizes each listed frame with fetch_image(image_patch_size=28) — a factor of 56 —
    and then again to the video size. We resize once, straight to the video size: the same frames decoded
    from a file give the same pixels."""
    frames = [_noise(100, 150, seed=k) for k in range(4)]
    ours = _ours_video({"type": "video", "video": [Image.fromarray(f) for f in frames]})
    video = qvu.fetch_video({"type": "video", "video": [Image.fromarray(f) for f in frames]})
    assert ours.frames.shape[1:3] == tuple(video.shape[2:]) and not np.array_equal(
        ours.frames, video.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    )
    from qwenvl_min.inputs.qwen_vl_rules import resize_frame

    height, width = ours.frames.shape[1:3]
    assert all(np.array_equal(o, resize_frame(f, height, width)) for o, f in zip(ours.frames, frames))


def test_process_vision_info_end_to_end(qvu, clips):
    """A whole conversation: images, an image_url, a video file, a frame list, in order."""
    still = Image.fromarray(_noise(200, 300))
    frames = [Image.fromarray(_noise(112, 112, seed=k)) for k in range(4)]
    content = [
        {"type": "image", "image": still, "max_pixels": 64 * 784},
        {"type": "text", "text": "and"},
        {"type": "video", "video": clips(40, 24), "fps": 4.0},
        {"type": "image_url", "image_url": still},
        {"type": "video", "video": frames},
    ]
    messages = [[{"role": "user", "content": content}], [{"role": "user", "content": content[:1]}]]
    images, videos, kwargs = qvu.process_vision_info(messages, return_video_kwargs=True)
    ours = prepare_vision(messages)
    assert len(ours.images) == len(images) == 3 and len(ours.videos) == len(videos) == 2
    equal = all(_same_image(a, b) for a, b in zip(ours.images, images))
    for mine, video, fps in zip(ours.videos, videos, kwargs["fps"]):
        theirs = video.to(torch.uint8).permute(0, 2, 3, 1).numpy()
        equal &= np.array_equal(mine.frames, theirs) and mine.sample_fps == fps
    assert _tally("conversations", equal)
    inputs = ours.model_inputs()
    assert inputs["second_per_grid_ts"].tolist() == [pytest.approx(2 / f) for f in kwargs["fps"]]


# ---- the number the docs quote ------------------------------------------------------------------------------


def test_the_fixed_count_is_the_one_the_docs_quote(request):
    """docs/preprocessing.md states the fixed part of the summary line ("F fixed cases"); this runs last in
    the module and, when the whole module ran, checks that F is the count this run tallied."""
    module = request.node.parent
    every = {item.name for item in module.collect() if isinstance(item, pytest.Function)}
    ran = {item.name for item in request.session.items if item.parent is module}
    fixed = sum(n for kind, (n, _) in TALLY.items() if not kind.endswith(DRAWN))
    docs = Path(__file__).parents[2] / "docs" / "preprocessing.md"
    quoted = re.findall(r"(\d+) fixed cases", docs.read_text())
    assert quoted, "docs/preprocessing.md should quote the fixed count"
    if ran == every:  # a partial run (-k, a node id) tallies part of it
        assert {int(q) for q in quoted} == {fixed}, f"this run tallied {fixed} fixed cases; update the docs"
