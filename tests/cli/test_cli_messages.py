"""The careless mistakes a new user makes on the command line, each answered by one `error:` line that says
what is wrong and what to do, with nothing written: a directory or a picture given as a video, a one-frame
video, an empty prompt, a dtype spelled another way, a usage error, the Triton kernels asked for where they
cannot run, `convert` refusing to replace its output."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from media_files import write_mp4
from PIL import Image
from test_cli import _save_image, checkpoint  # noqa: F401  (the converted tiny checkpoint fixture)

from qwenvl_min.cli.main import main


def _one_line_error(capsys, argv: list[str], code: int = 1) -> str:
    if code == 2:  # a usage error: argparse exits
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
    else:
        assert main(argv) == code
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: "), captured.err
    assert captured.out == ""
    return captured.err.strip()


def _run(checkpoint, *extra: str) -> list[str]:  # noqa: F811
    return ["run", "--model", str(checkpoint), "--max-new-tokens", "2", *extra]


def test_a_directory_is_named_a_directory(tmp_path, checkpoint, capsys):  # noqa: F811
    folder = tmp_path / "pictures"
    folder.mkdir()
    err = _one_line_error(capsys, _run(checkpoint, "--image", str(folder), "--prompt", "hi"))
    assert err == f"error: expected an image file, got a directory: {str(folder)!r}"
    err = _one_line_error(capsys, _run(checkpoint, "--video", str(folder), "--prompt", "hi"))
    assert err == f"error: expected a video file, got a directory: {str(folder)!r}"
    err = _one_line_error(capsys, _run(checkpoint, "--image", str(tmp_path / "nope.png"), "--prompt", "hi"))
    assert err == f"error: image file not found: {str(tmp_path / 'nope.png')!r}"
    for command in (["inspect", str(folder)], ["attend", "--model", str(checkpoint), "--image", str(folder)]):
        extra = ["--prompt", "hi", "--out", str(tmp_path / "maps")] if command[0] == "attend" else []
        err = _one_line_error(capsys, [*command, *extra])
        assert "expected an image file, got a directory" in err  # the same words from every command
    assert not (tmp_path / "maps").exists()


def test_a_picture_or_a_one_frame_clip_as_a_video(tmp_path, checkpoint, capsys):  # noqa: F811
    pytest.importorskip("av")

    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (80, 60), (200, 30, 30)).save(photo)
    err = _one_line_error(capsys, _run(checkpoint, "--video", str(photo), "--prompt", "hi"))
    assert err == f"error: {str(photo)!r} is a still image (jpeg_pipe), not a video; pass it as an image"
    clip = write_mp4(tmp_path / "one.mp4", frames=1)
    for flags in ([], ["--num-frames", "2"], ["--fps", "10"]):  # no sampling flag can fix it, and it says so
        err = _one_line_error(capsys, _run(checkpoint, "--video", str(clip), "--prompt", "hi", *flags))
        assert err.startswith("error: a video needs at least 2 frames") and "this one has 1" in err
        assert "pass a single picture as an image instead" in err and "choose another fps" not in err
    err = _one_line_error(capsys, ["inspect", str(clip)])
    assert err.startswith("error: a video needs at least 2 frames")


@pytest.mark.parametrize("prompt", ["", "   "])
def test_an_empty_prompt_is_refused(tmp_path, checkpoint, capsys, prompt):  # noqa: F811
    image = _save_image(tmp_path / "a.png", 56, 56)
    err = _one_line_error(capsys, _run(checkpoint, "--image", str(image), "--prompt", prompt))
    assert err == 'error: --prompt is empty; give the question, e.g. --prompt "Describe this image."'
    err = _one_line_error(capsys, _run(checkpoint, "--image", str(image)), code=2)  # no --prompt at all
    assert "the following arguments are required: --prompt" in err


def test_dtype_spellings_and_one_line_usage_errors(tmp_path, checkpoint, capsys):  # noqa: F811
    image = _save_image(tmp_path / "a.png", 56, 56)
    for spelling in ("fp16", "half", "bf16", "BFloat16", "torch.float32"):
        assert main([*_run(checkpoint, "--image", str(image), "--prompt", "hi"), "--dtype", spelling]) == 0
        capsys.readouterr()
    err = _one_line_error(capsys, [*_run(checkpoint, "--prompt", "hi"), "--dtype", "int8"], code=2)
    assert err == (
        "error: argument --dtype: invalid dtype 'int8': use one of float32 (fp32, float), bfloat16 (bf16), "
        "float16 (fp16, half), float64 (fp64, double) (`qwenvl-min run --help` lists the options)"
    )
    err = _one_line_error(capsys, ["inspect", "x.png", "--family", "qwen9"], code=2)
    assert "invalid choice: 'qwen9'" in err and "usage:" not in err
    err = _one_line_error(capsys, ["frobnicate"], code=2)
    assert "invalid choice: 'frobnicate'" in err and err.endswith("(`qwenvl-min --help` lists the options)")


def test_convert_names_its_own_flag_and_command(tmp_path, checkpoint, capsys):  # noqa: F811
    hf = tmp_path / "hf"
    assert main(["convert", str(checkpoint), str(hf), "--to-hf", "--no-progress"]) == 0
    capsys.readouterr()
    err = _one_line_error(capsys, ["convert", str(checkpoint), str(hf), "--to-hf"])
    assert err == f"error: {hf} already exists; pass --force to replace it"  # not "--force (force=True)"
    err = _one_line_error(capsys, ["convert", str(hf), str(tmp_path / "again"), "--to-hf"])
    assert "is already a Hugging Face checkpoint" in err and "python -m" not in err
    err = _one_line_error(capsys, ["convert", str(checkpoint), str(tmp_path / "again")])
    assert "already a qwenvl-min checkpoint" in err and "`qwenvl-min convert --to-hf`" in err
    assert not (tmp_path / "again").exists()


def test_triton_kernels_where_they_cannot_run_are_one_line(tmp_path):
    """QWENVL_MIN_KERNELS=1 on a CPU without the Triton interpreter (set before start, so a subprocess)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"QWENVL_MIN_KERNELS": "1"}
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "qwenvl_min", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        "error: QWENVL_MIN_KERNELS=1 asks for the Triton kernels, which cannot run on cpu here: CPU tensors need "
        "the Triton interpreter; set TRITON_INTERPRET=1 before importing qwenvl_min.kernels (or move the "
        "tensors to CUDA); or unset QWENVL_MIN_KERNELS (or set it to 0) for the torch path\n"
    )
    assert not out.exists()


def test_a_bad_kernels_variable_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QWENVL_MIN_KERNELS", "yes")
    err = _one_line_error(capsys, ["demo", "--out", str(tmp_path / "demo")])
    assert err == "error: QWENVL_MIN_KERNELS must be 0, 1 or unset, got 'yes'"
    assert not (tmp_path / "demo").exists()
