"""Qwen3-VL video rules against transformers 5.24's own pieces (`Qwen3VLVideoProcessor`, whose module
imports without torchvision; `Qwen3VLProcessor._calculate_timestamps`).

The whole video processor cannot run here (it resizes with torchvision, which has no build beside the
pinned CPU torch), so what can run is compared exactly: frame sampling (`sample_frames`), the clip size
(the module's `smart_resize`, and `get_num_of_video_patches` for the per-frame cap), timestamps, and the
patch rows of frames sampled by HF and resized / normalized by HF's PIL image processor with Qwen3-VL's
settings (our resize reference, as for Qwen2-VL videos: test_video_processor.py). The timestamped prompt
is compared with the text `Qwen3VLProcessor.replace_video_token` writes.
"""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.video_utils import VideoMetadata

from qwenvl_min.inputs import video_qwen3
from qwenvl_min.inputs.prompts import encode
from qwenvl_min.inputs.video_qwen3 import clip_size, frame_timestamps, preprocess_video, sample_frame_indices


def _import_with_stub_torchvision(name: str):
    """transformers' video processor module, imported with an empty stand-in for torchvision (its class
    refuses to load without it; the methods compared here are numpy / torch only), then forgotten."""
    import transformers.processing_utils  # noqa: F401  (import everything that probes torchvision first)
    import transformers.video_processing_utils  # noqa: F401

    keys = ("torchvision", "torchvision.transforms", "torchvision.transforms.v2")
    saved = {k: sys.modules.get(k) for k in keys}
    stub = types.ModuleType("torchvision.transforms.v2.functional")
    sys.modules.update({k: types.ModuleType(k) for k in keys})
    sys.modules[stub.__name__] = stub
    from transformers.utils import import_utils

    available = import_utils.is_torchvision_available
    import_utils.is_torchvision_available = lambda: True
    try:
        sys.modules.pop(name, None)
        return importlib.import_module(name)
    finally:
        import_utils.is_torchvision_available = available
        for k in [*keys, stub.__name__, name]:
            sys.modules.pop(k, None)
        vars(sys.modules["transformers.models.qwen3_vl"]).pop(name.rsplit(".", 1)[1], None)
        sys.modules.update({k: v for k, v in saved.items() if v is not None})


hf_video = _import_with_stub_torchvision("transformers.models.qwen3_vl.video_processing_qwen3_vl")
HF = hf_video.Qwen3VLVideoProcessor  # used unbound: its sampling / patch methods read a few attributes


def hf_self(**overrides):
    defaults = dict(fps=2, min_frames=4, max_frames=768, max_video_tokens=768, cap_pixels_per_frame=None)
    defaults.update(size={"shortest_edge": 4096, "longest_edge": 25165824}, patch_size=16, merge_size=2)
    return types.SimpleNamespace(**{**defaults, "temporal_patch_size": 2, **overrides})


@settings(max_examples=150, deadline=None)
@given(
    total=st.integers(1, 2000),
    fps=st.sampled_from([1.0, 6.0, 24.0, 29.97, 30.0, 60.0]),
    sample_fps=st.sampled_from([0.5, 1.0, 2.0, 3.7]),
    min_frames=st.integers(1, 8),
    max_frames=st.sampled_from([4, 32, 768]),
)
def test_sampling_equals_transformers(total, fps, sample_fps, min_frames, max_frames):
    meta = VideoMetadata(total_num_frames=total, fps=fps)
    theirs = HF.sample_frames(hf_self(min_frames=min_frames, max_frames=max_frames), meta, fps=sample_fps)
    ours = sample_frame_indices(
        total, fps, sample_fps=sample_fps, min_frames=min_frames, max_frames=max_frames
    )
    assert np.array_equal(ours, theirs)
    assert np.array_equal(
        sample_frame_indices(total, fps, sample_fps=None, num_frames=7),
        HF.sample_frames(hf_self(), meta, num_frames=7),
    )


@settings(max_examples=200, deadline=None)
@given(
    frames=st.integers(2, 300),
    height=st.integers(8, 2000),
    width=st.integers(8, 2000),
    budget=st.sampled_from([(4096, 25165824), (131072, 786432), (4096, 200_000), (2_000_000, 3_000_000)]),
)
def test_clip_size_equals_transformers(frames, height, width, budget):
    low, high = budget
    if max(height, width) / min(height, width) > 200:
        return
    theirs = hf_video.smart_resize(
        frames, height, width, temporal_factor=2, factor=32, min_pixels=low, max_pixels=high
    )
    assert clip_size(frames, height, width, factor=32, min_pixels=low, max_pixels=high) == theirs


