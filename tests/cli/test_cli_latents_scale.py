"""`latents` over a dataset: directories and --files-from (stdin too), workers and packing (equal to one input
per forward), WebDataset shards read back with the `webdataset` library (size bound, resume, kill -9 and
SIGTERM mid-shard), --layout grid, video timing (against qwen-vl-utils' own metadata), --prompt through the
checkpoint's chat template, a dying worker, and an OUT it made removed when every input failed.

Tolerance for packed vs one-at-a-time (fp32 rule): 1e-5 x max(1, max |one at a time|); see
tests/latents/test_packing.py."""

from __future__ import annotations

import io
import json
import os
import signal
import sys

import numpy as np
import pytest
import torch
from faults import Paused, listing
from hf_user_dir import make_user_dir
from latents_records import read_files, read_shards
from qwen_vl_utils_oracle import install
from test_cli import _save_image, checkpoint  # noqa: F401  (checkpoint: the tiny-model fixture)
from test_cli_video_flags import clip  # noqa: F401  (a 2 s, 24 fps clip)

from qwenvl_min import QwenVL
from qwenvl_min.cli.main import main
from qwenvl_min.inputs.processor import Processor

TOLERANCE = 1e-5
TAPS = "visual.merger.input,visual.merger,text.layers.1"


def _latents(model, out, *inputs, taps=TAPS, extra=()):
    return [
        "latents",
        "--model",
        str(model),
        "--taps",
        taps,
        "--out",
        str(out),
        "--no-progress",
        *extra,
        *map(str, inputs),
    ]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() <= TOLERANCE * max(1.0, b.abs().max().item())


def _images(folder, count, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(64, 56), (90, 60), (56, 112), (120, 84)]
    return [_save_image(folder / f"im{k}.png", *sizes[k % 4], seed=k) for k in range(start, start + count)]


def test_directories_and_files_from_stdin(checkpoint, tmp_path, capsys, monkeypatch):  # noqa: F811
    tree = tmp_path / "tree"
    for folder in ("a", "b"):
        (tree / folder).mkdir(parents=True)
    _save_image(tree / "a" / "x.png", 64, 56)
    _save_image(tree / "b" / "x.jpg", 60, 60, seed=1)
    (tree / "notes.txt").write_text("not an image")
    loose = _save_image(tmp_path / "y.png", 56, 56, seed=2)
    listed = _save_image(tmp_path / "z.png", 70, 56, seed=3)
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"\n{listed}\n\n"))
    out = tmp_path / "out"
    assert (
        main(_latents(checkpoint, out, tree, loose, taps="visual.merger", extra=["--files-from", "-"])) == 0
    )
    assert "4 written, 0 skipped" in capsys.readouterr().out
    assert sorted(read_files(out)) == ["a/x.safetensors", "b/x.safetensors", "y.safetensors", "z.safetensors"]

    # the same name twice: refused before any work, nothing made
    lst = tmp_path / "list.txt"
    lst.write_text(f"{tree / 'a' / 'x.png'}\n{tmp_path / 'y.png'}\n{tree / 'b' / 'x.jpg'}\n")
    fresh = tmp_path / "fresh"
    assert main(_latents(checkpoint, fresh, taps="visual.merger", extra=["--files-from", str(lst)])) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("error: several inputs would write the output name(s) x;") and "\n" not in err.strip()
    )
    assert not fresh.exists()


def test_workers_and_packing_equal_one_input_per_forward(checkpoint, clip, tmp_path, capsys):  # noqa: F811
    images = _images(tmp_path / "in", 4)
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not a png")
    inputs = [images[0], clip, broken, *images[1:]]
    video = ["--num-frames", "4", "--max-pixels", "20000"]
    one = tmp_path / "one"
    assert (
        main(_latents(checkpoint, one, *inputs, extra=[*video, "--workers", "0", "--batch-size", "1"])) == 1
    )
    assert "5 written" in capsys.readouterr().out
    packed = tmp_path / "packed"
    extra = [*video, "--workers", "2", "--batch-size", "8", "--batch-tokens", "4096"]
    assert main(_latents(checkpoint, packed, *inputs, extra=extra)) == 1
    summary = capsys.readouterr().out
    assert "5 written, 0 skipped" in summary and "1 failed" in summary and "broken.png" in summary
    want, got = read_files(one), read_files(packed)
    assert sorted(got) == sorted(want) and len(got) == 5
    for name, (tensors, meta) in want.items():
        assert got[name][1] == meta, name  # metadata (settings included) does not depend on packing
        for key, value in tensors.items():
            assert _close(got[name][0][key], value), (name, key)


