"""`prepare_vision(..., patch_size=16)` against qwen-vl-utils 0.0.14 itself called with
`image_patch_size=16` (what the Qwen3-VL model cards do), and the Qwen3-VL inputs made from it.

qwen-vl-utils runs unmodified with the stand-ins of tests/qwen_vl_utils_oracle.py (see
test_qwen_vl_utils_parity.py for the Qwen2.5-VL cases and what "equal" means). Here the factor is 32:
images 4 .. 16384 tokens of 32 x 32 pixels, video frames 128 .. 768 tokens with the 0.9 x 128000-token
total cap. With `return_video_metadata=True` qwen-vl-utils also returns each video's frame numbers and
rate; transformers' Qwen3VLProcessor turns them into the `<t seconds>` timestamps, and
`PreparedVision.video_timestamps()` must give the same numbers. Frame lists: qwen-vl-utils first resizes
each listed frame with `fetch_image(image_patch_size=32)`, i.e. to multiples of 64 (the quirk of
test_frame_lists_are_resized_once, doubled), so the equal cases use frames already sized in 64s.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from PIL import Image
from qwen_vl_utils_oracle import TALLY, install
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

from qwenvl_min import prepare_vision

PATCH = 16
TOKEN = (2 * PATCH) ** 2  # pixels of one vision token: 32 x 32


@pytest.fixture(scope="module")
def qvu():
    return install()


def _tally(kind: str, equal: bool) -> bool:
    compared, same = TALLY.get(kind, (0, 0))
    TALLY[kind] = (compared + 1, same + bool(equal))
    return equal


def _noise(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _ours(item):
    return prepare_vision([{"role": "user", "content": [item]}], patch_size=PATCH, max_tokens=10**9)


def _same_image(ours: Image.Image, theirs: Image.Image) -> bool:
    return ours.size == theirs.size and np.array_equal(np.asarray(ours), np.asarray(theirs.convert("RGB")))


IMAGE_CASES = [
    ((480, 640), {}),
    ((20, 20), {}),
    ((10, 2000), {}),
    ((1000, 1500), {"max_pixels": 256 * TOKEN}),
    ((97, 150), {"min_pixels": 512 * TOKEN}),
    ((1200, 1900), {}),
    ((333, 500), {"resized_height": 280, "resized_width": 420}),
]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
@pytest.mark.parametrize(("size", "options"), IMAGE_CASES)
def test_images_equal_qwen_vl_utils(qvu, mode, size, options):
    image = Image.fromarray(_noise(*size, 4), "RGBA").convert(mode)
    item = {"type": "image", "image": image, **options}
    theirs = qvu.fetch_image(item, image_patch_size=PATCH)
    assert _tally("images (patch 16)", _same_image(_ours(item).images[0], theirs))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Tiny MPEG-4 clips written with PyAV, one per (frames, fps, height, width), made on first use."""
    folder, made = tmp_path_factory.mktemp("clips16"), {}

    def clip(frames: int, fps: int, height: int = 64, width: int = 96) -> str:
        key = (frames, fps, height, width)
        if key not in made:
            path = str(folder / f"{frames}-{fps}-{height}x{width}.mp4")
            rng = np.random.default_rng(frames)
            with av.open(path, "w") as container:
                stream = container.add_stream("mpeg4", rate=fps)
                stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
                for k in range(frames):
                    base = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
                    picture = np.kron(base, np.ones((8, 8, 1), np.uint8))
                    picture[: k % height] //= 2
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
                container.mux(stream.encode())
            made[key] = path
        return made[key]

    return clip


VIDEO_CASES = [
    (10, 6, {}),
    (40, 24, {}),
    (40, 30, {"fps": 5.0}),
    (40, 30, {"nframes": 7}),
    (40, 24, {"fps": 4.0, "min_frames": 10}),
    (40, 30, {"total_pixels": 4 * 128 * TOKEN}),
    (16, 24, {"max_pixels": 200 * TOKEN}),
    (16, 24, {"min_pixels": 300 * TOKEN}),
    (16, 24, {"resized_height": 128, "resized_width": 160}),
]


