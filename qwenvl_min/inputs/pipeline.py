"""Prepare inputs in worker processes, ahead of the model, in order: torch's DataLoader with a bound.

    for result in prepared_in_order(sources, prepare, workers=4):
        if isinstance(result, Failed): ...      # a bad input: reported, the run goes on
        else: ...                               # what prepare(source) returned

- `workers` processes each call `prepare(source)` (decode, sample, resize, patchify) for every
  workers-th source; results come back in the order of `sources`. `workers=0` prepares in this process.
- Bounded prefetch: at most `workers * prefetch` prepared inputs wait in memory (DataLoader's
  `prefetch_factor`), however long the list; the consumer's own batch comes on top of that.
- A bad input (the OSError / ValueError / ImportError the input code raises for unreadable files,
  budgets, decompression bombs, missing decoders) is returned as `Failed(source, why)` in its place.
  Any other exception is a bug and stops the run with the worker's traceback.
- A worker that dies (killed, out of memory, a crash in a decoder) raises `WorkerDied` in the consumer,
  from the next result or at once from DataLoader's SIGCHLD handler, never a hang; `worker_death(err)`
  recognizes the RuntimeError that handler raises wherever the consumer is.
- `pin_memory=True` (for CUDA) copies results into page-locked memory in a thread of this process, so the
  consumer's `.to(device, non_blocking=True)` overlaps the copy with compute. Results pin through their
  own `pin_memory()` method (tensors and dataclasses that define one).
- Workers are forked (the consumer's loaded model is shared copy-on-write, never touched); each runs
  torch single-threaded, at a lower scheduling priority (nice +10; QWENVL_MIN_WORKER_NICE changes it) so
  that decoding takes the cores the model leaves instead of stalling its threads. Ctrl-C / SIGTERM in the consumer shut the workers down; if the consumer is
  killed (SIGKILL), each worker notices its parent is gone and exits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

from ..utils.faults import pause_point

S = TypeVar("S")
T = TypeVar("T")
BAD_INPUT = (OSError, ValueError, ImportError)
DEFAULT_PREFETCH = 2  # prepared inputs waiting per worker
WORKER_NICE = 10  # workers' scheduling priority below the consumer's (see `_lower_priority`)


@dataclass(frozen=True)
class Failed(Generic[S]):
    """A source whose preparation failed, and why (one line)."""

    source: S
    error: str


class WorkerDied(RuntimeError):
    """A worker process died; the message says which and what to do."""


def worker_death(err: BaseException) -> str | None:
    """The message of DataLoader's RuntimeError for a dead worker, else None."""
    text = str(err)
    return text if isinstance(err, RuntimeError) and text.startswith("DataLoader worker") else None


class _Prepared(Dataset, Generic[S, T]):
    def __init__(self, sources: Sequence[S], prepare: Callable[[S], T]) -> None:
        self.sources, self.prepare = sources, prepare

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> T | Failed[S]:
        source = self.sources[index]
        pause_point("pipeline.prepare")
        try:
            return self.prepare(source)
        except BAD_INPUT as err:
            return Failed(source, f"{type(err).__name__}: {' '.join(str(err).split())}")


def _as_is(item: object) -> object:  # no collation: one input is one result
    return item


def _lower_priority(worker_id: int) -> None:
    """Workers yield the cores to the consumer's model: its threads wait at barriers for each other, so a
    core taken by a decoder at equal priority stalls a whole forward (tens of times slower small ops)."""
    os.nice(int(os.environ.get("QWENVL_MIN_WORKER_NICE", WORKER_NICE)))


def prepared_in_order(
    sources: Sequence[S],
    prepare: Callable[[S], T],
    *,
    workers: int = 0,
    prefetch: int = DEFAULT_PREFETCH,
    pin_memory: bool = False,
) -> Iterator[T | Failed[S]]:
    """`prepare(source)` (or `Failed`) for every source, in order, computed by `workers` processes."""
    if workers < 0 or prefetch < 1:
        raise ValueError(f"workers must be >= 0 and prefetch >= 1, got {workers} and {prefetch}")
    loader = DataLoader(
        _Prepared(sources, prepare),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_is,
        pin_memory=pin_memory and torch.cuda.is_available(),
        prefetch_factor=prefetch if workers else None,
        multiprocessing_context="fork" if workers else None,
        worker_init_fn=_lower_priority if workers else None,
    )
    iterator = iter(loader)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except RuntimeError as err:
            if (why := worker_death(err)) is None:
                raise
            raise WorkerDied(why) from None
        yield item