def test_webdataset_shards_read_back_and_resume(checkpoint, tmp_path, capsys):  # noqa: F811
    images = _images(tmp_path / "in", 5)
    files = tmp_path / "files"
    assert main(_latents(checkpoint, files, *images[:4], extra=["--workers", "0"])) == 0
    out = tmp_path / "wds"
    wds_args = ["--format", "webdataset", "--shard-size", "40KB", "--workers", "0"]
    assert main(_latents(checkpoint, out, *images[:4], extra=wds_args)) == 0
    assert "4 written" in capsys.readouterr().out
    shards = sorted(out.glob("shard-*.tar"))
    assert len(shards) > 1 and [p.name for p in shards][0] == "shard-000-000000.tar"
    for shard in shards:  # the bound holds unless one sample alone is larger (then it is alone)
        assert shard.stat().st_size <= 40_000 or len(_tar_names(shard)) == 2
    samples = read_shards(out)
    reference = read_files(files)
    assert sorted(samples) == [f"im{k}" for k in range(4)]
    for key, (tensors, meta) in samples.items():
        want_tensors, want_meta = reference[f"{key}.safetensors"]
        assert {k: json.dumps(v) if not isinstance(v, str) else v for k, v in meta.items()} == want_meta
        for name, value in want_tensors.items():
            assert torch.equal(tensors[name], value), (key, name)  # the same packs: the same bits

    before = {p.name: p.read_bytes() for p in shards}
    assert main(_latents(checkpoint, out, *images, extra=wds_args)) == 0  # one new input
    assert "1 written, 4 skipped" in capsys.readouterr().out
    after = sorted(out.glob("shard-*.tar"))
    assert {p.name: p.read_bytes() for p in after if p.name in before} == before  # never rewritten
    assert len(after) == len(before) + 1 and sorted(read_shards(out)) == [f"im{k}" for k in range(5)]


def _tar_names(path):
    import tarfile

    with tarfile.open(path) as tar:
        return tar.getnames()


def _next_pause(child: Paused) -> None:
    """Let the child run on to the next time it reaches its pause point."""
    import time

    (child.folder / "reached").unlink()
    child.release()
    deadline = time.monotonic() + 60
    while not (child.folder / "reached").exists():
        assert child.proc.poll() is None and time.monotonic() < deadline, child.proc.communicate()
        time.sleep(0.01)


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_webdataset_shard_interrupted_mid_sample(checkpoint, tmp_path, capsys, how):  # noqa: F811
    images = _images(tmp_path / "in", 2)
    out = tmp_path / "wds"
    args = _latents(
        checkpoint, out, *images, extra=["--format", "webdataset", "--workers", "0", "--batch-size", "1"]
    )
    child = Paused(["-m", "qwenvl_min.cli", *args], "latents.shard_member", tmp_path / "p")
    _next_pause(child)  # im0.json written: im0 is whole
    _next_pause(child)  # im1.safetensors written, im1.json not yet
    if how == "sigterm":
        child.proc.send_signal(signal.SIGTERM)
        code, _, err = child.finish()
        assert code == 143 and "error: terminated" in err
        assert listing(out) == ["shard-000-000000.tar"]  # cut back to its whole sample, renamed
        assert sorted(read_shards(out)) == ["im0"]
        resumed = "1 written, 1 skipped"
    else:
        child.proc.kill()
        child.finish()
        assert [n for n in listing(out) if n.endswith(".tmp")] and not list(out.glob("shard-*.tar"))
        resumed = "2 written, 0 skipped"
    capsys.readouterr()
    assert main(args) == 0
    assert resumed in capsys.readouterr().out
    assert not [n for n in listing(out) if n.endswith(".tmp")]
    assert sorted(read_shards(out)) == ["im0", "im1"]


def test_grid_layout_and_its_resume_key(checkpoint, tmp_path, capsys):  # noqa: F811
    image = _save_image(tmp_path / "a.png", 112, 56)
    rows, grid = tmp_path / "rows", tmp_path / "grid"
    assert main(_latents(checkpoint, rows, image, taps="visual.merger.input,visual.merger")) == 0
    assert (
        main(
            _latents(
                checkpoint, grid, image, taps="visual.merger.input,visual.merger", extra=["--layout", "grid"]
            )
        )
        == 0
    )
    (r, meta), (g, _) = read_files(rows)["a.safetensors"], read_files(grid)["a.safetensors"]
    t, h, w = json.loads(meta["grid_thw"])
    assert g["visual.merger.input"].shape == (t, h, w, 64) and g["visual.merger"].shape == (
        t,
        h // 2,
        w // 2,
        64,
    )
    # merged token (by, bx) is patch rows 4k..4k+3 = the 2x2 block at (2by.., 2bx..) of the grid
    assert torch.equal(g["visual.merger.input"][0, 0:2, 2:4].reshape(4, -1), r["visual.merger.input"][4:8])
    assert torch.equal(g["visual.merger"].reshape(-1, 64), r["visual.merger"])
    capsys.readouterr()
    assert (
        main(
            _latents(
                checkpoint, rows, image, taps="visual.merger.input,visual.merger", extra=["--layout", "grid"]
            )
        )
        == 1
    )
    assert "layout: 'rows' there, 'grid' now" in capsys.readouterr().out


