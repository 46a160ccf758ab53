"""Video preprocessing against transformers' pieces.

HF's `Qwen2VLVideoProcessor` is a torchvision-only class and torchvision cannot be installed here, so the
whole processor cannot run. We compare, exactly, what can run:
- frame sampling: HF's `Qwen2VLVideoProcessor.sample_frames` (imported with a stub torchvision module; the
  method itself is torch-only);
- patch layout and last-frame padding: HF's `Qwen2VLVideoProcessor.patchify` on frames that HF's PIL image
  processor resized, rescaled and normalized (our resize reference; HF's video resize is torchvision's
  antialiased bicubic and differs by a few uint8 levels, see docs/design.md, "Traps we found");
- frame size: HF's smart_resize with the video processor's default budget (128·28² .. 768·28² per frame);
- second_per_grid_ts: 2 / HF's `VideoMetadata.sampled_fps`;
- file decoding: HF's `read_video_pyav` (frames and fps) on the same file.
"""

import importlib
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.image_utils import SizeDict
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.video_utils import VideoMetadata, read_video_pyav

from qwenvl_min.inputs.preprocess import (
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    concat_outputs,
    preprocess_video,
    sample_frame_indices,
    smart_resize,
)

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def hf_video_cls():
    """HF's video processor class, imported with an empty stand-in for torchvision (removed afterwards)."""
    import transformers.processing_utils  # noqa: F401  (import everything that probes torchvision first)
    import transformers.video_processing_utils  # noqa: F401

    name = "transformers.models.qwen2_vl.video_processing_qwen2_vl"
    saved = {
        k: sys.modules.get(k) for k in ("torchvision", "torchvision.transforms", "torchvision.transforms.v2")
    }
    stub = types.ModuleType("torchvision.transforms.v2.functional")
    parents = {k: types.ModuleType(k) for k in saved}
    sys.modules.update(parents)
    sys.modules[stub.__name__] = stub
    try:
        yield importlib.import_module(name).Qwen2VLVideoProcessor
    finally:
        for k in [*saved, stub.__name__, name]:
            sys.modules.pop(k, None)
        vars(sys.modules["transformers.models.qwen2_vl"]).pop("video_processing_qwen2_vl", None)
        sys.modules.update({k: v for k, v in saved.items() if v is not None})


def _hf_self(**overrides):
    return types.SimpleNamespace(
        **{
            "num_frames": None,
            "fps": None,
            "temporal_patch_size": 2,
            "min_frames": 4,
            "max_frames": 768,
            **overrides,
        }
    )


