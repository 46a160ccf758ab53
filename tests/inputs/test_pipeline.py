"""The worker pipeline of `latents` (qwenvl_min.inputs.pipeline): results in order from several workers,
bad inputs in their place, the prefetch bound, a dying worker reported instead of waited on, and the input
lists (directories by suffix, names, duplicates)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from qwenvl_min.inputs.input_lists import duplicate_names, expand_inputs, source_of
from qwenvl_min.inputs.pipeline import Failed, WorkerDied, prepared_in_order


def _square(k: int) -> dict[str, torch.Tensor]:
    if k == 3:
        raise ValueError(f"input {k} is bad")
    return {"value": torch.tensor([k * k])}


@pytest.mark.parametrize("workers", [0, 2])
def test_results_come_in_order_with_failures_in_place(workers):
    results = list(prepared_in_order(list(range(8)), _square, workers=workers))
    assert (
        isinstance(results[3], Failed)
        and results[3].source == 3
        and results[3].error == "ValueError: input 3 is bad"
    )
    assert [int(r["value"]) for k, r in enumerate(results) if k != 3] == [k * k for k in range(8) if k != 3]


class _Counted:
    """Records each call in a folder (workers are other processes)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, k: int) -> int:
        (self.folder / str(k)).touch()
        return k


def test_at_most_workers_times_prefetch_inputs_wait(tmp_path):
    workers, prefetch = 2, 2
    results = prepared_in_order(list(range(40)), _Counted(tmp_path), workers=workers, prefetch=prefetch)
    assert next(results) == 0
    bound = 1 + workers * prefetch  # the one taken, and the ones waiting
    deadline = time.monotonic() + 30
    while len(list(tmp_path.iterdir())) < bound and time.monotonic() < deadline:  # the workers fill up
        time.sleep(0.01)
    time.sleep(0.3)  # and stop there
    assert len(list(tmp_path.iterdir())) == bound
    assert list(results) == list(range(1, 40))


def _die_at_two(k: int) -> int:
    if k == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return k


def test_a_worker_that_dies_is_reported_not_waited_on():
    started = time.monotonic()
    with pytest.raises(WorkerDied, match=r"DataLoader worker \(pid"):
        list(prepared_in_order(list(range(6)), _die_at_two, workers=2))
    assert time.monotonic() - started < 30


def test_bounds_are_checked():
    with pytest.raises(ValueError, match="workers must be >= 0"):
        next(prepared_in_order([1], _square, workers=-1))


def test_input_lists_walk_directories_and_name_outputs(tmp_path):
    for rel in ("a/cat.JPG", "a/b/dog.png", "clip.mp4", "notes.txt", "a/b/.hidden/x.webp"):
        (tmp_path / "d" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "d" / rel).write_bytes(b"")
    sources = expand_inputs([str(tmp_path / "d"), "https://host/x/cat.jpg?s=1"], ["/data/one.png"])
    assert [s.name for s in sources] == ["a/b/dog", "a/cat", "clip", "cat", "one"]  # hidden folders skipped
    assert [s.is_video for s in sources] == [False, False, True, False, False]
    assert sources[3].is_url and sources[3].suffix == ".jpg"
    assert source_of("photos/my.cat.jpeg").name == "my.cat"
    assert duplicate_names([s.name for s in sources] + ["clip", "one", "one"]) == ["clip", "one"]