@settings(max_examples=100, deadline=None)
@given(frames=st.integers(2, 400), height=st.integers(32, 1500), width=st.integers(32, 1500))
def test_per_frame_cap_equals_transformers(frames, height, width):
    if max(height, width) / min(height, width) > 200:
        return
    kwargs = {"cap_pixels_per_frame": True, "size": {"shortest_edge": 131072, "longest_edge": 25165824}}
    patches = HF.get_num_of_video_patches(hf_self(cap_pixels_per_frame=True), frames, height, width, kwargs)
    h, w = clip_size(
        frames, height, width, factor=32, min_pixels=131072, max_pixels=25165824, cap_pixels_per_frame=True
    )
    assert -(-frames // 2) * (h // 16) * (w // 16) == patches


@settings(max_examples=100, deadline=None)
@given(
    indices=st.lists(st.integers(0, 5000), min_size=1, max_size=40),
    fps=st.sampled_from([1.0, 24.0, 29.97, 4.0]),
)
def test_timestamps_equal_transformers(indices, fps):
    indices = sorted(indices)
    assert frame_timestamps(indices, fps) == Qwen3VLProcessor._calculate_timestamps(
        None, list(indices), fps, 2
    )


def _frames(t, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _hf_rows(frames: np.ndarray, fps: float, low: int = 4096, high: int = 25165824):
    """HF samples; each kept frame is resized to HF's clip size (PIL bicubic: our resize reference) and
    rescaled / normalized by HF's PIL image processor with Qwen3-VL's constants; HF patchifies."""
    indices = HF.sample_frames(hf_self(), VideoMetadata(total_num_frames=len(frames), fps=fps))
    h, w = hf_video.smart_resize(
        len(indices), *frames.shape[1:3], temporal_factor=2, factor=32, min_pixels=low, max_pixels=high
    )
    ip = Qwen2VLImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3, patch_size=16)
    chw = []
    for i in indices:
        resized = np.asarray(Image.fromarray(frames[i]).resize((w, h), Image.Resampling.BICUBIC))
        chw.append(
            ip.normalize(ip.rescale(np.moveaxis(resized, -1, 0), 1 / 255), ip.image_mean, ip.image_std)
        )
    video = torch.from_numpy(np.stack(chw))[None]
    rows, t, gh, gw = HF.patchify(hf_self(), video, patch_size=16, merge_size=2, temporal_patch_size=2)
    return rows[0], [t, gh, gw], indices


@pytest.mark.parametrize(("t", "h", "w", "fps"), [(9, 64, 96, 4.0), (30, 100, 180, 24.0), (5, 20, 40, 2.0)])
def test_pixels_grid_and_timestamps_equal_transformers(t, h, w, fps):
    frames = _frames(t, h, w)
    ours, seconds = preprocess_video(frames, fps=fps)
    rows, grid, indices = _hf_rows(frames, fps)
    torch.testing.assert_close(ours["pixel_values_videos"], rows, rtol=0, atol=0)
    assert ours["video_grid_thw"].tolist() == [grid] and "second_per_grid_ts" not in ours
    assert seconds == Qwen3VLProcessor._calculate_timestamps(None, indices.tolist(), fps, 2)


def test_a_file_equals_its_decoded_frames(tmp_path):
    av = pytest.importorskip("av")
    path = str(tmp_path / "clip.mp4")
    rng = np.random.default_rng(0)
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.height, stream.width, stream.pix_fmt = 64, 96, "yuv420p"
        for _ in range(25):
            picture = np.kron(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())
    with av.open(path) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    from_file, seconds = preprocess_video(path)
    from_frames, seconds_frames = preprocess_video(decoded, fps=12.0)
    assert all(torch.equal(from_file[k], from_frames[k]) for k in from_file)
    assert seconds == seconds_frames and len(seconds) == from_file["video_grid_thw"][0, 0]


def test_the_timestamped_prompt_equals_transformers(tmp_path):
    """encode's expansion is the text transformers' replace_video_token writes (only the pad replaced)."""
    from tiny_tokenizer import word_level_tokenizer
    from tokenizers import Tokenizer

    from qwenvl_min import Config

    word_level_tokenizer(tmp_path / "tokenizer.json", Config.preset("tiny-qwen3-vl"))
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    grid, indices, fps = torch.tensor([[3, 4, 6]]), [0, 3, 5, 8, 11], 4.0
    stamps = frame_timestamps(indices, fps)
    hf = types.SimpleNamespace(
        video_processor=types.SimpleNamespace(merge_size=2, temporal_patch_size=2),
        vision_start_token="<|vision_start|>",
        vision_end_token="<|vision_end|>",
        video_token="<|video_pad|>",
        _calculate_timestamps=lambda *a: Qwen3VLProcessor._calculate_timestamps(None, *a),
    )
    meta = VideoMetadata(total_num_frames=12, fps=fps, frames_indices=indices)
    expected = Qwen3VLProcessor.replace_video_token(hf, {"video_grid_thw": grid, "video_metadata": [meta]}, 0)
    text = "a<|vision_start|><|video_pad|><|vision_end|>b"
    ours = encode(tokenizer, text, video_grid_thw=grid, video_timestamps=[stamps])["input_ids"][0]
    want = tokenizer.encode(text.replace("<|video_pad|>", expected)).ids
    assert ours.tolist() == want
    assert expected.startswith("<0.4 seconds><|vision_start|>") and "<1.6 seconds>" in expected


def test_one_frame_and_missing_fps_are_refused():
    with pytest.raises(ValueError, match="needs at least 2 frames"):
        preprocess_video(_frames(1, 64, 64), fps=2.0)
    with pytest.raises(ValueError, match="fps is required"):
        preprocess_video(_frames(4, 64, 64))
    assert video_qwen3.SAMPLE_FPS == 2.0