def test_video_timing_is_recorded(checkpoint, clip, tmp_path, capsys):  # noqa: F811
    qvu = install()
    out = tmp_path / "out"
    assert (
        main(
            _latents(
                checkpoint,
                out,
                clip,
                taps="visual.merger",
                extra=["--num-frames", "6", "--max-pixels", "20000"],
            )
        )
        == 0
    )
    meta = read_files(out)["clip.safetensors"][1]
    timing = json.loads(meta["video"])
    (_, expected), sample_fps = qvu.fetch_video(
        {"type": "video", "video": clip, "nframes": 6, "max_pixels": 20000, "min_pixels": 20000},
        return_video_sample_fps=True,
        return_video_metadata=True,
    )
    indices = [int(i) for i in expected["frames_indices"]]
    assert timing["frame_indices"] == indices and timing["video_fps"] == 24.0
    assert timing["sample_fps"] == pytest.approx(sample_fps)
    assert timing["second_per_grid_ts"] == pytest.approx(2 / sample_fps)
    spans = [[indices[k] / 24, indices[k + 1] / 24] for k in range(0, 6, 2)]
    assert np.allclose(timing["patch_seconds"], spans, rtol=0, atol=1e-9)
    assert json.loads(meta["grid_thw"])[0] == 3 == len(timing["patch_seconds"])


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf")
    make_user_dir(directory, "qwen2_5_vl", seed=4)
    return directory


def test_prompt_goes_through_the_chat_template(user_dir, tmp_path, capsys):
    image = _save_image(tmp_path / "a.png", 84, 56)
    prompt = "Describe this image in detail."
    out = tmp_path / "out"
    taps = "text.norm,visual.merger"
    assert main(_latents(user_dir, out, image, taps=taps, extra=["--prompt", prompt])) == 0
    tensors, meta = read_files(out)["a.safetensors"]
    processor = Processor.from_pretrained(user_dir)  # what `run --prompt` feeds the model
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    batch = processor(text=processor.apply_chat_template(messages), images=[str(image)])
    model = QwenVL.from_pretrained(user_dir)
    with torch.inference_mode(), model.taps(read=["text.norm"]) as t:
        model(**batch)
    assert json.loads(meta["input_ids"]) == batch["input_ids"][0].tolist()
    assert _close(tensors["text.norm"], t.cache["text.norm"])
    assert json.loads(meta["settings"])["prompt"] == prompt
    capsys.readouterr()
    assert main(_latents(user_dir, out, image, taps=taps)) == 1  # the prompt is part of the resume key
    assert f"prompt: {prompt!r} there, None now" in capsys.readouterr().out
    assert main(_latents(user_dir, out, image, taps=taps, extra=["--prompt", " "])) == 1
    assert capsys.readouterr().err.startswith("error: --prompt is empty")


def test_every_input_failing_leaves_no_out_it_made(checkpoint, tmp_path, capsys):  # noqa: F811
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"no")
    out = tmp_path / "new" / "deeper"
    assert main(_latents(checkpoint, out, broken, tmp_path / "missing.png")) == 1
    summary = capsys.readouterr().out
    assert "0 written, 0 skipped" in summary and "2 failed" in summary
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main(_latents(checkpoint, existing, broken)) == 1
    assert existing.is_dir() and listing(existing) == []  # the user's folder stays


def test_a_dying_worker_is_one_error_line(checkpoint, tmp_path):  # noqa: F811
    images = _images(tmp_path / "in", 2)
    out = tmp_path / "out"
    args = _latents(checkpoint, out, *images, extra=["--workers", "1"])
    child = Paused(["-m", "qwenvl_min.cli", *args], "pipeline.prepare", tmp_path / "p")
    worker = int((child.folder / "reached").read_text())
    assert worker != child.proc.pid
    os.kill(worker, signal.SIGKILL)
    code, _, err = child.finish()
    assert code == 1, err
    lines = err.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("error: DataLoader worker") and "rerun to resume" in lines[0]
    )
    assert not out.exists()


def test_bad_flags_are_one_line(checkpoint, tmp_path, capsys):  # noqa: F811
    image = _save_image(tmp_path / "a.png", 56, 56)
    for extra, message in (
        (["--workers", "-1"], "--workers must be >= 0"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--files-from", str(tmp_path / "nope.txt")], "cannot read --files-from"),
    ):
        assert main(_latents(checkpoint, tmp_path / "o", image, extra=extra)) == 1
        assert capsys.readouterr().err.startswith(f"error: {message}")
    assert main(_latents(checkpoint, tmp_path / "o")) == 1
    assert capsys.readouterr().err.startswith("error: no inputs")
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main(_latents(checkpoint, tmp_path / "o", image, extra=["--shard-size", "lots"]))
    assert "expected a size such as 1GB" in capsys.readouterr().err