def _frames(t, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _hf_pixels(hf_video_cls, frames, min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS):
    """HF's PIL image processor steps per frame, then HF's video patchify (which pads the frame count)."""
    ip = Qwen2VLImageProcessorPil()
    size = SizeDict(shortest_edge=min_pixels, longest_edge=max_pixels)
    chw = []
    for frame in frames:
        x = ip.resize(np.moveaxis(frame, -1, 0), size=size, resample=ip.resample, factor=28)
        chw.append(ip.normalize(ip.rescale(x, 1 / 255), ip.image_mean, ip.image_std))
    video = torch.from_numpy(np.stack(chw))[None]
    rows, t, h, w = hf_video_cls.patchify(
        _hf_self(), video, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    return rows[0], [t, h, w]


@pytest.mark.parametrize(("t", "h", "w"), [(9, 56, 84), (4, 100, 180), (1, 60, 60)])
def test_pixels_and_grid_match_hf(hf_video_cls, t, h, w):
    frames = _frames(t, h, w)
    ours = preprocess_video(frames, fps=2.0)
    rows, grid = _hf_pixels(hf_video_cls, frames)
    torch.testing.assert_close(ours["pixel_values_videos"], rows, rtol=0, atol=0)
    assert ours["video_grid_thw"].tolist() == [grid]
    rh, rw = smart_resize(h, w, min_pixels=128 * 28 * 28, max_pixels=768 * 28 * 28)
    assert grid == [(t + 1) // 2, rh // 14, rw // 14]
    if (t, h, w) == (9, 56, 84):
        assert grid == [5, 20, 28]  # small videos are upscaled to the per-frame minimum pixel budget


def test_frame_list_equals_array():
    frames = _frames(5, 40, 70, seed=1)
    pil = [Image.fromarray(f) for f in frames]
    a, b = preprocess_video(frames, fps=10), preprocess_video(pil, fps=10)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("total", [1, 2, 7, 9, 30, 61, 100, 299, 1000, 2000])
@pytest.mark.parametrize("fps", [2.0, 24.0, 29.97, 30.0])
@pytest.mark.parametrize("sample_fps", [None, 0.5, 1.0, 2.0, 4.5])
def test_sampling_matches_hf(hf_video_cls, total, fps, sample_fps):
    metadata = VideoMetadata(total_num_frames=total, fps=fps)
    try:
        if sample_fps is None:  # HF's default do_sample_frames=False: every frame, sample_frames not called
            expected = np.arange(total)
        else:
            expected = hf_video_cls.sample_frames(_hf_self(), metadata, fps=sample_fps).numpy()
    except (ValueError, ZeroDivisionError):  # HF divides by zero when it would sample 0 frames
        with pytest.raises(ValueError, match="cannot sample"):
            sample_frame_indices(total, fps, sample_fps=sample_fps)
        return
    ours = sample_frame_indices(total, fps, sample_fps=sample_fps)
    # HF's fp32 arange sometimes adds one index equal to `total` (out of range); we drop it.
    expected = expected[expected < total]
    assert np.array_equal(ours, expected)
    if total > 300:  # the rest is the same arithmetic; keep the test fast
        return
    metadata.frames_indices = expected.tolist()
    out = preprocess_video(
        np.zeros((total, 28, 28, 3), np.uint8), fps=fps, sample_fps=sample_fps, min_pixels=784
    )
    assert out["second_per_grid_ts"].item() == pytest.approx(2 / metadata.sampled_fps, rel=1e-6)


@pytest.mark.parametrize("num_frames", [2, 3, 5, 8, 16])
def test_num_frames_sampling_matches_hf(hf_video_cls, num_frames):
    expected = hf_video_cls.sample_frames(
        _hf_self(), VideoMetadata(total_num_frames=16, fps=8.0), num_frames=num_frames
    )
    assert np.array_equal(sample_frame_indices(16, 8.0, num_frames=num_frames), expected.numpy())


def test_second_per_grid_ts():
    frames, small = _frames(60, 28, 28), {"min_pixels": 784}
    assert preprocess_video(frames, fps=2.0, **small)["second_per_grid_ts"].tolist() == [1.0]
    assert preprocess_video(frames, fps=30.0, **small)["second_per_grid_ts"].item() == pytest.approx(2 / 30)
    out = preprocess_video(
        frames, fps=30.0, sample_fps=2.0, **small
    )  # 60 frames at 30 fps, 2 per second -> 4 frames
    assert out["video_grid_thw"][0, 0].item() == 2 and out["second_per_grid_ts"].tolist() == [1.0]


def _write_video(path, frames, fps=10):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_video_file_matches_hf_decoding(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_video(path, _frames(12, 64, 96), fps=6)
    ours = preprocess_video(path, sample_fps=2.0)  # 12 frames at 6 fps, 2 per second -> 4 frames

    def hf_sampler(metadata, **kwargs):
        return sample_frame_indices(metadata.total_num_frames, metadata.fps, sample_fps=2.0)

    frames, metadata = read_video_pyav(str(path), hf_sampler)
    assert metadata.fps == 6.0 and metadata.total_num_frames == 12
    expected = preprocess_video(frames, fps=metadata.fps * len(frames) / 12)  # the sampled rate
    assert all(torch.equal(ours[k], expected[k]) for k in ours)
    assert ours["second_per_grid_ts"].tolist() == [pytest.approx(2 / metadata.sampled_fps)]
    rh, rw = smart_resize(64, 96, min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS)
    assert preprocess_video(path)["video_grid_thw"].tolist() == [[6, rh // 14, rw // 14]]


def test_concat_outputs():
    a = preprocess_video(_frames(2, 140, 140), fps=2, min_pixels=784)
    b = preprocess_video(_frames(4, 196, 140), fps=4, min_pixels=784)
    both = concat_outputs([a, b])
    assert both["video_grid_thw"].tolist() == [[1, 10, 10], [2, 14, 10]]
    assert both["second_per_grid_ts"].tolist() == [1.0, 0.5]
    assert both["pixel_values_videos"].shape == (100 + 280, 1176)


def test_fps_is_required_for_frames():
    with pytest.raises(ValueError, match="fps is required"):
        preprocess_video(_frames(4, 28, 28))


@pytest.mark.parametrize("empty", [[], np.zeros((0, 28, 28, 3), np.uint8)])
def test_video_with_no_frames(empty):
    with pytest.raises(ValueError, match="no frames"):
        preprocess_video(empty, fps=2)


def test_missing_video_file():
    with pytest.raises(FileNotFoundError, match="video file not found"):
        preprocess_video("/nonexistent/clip.mp4")


def test_file_that_is_not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("not a video at all")
    with pytest.raises(ValueError, match="not a video, or corrupt"):
        preprocess_video(path)


def test_corrupt_video_file(tmp_path):
    path = tmp_path / "cut.mp4"
    _write_video(path, _frames(8, 64, 64))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])  # mp4 index lives at the end
    with pytest.raises(ValueError, match="not a video, or corrupt|no decodable frames"):
        preprocess_video(path)


def test_too_few_frames_to_sample():
    with pytest.raises(ValueError, match="cannot sample 0 frames"):
        preprocess_video(_frames(1, 28, 28), fps=30, sample_fps=2)


def test_mixed_frame_sizes():
    with pytest.raises(ValueError, match="one size"):
        preprocess_video([np.zeros((28, 28, 3), np.uint8), np.zeros((56, 28, 3), np.uint8)], fps=2)
