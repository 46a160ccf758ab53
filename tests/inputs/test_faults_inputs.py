"""Fault injection on `latents`, `run`, `inspect` and the library's inputs: kill -9 and SIGTERM while a
latents file is written, resume that checks what an existing output holds, a full disk, decompression
bombs and resource budgets (refused before allocation), NaN/inf numbers and tensors, corrupt shards and
tokenizers, devices that do not exist. Every refusal is one `error:` line or one clear ValueError."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from faults import Paused, listing, tiny_hf_checkpoint
from PIL import Image
from tiny_tokenizer import word_level_tokenizer

from qwenvl_min import Config, get_rope_index
from qwenvl_min.cli.main import main
from qwenvl_min.hf.load import load
from qwenvl_min.inputs.preprocess import preprocess_image, preprocess_video, sample_frame_indices
from qwenvl_min.utils.devices import check_device
from qwenvl_min.utils.validate import check_finite, check_sampling
from qwenvl_min.weights_convert import CheckpointError, convert_checkpoint

TAPS = "visual.merger.input,text.layers.1"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    ours = convert_checkpoint(tiny_hf_checkpoint(root / "hf", context=160), root / "ours")
    word_level_tokenizer(ours / "tokenizer.json", Config.from_dict(_our_config(ours)))
    return ours


def _our_config(directory) -> dict:
    data = json.loads((directory / "config.json").read_text())
    return {k: v for k, v in data.items() if k not in ("format", "format_version")}


def _image(path, width=64, height=56, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _latents(checkpoint, out, *inputs, taps=TAPS):
    return [
        "latents",
        "--model",
        str(checkpoint),
        "--taps",
        taps,
        "--out",
        str(out),
        "--no-progress",
        *map(str, inputs),
    ]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ---- latents: kills, signals, resume, disk -----------------------------------------------------------
def test_latents_kill9_leaves_a_temporary_file_the_next_run_removes(checkpoint, tmp_path, capsys):
    image, out = _image(tmp_path / "a.png"), tmp_path / "feats"
    child = Paused(
        ["-m", "qwenvl_min.cli", *_latents(checkpoint, out, image)], "latents.before_rename", tmp_path / "p"
    )
    child.proc.kill()
    child.finish()
    assert [n for n in listing(out) if n.endswith(".tmp")], listing(out)
    assert main(_latents(checkpoint, out, image)) == 0
    assert listing(out) == ["a.safetensors"]


def test_latents_sigterm_removes_the_temporary_file(checkpoint, tmp_path):
    image, out = _image(tmp_path / "a.png"), tmp_path / "feats"
    child = Paused(
        ["-m", "qwenvl_min.cli", *_latents(checkpoint, out, image)], "latents.before_rename", tmp_path / "p"
    )
    child.proc.send_signal(signal.SIGTERM)
    code, _, err = child.finish()
    assert code == 143 and "error: terminated" in err
    assert not out.exists()  # nothing partial, and the OUT this run made is gone again


def test_latents_resume_checks_what_the_existing_output_holds(checkpoint, tmp_path, capsys):
    images = [_image(tmp_path / f"i{k}.png", seed=k) for k in range(3)]
    out = tmp_path / "feats"
    assert main(_latents(checkpoint, out, *images[:2])) == 0
    capsys.readouterr()
    before = (out / "i0.safetensors").read_bytes()
    (out / "i2.safetensors").write_bytes(b"")  # a zero-byte file is not a finished output

    assert main(_latents(checkpoint, out, *images, taps="text.norm")) == 1
    summary = capsys.readouterr().out
    assert "0 written, 0 skipped" in summary and "3 failed" in summary
    assert "was made with other settings (taps: ['visual.merger.input', 'text.layers.1'] there" in summary
    assert "i2.safetensors already exists but is not a complete latents file" in summary
    assert (out / "i0.safetensors").read_bytes() == before and (out / "i2.safetensors").stat().st_size == 0

    assert main(_latents(checkpoint, out, *images[:2])) == 0  # the same settings resume
    assert "0 written, 2 skipped" in capsys.readouterr().out
    assert (out / "i0.safetensors").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_latents_stops_with_one_line_when_the_disk_is_full(checkpoint, tmp_path, capsys):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        images = [_image(tmp_path / f"i{k}.png", 448, 448, seed=k) for k in range(2)]
        assert main(_latents(checkpoint, mount, *images, taps="visual.merger.input")) == 1
        err = _one_error_line(capsys)
        assert "No space left on device" in err and "rerun to resume" in err
        assert listing(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_decompression_bomb_is_one_failure_in_a_batch(checkpoint, tmp_path, capsys, monkeypatch):
    good, bomb = _image(tmp_path / "good.png"), _image(tmp_path / "bomb.png", 300, 300)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200 * 200)  # bomb.png is over it (x2: PIL's own error)
    out = tmp_path / "feats"
    assert main(_latents(checkpoint, out, bomb, good)) == 1
    summary = capsys.readouterr().out
    assert "1 written" in summary and "decoding limit" in summary and "MAX_IMAGE_PIXELS" in summary
    assert listing(out) == ["good.safetensors"]


# ---- budgets, checked before allocation -----------------------------------------------------------------
def test_huge_min_pixels_is_refused_before_allocation(tmp_path, capsys):
    image = _image(tmp_path / "tiny.png", 30, 30)
    assert main(["inspect", str(image), "--min-pixels", str(10**12), "--max-pixels", str(10**12)]) == 1
    err = _one_error_line(capsys)
    assert "vision tokens" in err and "--max-vision-tokens" in err and "--max-pixels" in err
    assert main(["inspect", str(image), "--max-vision-tokens", "0"]) == 1
    assert "max_tokens must be >= 1" in _one_error_line(capsys)


def test_a_long_video_is_refused_from_its_frame_count(monkeypatch):
    frames = np.zeros((1000, 28, 28, 3), dtype=np.uint8)
    resized = []
    import qwenvl_min.inputs.preprocess as processor

    real = processor._resize_rgb
    monkeypatch.setattr(processor, "_resize_rgb", lambda *a: resized.append(1) or real(*a))
    with pytest.raises(ValueError, match=r"the video would be 72000 vision tokens.*sample fewer frames"):
        preprocess_video(frames, fps=30)
    assert resized == []  # refused before a single frame was resized
    assert preprocess_video(frames, fps=30, num_frames=8)["video_grid_thw"].tolist() == [[4, 24, 24]]


def test_inspect_never_overwrites_its_input(tmp_path, capsys):
    image = _image(tmp_path / "photo.png")
    before = image.read_bytes()
    assert main(["inspect", str(image), "--png", str(image), "--force"]) == 1
    assert "is the input file" in _one_error_line(capsys)
    assert image.read_bytes() == before


# ---- NaN / inf / nonsense numbers ---------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, -2.0, 0.0])
def test_fps_and_seconds_per_grid_must_be_finite_and_positive(bad):
    frames = np.zeros((4, 56, 56, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="fps must be"):
        preprocess_video(frames, fps=bad)
    with pytest.raises(ValueError, match="sample_fps must be"):
        sample_frame_indices(10, 2.0, sample_fps=bad)
    config = Config.preset("tiny-qwen2.5-vl")
    ids = torch.tensor([[config.vision_start_token_id, *[config.video_token_id] * 4, 1]])
    with pytest.raises(ValueError, match="second_per_grid_ts must be finite and positive"):
        get_rope_index(config, ids, video_grid_thw=torch.tensor([[1, 4, 4]]), second_per_grid_ts=[bad])


def test_nan_pixels_and_sampling_arguments_are_named():
    pixels = torch.zeros(4, 1176)
    pixels[2, 7] = math.nan
    with pytest.raises(
        ValueError, match=r"pixel_values holds 1 NaN/inf value\(s\) \(first at index \(2, 7\)\)"
    ):
        check_finite("pixel_values", pixels)
    for kwargs, match in [
        ({"temperature": math.nan}, "temperature must be a finite number"),
        ({"temperature": 1.0, "top_k": 2.5}, "top_k must be a whole number"),
        ({"temperature": 1.0, "top_p": math.nan}, "top_p must be a finite number"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ]:
        args = {"max_new_tokens": 4, "temperature": 0.0, "top_k": None, "top_p": None} | kwargs
        with pytest.raises(ValueError, match=match):
            check_sampling(**args)


def test_run_refuses_nan_sampling_arguments(checkpoint, tmp_path, capsys):
    argv = ["run", "--model", str(checkpoint), "--prompt", "describe it", "--temperature", "nan"]
    assert main(argv) == 1
    assert "temperature must be a finite number" in _one_error_line(capsys)


# ---- corrupt or NaN weights, tokenizers, devices -------------------------------------------------------
def _poison(directory, value: float, key: str = "text.norm.weight") -> None:
    """Overwrite one tensor's bytes in place (file size and header unchanged)."""
    from qwenvl_min.weights_convert.safetensors_io import read_header

    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shard = directory / index["weight_map"][key]
    info = read_header(shard).tensors[key]
    data = bytearray(shard.read_bytes())
    count = (info.end - info.start) // 4
    data[info.start : info.end] = torch.full((count,), value, dtype=torch.float32).numpy().tobytes()
    shard.write_bytes(bytes(data))


