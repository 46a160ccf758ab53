"""Data-parallel `latents` under a real torchrun (2 CPU ranks, gloo, loopback): each rank runs its own
workers and packs and writes its own WebDataset shards, one summary comes from rank 0, and when an input
failed the last thing torchrun prints is that summary: rank 0 alone exits 1 and hands the summary to
torchrun's error file, which torchrun prints as the root cause, its last section (other ranks may be listed
above it as stopped by torchrun when rank 0 exited first). The records equal a one-process run's within the fp32 rule
(1e-5 x max(1, max |one process|)); the packs differ (each rank packs its own share)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import torch
from faults import tiny_hf_checkpoint
from latents_records import read_shards
from PIL import Image

from qwenvl_min.cli.main import main

TOLERANCE = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_latents_end_with_the_summary(tmp_path, capsys):
    checkpoint = tiny_hf_checkpoint(tmp_path / "hf", context=512)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k, (w, h) in enumerate([(64, 56), (90, 60), (56, 112), (84, 84)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"im{k}.png")
    (images / "im4_broken.png").write_bytes(b"not an image")
    args = ["--model", str(checkpoint), "--taps", "visual.merger,text.layers.1", "--no-progress"]
    args += ["--format", "webdataset", "--workers", "1", "--batch-size", "4"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    done = subprocess.run(
        [*launcher, "-m", "qwenvl_min", "latents", *args, "--out", str(tmp_path / "dp"), str(images)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stdout.count("latents: 4 written, 0 skipped") == 1 and "1 failed on 2 ranks" in done.stdout
    closing = [line.strip() for line in done.stderr.strip().splitlines() if line.strip().strip("=")]
    assert closing[-1].startswith("failed ") and "im4_broken.png" in closing[-1], done.stderr[-3000:]
    assert "latents: 4 written, 0 skipped" in closing[-2]
    root_cause = done.stderr[done.stderr.index("Root Cause") :]  # torchrun's last section: rank 0's summary
    assert "rank      : 0" in root_cause and "exitcode  : 1" in root_cause

    assert sorted(p.name for p in (tmp_path / "dp").glob("shard-*.tar")) == [
        "shard-000-000000.tar",
        "shard-001-000000.tar",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["latents", *args, "--workers", "0", "--out", str(tmp_path / "one"), str(images)]) == 1
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    dp, one = read_shards(tmp_path / "dp"), read_shards(tmp_path / "one")
    assert sorted(dp) == sorted(one) == [f"im{k}" for k in range(4)]
    for key, (tensors, meta) in one.items():
        assert dp[key][1] == meta
        for name, value in tensors.items():
            scale = max(1.0, value.abs().max().item())
            assert (dp[key][0][name] - value).abs().max().item() <= TOLERANCE * scale, (key, name)
