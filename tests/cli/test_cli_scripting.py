"""The CLI for scripts: `--json` on inspect and the latents summary (the schema of docs/cli.md), `--version`,
`-q` / `-v` through the `qwenvl_min` logger (status on stderr, results on stdout), progress bars only on a
terminal and never with -q, and a one-line error for a device that is not there."""

from __future__ import annotations

import io
import json
import sys
from importlib import metadata

import pytest
import torch
from test_cli import _save_image, checkpoint  # noqa: F401  (the converted tiny checkpoint fixture)

from qwenvl_min.cli.main import main
from qwenvl_min.inputs.preprocess import smart_resize

INSPECT_FIELDS = {  # docs/cli.md, `inspect --json`
    "input": str,
    "kind": str,
    "family": str,
    "input_size": (list, type(None)),
    "frames_used": (int, type(None)),
    "seconds_per_temporal_patch": (float, type(None)),
    "resized": list,
    "pixel_budget": list,
    "grid_thw": list,
    "patches": int,
    "values_per_patch": int,
    "merged_tokens": int,
    "prompt_tokens": int,
    "windows": str,
    "png": (str, type(None)),
    "model": (str, type(None)),
    "budget_from": str,
}
LATENTS_FIELDS = {
    "out": str,
    "written": int,
    "skipped": int,
    "failed": list,
    "ranks": int,
    "fatal": (str, type(None)),
}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_version_is_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"qwenvl-min {metadata.version('qwenvl-min')}"


def test_inspect_json_has_the_documented_fields(tmp_path, capsys):
    image = _save_image(tmp_path / "in.png", 500, 333)
    assert main(["inspect", str(image), "--png", str(tmp_path / "o.png"), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout is exactly one JSON object
    assert set(report) == set(INSPECT_FIELDS)
    for field, kind in INSPECT_FIELDS.items():
        assert isinstance(report[field], kind), field
    height, width = smart_resize(333, 500)
    assert report["input_size"] == [500, 333] and report["resized"] == [width, height]
    assert report["grid_thw"] == [1, height // 14, width // 14]
    assert report["merged_tokens"] == height * width // 28**2 == report["prompt_tokens"] - 2
    assert report["kind"] == "image" and report["frames_used"] is None
    assert f"wrote: {tmp_path / 'o.png'}" in captured.err  # status on stderr


def test_latents_json_summary(tmp_path, checkpoint, capsys):  # noqa: F811
    good = _save_image(tmp_path / "a.png", 56, 56)
    broken = tmp_path / "b.png"
    broken.write_text("not an image")
    out = tmp_path / "out"
    argv = ["latents", "--model", str(checkpoint), "--taps", "text.norm", "--out", str(out), "--json"]
    assert main([*argv, str(good), str(broken)]) == 1  # one input failed
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == set(LATENTS_FIELDS)
    for field, kind in LATENTS_FIELDS.items():
        assert isinstance(summary[field], kind), field
    assert (summary["written"], summary["skipped"], summary["ranks"], summary["fatal"]) == (1, 0, 1, None)
    assert [f["input"] for f in summary["failed"]] == [str(broken)]
    assert "not an image" in summary["failed"][0]["error"]
    assert main([*argv, str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 1


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_and_verbose_set_what_reaches_stderr(tmp_path, checkpoint, capsys, where):  # noqa: F811
    image = _save_image(tmp_path / "a.png", 56, 56)
    inspect = ["inspect", str(image), "--png", str(tmp_path / "o.png"), "--force"]
    for flags, wrote in ([], True), (["-q"], False):
        argv = flags + inspect if where == "before" else inspect + flags
        assert main(argv) == 0
        captured = capsys.readouterr()
        assert ("wrote:" in captured.err) is wrote and "wrote:" not in captured.out
        assert "merged tokens" in captured.out  # the result itself, on stdout, either way
    latents = ["latents", "--model", str(checkpoint), "--taps", "text.norm", "--out", str(tmp_path / "l")]
    argv = ["-v", *latents, str(image)] if where == "before" else [*latents, str(image), "-v"]
    assert main(argv) == 0
    assert "loaded " in capsys.readouterr().err  # debug detail: what was loaded, how, how long


def test_progress_bars_only_on_a_terminal_and_not_with_quiet(tmp_path, checkpoint, monkeypatch, capsys):  # noqa: F811
    image = _save_image(tmp_path / "a.png", 56, 56)
    latents = ["latents", "--model", str(checkpoint), "--taps", "text.norm", str(image)]
    for terminal, flags, drawn in [(False, [], False), (True, [], True), (True, ["-q"], False)]:
        stderr = Terminal() if terminal else io.StringIO()
        monkeypatch.setattr(sys, "stderr", stderr)
        out = tmp_path / f"out-{terminal}-{len(flags)}"
        assert main([*flags, *latents, "--out", str(out)]) == 0
        assert ("1/1" in stderr.getvalue()) is drawn, (terminal, flags)
    capsys.readouterr()


def test_unavailable_devices_are_one_line_errors(tmp_path, capsys, monkeypatch):
    image = _save_image(tmp_path / "a.png", 56, 56)
    # the device is checked before the model is read: a missing --model does not get that far
    run = ["run", "--model", str(tmp_path / "no-model"), "--image", str(image), "--prompt", "hi"]

    def error(device: str) -> str:
        assert main([*run, "--device", device]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: --device")
        return err

    if not torch.cuda.is_available():
        err = error("cuda")
        assert "CUDA is not available" in err and "available here: cpu" in err and "pass --device cpu" in err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    err = error("cuda:7")
    assert "has 1 CUDA device (cuda:0..cuda:0)" in err and "pass --device cuda:0" in err
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    err = error("mps")
    assert "MPS is not available" in err and "pass --device cpu" in err
    assert "is not a device name" in error("gpu0")
