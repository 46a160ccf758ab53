"""The CLI's video flags (--fps, --num-frames, --max-frames, --total-pixels) and the per-kind pixel flags.

Videos follow qwen-vl-utils' rules by default; the expected grids come from qwen-vl-utils itself (with the
I/O stand-ins of tests/qwen_vl_utils_oracle.py) given the same options as message keys.
"""

from __future__ import annotations

import re

import av
import numpy as np
import pytest
from qwen_vl_utils_oracle import install
from test_cli import _error, _save_image, checkpoint  # noqa: F401  (checkpoint: the tiny-model fixture)

from qwenvl_min.cli.main import main
from qwenvl_min.inputs.preprocess import smart_resize


@pytest.fixture(scope="module")
def qvu():
    return install()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.height, stream.width, stream.pix_fmt = 48, 64, "yuv420p"
        for _ in range(48):  # 2 s
            frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


def _inspect(capsys, tmp_path, path, *flags):
    assert main(["inspect", path, "--png", str(tmp_path / "o.png"), *flags]) == 0
    out = capsys.readouterr().out
    return [int(x) for x in re.search(r"grid \(t, h, w\)\s+(\d+) x (\d+) x (\d+)", out).groups()], out


@pytest.mark.parametrize(
    ("flags", "options"),
    [
        ([], {}),
        (["--fps", "6"], {"fps": 6.0}),
        (["--num-frames", "6"], {"nframes": 6}),
        (["--fps", "12", "--max-frames", "8"], {"fps": 12.0, "max_frames": 8}),
        (["--total-pixels", str(8 * 64 * 784)], {"total_pixels": 8 * 64 * 784}),
        (["--max-pixels", "20000"], {"max_pixels": 20000, "min_pixels": 20000}),
        (["--min-pixels", "300000"], {"min_pixels": 300000}),
    ],
)
def test_inspect_video_flags_equal_qwen_vl_utils(qvu, clip, tmp_path, capsys, flags, options):
    grid, _ = _inspect(capsys, tmp_path, clip, *flags)
    video = qvu.fetch_video({"type": "video", "video": clip, **options})
    assert grid == [video.shape[0] // 2, video.shape[2] // 14, video.shape[3] // 14]


def test_default_is_two_frames_per_second(clip, tmp_path, capsys):
    grid, out = _inspect(capsys, tmp_path, clip)
    assert grid[0] == 2 and "frames used       4" in out  # 2 s at 2 fps
    assert "1 s per temporal patch" in out  # second_per_grid_ts = 2 / 2 fps


def test_max_pixels_below_the_image_minimum_lowers_it(tmp_path, capsys):
    path = str(_save_image(tmp_path / "a.png", 300, 200))
    grid, out = _inspect(capsys, tmp_path, path, "--max-pixels", "2000")
    height, width = smart_resize(200, 300, min_pixels=2000, max_pixels=2000)
    assert grid == [1, height // 14, width // 14] and "pixel budget 2000..2000" in out


def test_fps_with_num_frames_is_one_line(clip, tmp_path, capsys):
    err = _error(
        capsys, ["inspect", clip, "--png", str(tmp_path / "o.png"), "--fps", "2", "--num-frames", "4"]
    )
    assert "either fps" in err and "nframes" in err


def test_over_long_video_prompt_names_the_flags(checkpoint, clip, capsys):  # noqa: F811
    err = _error(capsys, ["run", "--model", str(checkpoint), "--video", clip, "--prompt", "what happens"])
    assert re.search(r"prompt is \d+ tokens long, over the limit of 160", err)
    for flag in ("--max-pixels", "--fps", "--num-frames", "--max-frames", "--total-pixels"):
        assert flag in err


def test_help_explains_the_precedence(capsys):
    with pytest.raises(SystemExit):
        main(["inspect", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "checkpoint's processor config" in text and "lowers that minimum too" in text
    for flag in ("--fps", "--num-frames", "--max-frames", "--total-pixels"):
        assert flag in text


def test_latents_of_a_video_record_its_sampling(qvu, checkpoint, clip, tmp_path, capsys):  # noqa: F811
    import json

    from safetensors import safe_open

    out = tmp_path / "latents"
    args = [
        "latents",
        "--model",
        str(checkpoint),
        "--taps",
        "visual.merger",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main([*args, "--num-frames", "4", "--max-pixels", "20000", clip]) == 0
    with safe_open(str(out / "clip.safetensors"), "pt") as f:
        meta = f.metadata()
    video = qvu.fetch_video(
        {"type": "video", "video": clip, "nframes": 4, "max_pixels": 20000, "min_pixels": 20000}
    )
    assert json.loads(meta["grid_thw"]) == [video.shape[0] // 2, video.shape[2] // 14, video.shape[3] // 14]
    settings = json.loads(meta["settings"])
    assert settings["num_frames"] == 4 and settings["video_rules"] == "qwen-vl-utils 0.0.14"
    capsys.readouterr()
    assert main([*args, "--num-frames", "6", "--max-pixels", "20000", clip]) == 1  # other frames: not reused
    assert "num_frames: 4 there, 6 now" in capsys.readouterr().out
