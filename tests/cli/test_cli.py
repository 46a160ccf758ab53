"""The qwenvl-min console script: demo, inspect, run, latents, convert, and its error messages."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_tokenizer import word_level_tokenizer

from qwenvl_min import Config, QwenVL
from qwenvl_min.cli.main import main
from qwenvl_min.inputs.preprocess import smart_resize
from qwenvl_min.inputs.qwen_vl_rules import fit_size
from qwenvl_min.weights_convert import our_state_dict_to_hf

CONTEXT = 160  # the test checkpoint's context, small enough to overflow with one image


def _save_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny Qwen2.5-VL written in the HF layout, converted by `qwenvl-min convert`, plus tokenizer.json."""
    root = tmp_path_factory.mktemp("ckpt")
    base = Config.preset("tiny-qwen2.5-vl")
    config = dataclasses.replace(base, text=dataclasses.replace(base.text, max_position_embeddings=CONTEXT))
    torch.manual_seed(0)
    model = QwenVL(config)
    hf_dir = root / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps(config.to_hf()))
    save_file(
        {k: v.contiguous() for k, v in our_state_dict_to_hf(config, model.state_dict()).items()},
        hf_dir / "model.safetensors",
    )
    ours = root / "ours"
    assert main(["convert", str(hf_dir), str(ours), "--no-progress"]) == 0
    word_level_tokenizer(ours / "tokenizer.json", config)
    return ours


# the 300x220 demo picture: multiples of 28 within HF's class default (3136..1003520 px), or, on
# Qwen3-VL, multiples of 32 scaled up to its published minimum of 65536 px (288x224 would be 64512)
DEMO_IMAGE = {
    "qwen2.5-vl": ("-> 308x224 px", "1 x 16 x 22", "352 rows x 1176", "merged tokens     88"),
    "qwen2-vl": ("-> 308x224 px", "1 x 16 x 22", "352 rows x 1176", "merged tokens     88"),
    "qwen3-vl": ("-> 320x224 px", "1 x 14 x 20", "280 rows x 1536", "merged tokens     70"),
}


@pytest.mark.parametrize("family", sorted(DEMO_IMAGE))
def test_demo_prints_the_token_flow_and_writes_pictures(tmp_path, capsys, family):
    assert main(["demo", "--out", str(tmp_path), "--new-tokens", "3", "--family", family]) == 0
    out = capsys.readouterr().out
    for expected in ("smart_resize", *DEMO_IMAGE[family], "delta", "generated ids"):
        assert expected in out
    if family == "qwen3-vl":  # the video's 3 temporal patches are 3 vision blocks in the prompt
        assert out.count("  video ") == 3 and "for the whole clip" in out
    for name in ("demo_input.png", "demo_tiling.png", "demo_attention.png", "demo_video_tiling.png"):
        with Image.open(tmp_path / name) as image:
            assert image.width >= 300 and image.height >= 200


@pytest.mark.parametrize(
    "size, budget",
    [((500, 333), []), ((1920, 1080), ["--max-pixels", "200000"]), ((90, 60), ["--min-pixels", "20000"])],
)
def test_inspect_reports_smart_resize_numbers(tmp_path, capsys, size, budget):
    path = _save_image(tmp_path / "in.png", *size)
    assert main(["inspect", str(path), "--png", str(tmp_path / "o.png"), *budget]) == 0
    out = capsys.readouterr().out
    kwargs = {"max_pixels": int(budget[1])} if "--max-pixels" in budget else {}
    kwargs |= {"min_pixels": int(budget[1])} if "--min-pixels" in budget else {}
    height, width = smart_resize(size[1], size[0], **kwargs)
    h, w = height // 14, width // 14
    assert f"smart_resize      {width}x{height} px" in out
    assert f"grid (t, h, w)    1 x {h} x {w}" in out
    assert f"merged tokens     {h * w // 4} " in out
    assert (tmp_path / "o.png").is_file()