@pytest.mark.parametrize(("frames", "fps", "options"), VIDEO_CASES)
def test_video_files_and_timestamps_equal_qwen_vl_utils(qvu, clips, frames, fps, options):
    item = {"type": "video", "video": clips(frames, fps), **options}
    (video, meta), sample_fps = qvu.fetch_video(
        dict(item), image_patch_size=PATCH, return_video_sample_fps=True, return_video_metadata=True
    )
    prepared = _ours(item)
    ours = prepared.videos[0]
    theirs = video.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    indices = [int(i) for i in meta["frames_indices"]]
    same = (
        list(ours.frame_indices) == indices
        and np.array_equal(ours.frames, theirs)
        and ours.sample_fps == sample_fps
        and ours.video_fps == meta["fps"]
    )
    assert _tally("video files (patch 16)", same)
    # transformers' Qwen3VLProcessor computes the prompt's timestamps from that metadata
    expected = Qwen3VLProcessor._calculate_timestamps(None, indices, meta["fps"], 2)
    assert prepared.video_timestamps() == [expected]


def test_frame_lists_and_timestamps_equal_qwen_vl_utils(qvu):
    for count, (h, w), options in [
        (3, (128, 192), {}),
        (4, (128, 128), {"sample_fps": 1.0}),
        (5, (256, 128), {"total_pixels": 3 * TOKEN * 20}),
    ]:
        frames = [Image.fromarray(_noise(h, w, seed=k)) for k in range(count)]
        item = {"type": "video", "video": frames, **options}
        (video, meta), sample_fps = qvu.fetch_video(
            dict(item), image_patch_size=PATCH, return_video_sample_fps=True, return_video_metadata=True
        )
        prepared = _ours(item)
        ours = prepared.videos[0]
        theirs = video.to(torch.uint8).permute(0, 2, 3, 1).numpy()
        same = ours.frames.shape == theirs.shape and np.array_equal(ours.frames, theirs)
        assert _tally("frame lists (patch 16)", same and ours.sample_fps == sample_fps)
        expected = Qwen3VLProcessor._calculate_timestamps(None, list(meta["frames_indices"]), meta["fps"], 2)
        assert prepared.video_timestamps() == [expected]


def test_qwen3_model_inputs_from_prepared_vision(qvu, clips):
    """The whole model-card pipeline: qwen-vl-utils' images go through transformers' image processor with
    Qwen3-VL's published settings and do_resize=False (they are already sized); ours through
    `model_inputs("qwen3")`: the same rows (mean / std 0.5, 1536 values a row), no second_per_grid_ts."""
    still = Image.fromarray(_noise(300, 200))
    content = [
        {"type": "image", "image": still, "max_pixels": 64 * TOKEN},
        {"type": "video", "video": clips(40, 24), "fps": 4.0},
        {"type": "text", "text": "what?"},
    ]
    messages = [{"role": "user", "content": content}]
    images, videos, kwargs = qvu.process_vision_info(
        messages, return_video_kwargs=True, return_video_metadata=True, image_patch_size=PATCH
    )
    assert kwargs == {"do_sample_frames": False}
    ours = prepare_vision(messages, patch_size=PATCH).model_inputs("qwen3")
    hf = Qwen2VLImageProcessorPil(
        patch_size=PATCH, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_resize=False
    )
    ref = hf(images=images, return_tensors="pt")
    assert torch.equal(ours["pixel_values"], ref["pixel_values"])
    assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
    assert "second_per_grid_ts" not in ours and ours["pixel_values_videos"].shape[1] == 3 * 2 * PATCH * PATCH
    frames = videos[0][0].to(torch.uint8).permute(0, 2, 3, 1).numpy()
    t, h, w = ours["video_grid_thw"][0].tolist()
    assert (t, h * PATCH, w * PATCH) == (len(frames) // 2, *frames.shape[1:3])
