"""Helpers for the fault-injection tests: a tiny HF checkpoint and a subprocess paused at a named point
(qwenvl_min.utils.faults), so a test can kill it, signal it or race it at exactly that moment, without sleeps."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from qwenvl_min import Config, QwenVL
from qwenvl_min.utils.faults import ENV
from qwenvl_min.weights_convert import our_state_dict_to_hf

TIMEOUT = 60  # seconds any child may take to reach its pause point or to finish


def tiny_hf_checkpoint(directory: Path, *, context: int = 4096, edit=None) -> Path:
    """A tiny Qwen2.5-VL in the published HF layout (fp32, one file); `edit(state)` may change tensors."""
    base = Config.preset("tiny-qwen2.5-vl")
    config = dataclasses.replace(base, text=dataclasses.replace(base.text, max_position_embeddings=context))
    torch.manual_seed(0)
    state = our_state_dict_to_hf(config, QwenVL(config).state_dict())
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if edit is not None:
        edit(state)
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config.to_hf()))
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def digest(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


class Paused:
    """A child process that runs `argv` and stops at pause point `point` until released."""

    def __init__(self, argv: list[str], point: str, folder: Path) -> None:
        folder.mkdir()
        os.mkfifo(folder / "go")
        self.folder = folder
        env = {**os.environ, ENV: f"{point}={folder}", "TRITON_INTERPRET": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + TIMEOUT
        while not (folder / "reached").exists():  # an event with a deadline, not a timed guess
            if self.proc.poll() is not None:
                raise AssertionError(f"child exited before {point}: {self.proc.communicate()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"child never reached {point}")
            time.sleep(0.01)

    def release(self) -> None:
        with open(self.folder / "go", "w"):
            pass

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=TIMEOUT)
        return self.proc.returncode, out, err


def convert_argv(src: Path, dst: Path, *extra: str) -> list[str]:
    return ["-m", "qwenvl_min.weights_convert", str(src), str(dst), "--no-progress", *extra]