def test_inspect_video(tmp_path, capsys):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for k in range(5):
            frame = np.full((96, 128, 3), 40 * k, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    assert (
        main(
            [
                "inspect",
                str(path),
                "--png",
                str(tmp_path / "v.png"),
                "--max-pixels",
                "50000",
                "--min-pixels",
                "10000",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    height, width = fit_size(96, 128, 28, 10000, 50000)
    # qwen-vl-utils' default: 2 fps of 5 frames at 4 fps is 2.5, raised to its minimum of 4 frames
    assert f"grid (t, h, w)    2 x {height // 14} x {width // 14}" in out
    assert (tmp_path / "v.png").is_file()


def test_latents_extracts_resumes_and_reports_failures(tmp_path, checkpoint, capsys):
    good = [_save_image(tmp_path / f"img{i}.png", 120 + 30 * i, 90, seed=i) for i in range(2)]
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    missing = tmp_path / "missing.png"
    out = tmp_path / "latents"
    taps = "visual.merger.input,visual.merger,text.layers.1"
    args = ["latents", "--model", str(checkpoint), "--taps", taps, "--out", str(out), "--no-progress"]

    assert main([*args, *map(str, good), str(broken), str(missing)]) == 1
    summary = capsys.readouterr().out
    assert "2 written, 0 skipped" in summary and "2 failed" in summary
    assert "broken.png" in summary and "missing.png" in summary
    assert sorted(p.name for p in out.iterdir()) == [
        "img0.safetensors",
        "img1.safetensors",
    ]  # nothing partial

    with safe_open(str(out / "img1.safetensors"), "pt") as f:
        meta = f.metadata()
        grid = json.loads(meta["grid_thw"])
        patches = grid[0] * grid[1] * grid[2]
        assert json.loads(meta["taps"]) == taps.split(",") and meta["source"] == str(good[1].resolve())
        assert meta["model"] == str(checkpoint.resolve())
        assert f.get_tensor("visual.merger.input").shape == (patches, 64)
        assert f.get_tensor("visual.merger").shape == (patches // 4, 64)
        assert f.get_tensor("text.layers.1").shape == (1, patches // 4 + 2, 64)

    (out / "img0.safetensors").unlink()
    assert main([*args, *map(str, good)]) == 0
    assert "1 written, 1 skipped" in capsys.readouterr().out


def test_run_streams_an_answer(tmp_path, checkpoint, capsys):
    image = _save_image(tmp_path / "a.png", 56, 56)
    args = [
        "run",
        "--model",
        str(checkpoint),
        "--image",
        str(image),
        "--prompt",
        "describe it",
        "--max-new-tokens",
        "5",
    ]
    assert main(args) == 0
    answer = capsys.readouterr().out.strip()
    assert 1 <= len(answer.split()) <= 5


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    return capsys.readouterr().err


def test_errors_are_one_clear_line(tmp_path, checkpoint, capsys, monkeypatch):
    assert "not found" in _error(capsys, ["inspect", str(tmp_path / "nope.png")])
    (tmp_path / "fake.png").write_text("text")
    assert "not an image" in _error(capsys, ["inspect", str(tmp_path / "fake.png")])

    image = _save_image(tmp_path / "a.png", 64, 64)
    latents = ["latents", "--out", str(tmp_path / "o"), str(image)]
    err = _error(capsys, [*latents, "--model", str(checkpoint), "--taps", "visual.blocks.99"])
    assert "unknown tap name 'visual.blocks.99'" in err

    hf_like = tmp_path / "hf_like"
    hf_like.mkdir()
    (hf_like / "config.json").write_text(json.dumps(Config.preset("tiny-qwen2-vl").to_hf()))
    err = _error(capsys, [*latents, "--model", str(hf_like), "--taps", "text.norm"])
    assert "hf_like has neither model.safetensors nor model.safetensors.index.json" in err  # HF dirs load

    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(**kwargs):
        raise LocalEntryNotFoundError("cannot reach the Hub and nothing is cached")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    err = _error(capsys, [*latents, "--model", "Qwen/Qwen2-VL-2B-Instruct", "--taps", "text.norm"])
    assert "could not be downloaded from the Hugging Face Hub (offline?" in err

    big = _save_image(tmp_path / "big.png", 448, 448)  # 256 image tokens > the 160-token context
    err = _error(capsys, ["run", "--model", str(checkpoint), "--image", str(big), "--prompt", "describe it"])
    assert re.search(r"prompt is \d+ tokens long, over the limit of 160", err)
