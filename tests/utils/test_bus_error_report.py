"""A checkpoint truncated under a running job: the process still dies of SIGBUS (nothing else is possible once
a kernel reads a page that no longer exists), but its last word is one line naming the checkpoint, the shard
and what changed (`qwenvl_min.utils.mapped_files`, docs/safety.md).

Each case is a real `qwenvl-min latents` run in a subprocess, paused after loading (`cli.model_loaded`), its
shard truncated in place, then released: the first forward reads the missing pages."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from faults import Paused, tiny_hf_checkpoint
from PIL import Image

from qwenvl_min.utils.bus_error_watch import report
from qwenvl_min.weights_convert import convert_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mapped")
    hf = tiny_hf_checkpoint(root / "hf")
    return {"hf": hf, "converted": convert_checkpoint(hf, root / "converted", progress=False)}


def _latents(checkpoint: Path, tmp_path: Path) -> list[str]:
    image = tmp_path / "a.png"
    Image.fromarray(np.full((56, 56, 3), 90, np.uint8)).save(image)
    out = tmp_path / "feats"
    return [
        "-m",
        "qwenvl_min",
        "latents",
        "--model",
        str(checkpoint),
        "--taps",
        "text.norm",
        "--out",
        str(out),
        str(image),
    ]


@pytest.mark.parametrize("kind", ["hf", "converted"])  # from_pretrained's own maps, and `load`'s
def test_a_shard_truncated_under_the_run_is_named(checkpoints, tmp_path, kind):
    checkpoint = shutil.copytree(checkpoints[kind], tmp_path / kind)
    shard = next(checkpoint.glob("*.safetensors"))
    size = shard.stat().st_size
    child = Paused(_latents(checkpoint, tmp_path), "cli.model_loaded", tmp_path / "pause")
    os.truncate(shard, 4096)  # in place: the pages of every weight past the header are gone
    child.release()
    code, _, err = child.finish()
    assert code == -signal.SIGBUS, (code, err)
    assert err.strip().splitlines()[-1] == (
        f"error: killed by SIGBUS: the memory-mapped checkpoint {checkpoint} changed under this process "
        f"({shard.name} truncated from {size} to 4096 bytes), so pages of its weights no longer exist. Replace a "
        "checkpoint a job is using by writing a new directory and renaming it, never in place (docs/safety.md)"
    )
    assert "Fatal Python error" not in err  # the cause is known: no traceback wall
    assert not (tmp_path / "feats").exists() or not any((tmp_path / "feats").glob("*.safetensors"))


def test_replacing_by_rename_is_safe_and_not_blamed(checkpoints, tmp_path):
    """Copy-then-rename leaves the mapped inode whole: the run finishes; the watcher says nothing."""
    checkpoint = shutil.copytree(checkpoints["hf"], tmp_path / "hf")
    shard = checkpoint / "model.safetensors"
    child = Paused(_latents(checkpoint, tmp_path), "cli.model_loaded", tmp_path / "pause")
    shutil.copyfile(shard, tmp_path / "new.safetensors")
    os.replace(tmp_path / "new.safetensors", shard)
    child.release()
    code, _, err = child.finish()
    assert code == 0 and "SIGBUS" not in err, err


def _die(signal_name: str, tmp_path: Path, checkpoint: Path) -> subprocess.CompletedProcess:
    script = (
        "import os, signal, ctypes\n"
        "from qwenvl_min.cli.support import load_model\n"
        f"model = load_model({str(checkpoint)!r}, None, 'cpu')\n"
        + ("os.kill(os.getpid(), signal.SIGBUS)\n" if signal_name == "SIGBUS" else "ctypes.string_at(0)\n")
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_a_bus_error_with_no_changed_file_is_not_blamed_on_the_checkpoint(checkpoints, tmp_path):
    result = _die("SIGBUS", tmp_path, checkpoints["hf"])
    assert result.returncode == -signal.SIGBUS
    first = result.stderr.splitlines()[0]
    assert first.startswith(
        f"error: killed by SIGBUS while the checkpoint {checkpoints['hf']} was memory-mapped"
    )
    assert "none of its files changed" in first
    assert "Fatal Python error: Bus error" in result.stderr  # faulthandler's report follows


def test_other_fatal_errors_pass_through_as_faulthandler_wrote_them(checkpoints, tmp_path):
    result = _die("SIGSEGV", tmp_path, checkpoints["hf"])
    assert result.returncode == -signal.SIGSEGV
    assert result.stderr.startswith("Fatal Python error: Segmentation fault")
    assert "SIGBUS" not in result.stderr and "line 4 in <module>" in result.stderr


def test_report_tells_truncated_from_rewritten(tmp_path):
    path = tmp_path / "shard.safetensors"
    path.write_bytes(b"x" * 100)
    st = path.stat()
    record = {
        "checkpoint": str(tmp_path),
        "path": str(path),
        "dev": st.st_dev,
        "ino": st.st_ino,
        "size": 100,
        "mtime_ns": st.st_mtime_ns,
    }
    fd = os.open(path, os.O_RDONLY)
    try:
        assert report([(record, fd)])[1] is False  # unchanged
        with open(path, "r+b") as f:
            f.write(b"y" * 120)  # grown in place
        message, explained = report([(record, fd)])
        assert (
            explained
            and "shard.safetensors rewritten in place at " in message
            and "100 bytes when mapped, 120 now" in message
        )
        os.truncate(path, 10)
        assert "shard.safetensors truncated from 100 to 10 bytes" in report([(record, fd)])[0]
        assert json.dumps(record)  # what the pipe carries
    finally:
        os.close(fd)