def test_run_with_nan_weights_fails_instead_of_answering(checkpoint, tmp_path, capsys):
    broken = shutil.copytree(checkpoint, tmp_path / "broken")
    _poison(broken, math.nan)
    argv = ["run", "--model", str(broken), "--prompt", "describe it", "--max-new-tokens", "3"]
    assert main(argv) == 1
    assert "NaN/inf" in _one_error_line(capsys)
    assert main([*argv, "--verify"]) == 1
    assert "sha256 changed" in _one_error_line(capsys)


def test_a_rewritten_shard_header_is_caught_by_every_load(checkpoint, tmp_path):
    broken = shutil.copytree(checkpoint, tmp_path / "broken")
    shard = sorted(broken.glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    start = data.index(b'"format":"pt"')
    data[start : start + 13] = b'"format":"PT"'  # still a valid header, not the one converted
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="size or header sha256 changed"):
        load(broken)


def test_a_corrupt_tokenizer_is_one_line(checkpoint, tmp_path, capsys):
    broken = shutil.copytree(checkpoint, tmp_path / "broken")
    (broken / "tokenizer.json").write_text('{"version": "1.0", "model": 17}')
    assert main(["run", "--model", str(broken), "--prompt", "describe it"]) == 1
    assert "is not a tokenizer.json the tokenizers library can read" in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("device", "match"),
    [("bogus", "unknown device 'bogus'"), ("meta", "holds no data"), ("cuda:7", "cuda")],
)
def test_device_errors(checkpoint, capsys, device, match):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(ValueError, match=match):
        check_device(device, option="device")
    assert (
        main(
            [
                "latents",
                "--model",
                str(checkpoint),
                "--taps",
                "text.norm",
                "--out",
                "x",
                "--device",
                device,
                "y.png",
            ]
        )
        == 1
    )
    assert match.split("'")[0].strip() in _one_error_line(capsys)


def test_empty_and_all_padding_inputs():
    with pytest.raises(ValueError, match="no images given"):
        preprocess_image([])
    with pytest.raises(ValueError, match="image is empty"):
        preprocess_image(np.zeros((0, 5, 3), dtype=np.uint8))
    from qwenvl_min import QwenVL
    from qwenvl_min.generate import generate

    model = QwenVL(Config.preset("tiny-qwen2-vl")).eval()
    ids = torch.ones(2, 3, dtype=torch.int64)
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    with pytest.raises(ValueError, match="no valid tokens"):
        generate(model, ids, attention_mask=mask, max_new_tokens=2)


def test_exit_codes_of_the_converter_cli(tmp_path):
    run = [sys.executable, "-m", "qwenvl_min.weights_convert"]
    assert subprocess.run(run, capture_output=True).returncode == 2  # usage
    done = subprocess.run(
        [*run, str(tmp_path / "nowhere"), str(tmp_path / "out")], capture_output=True, text=True
    )
    assert done.returncode == 1 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
