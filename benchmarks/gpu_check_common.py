"""What every step of `gpu_check.py` shares: its command line, its timer, and its JSON result file.

A step runs as its own process (`python benchmarks/gpu_check_<step>.py --json PATH [--dry-run]`), so a
crash or a hang costs that step only. It writes one JSON object:
    {"step", "mode" ("gpu" | "dry-run"), "env", "rows": [...], "unavailable": [...], "notes": {...}}
`rows` hold measurements; `unavailable` names every provider that did not run and why, with `kind`
"skipped-by-dry-run" (a CUDA-only baseline on the CPU dry run) or "unavailable" (not in this build or
on this machine). Nothing is dropped silently. The step's exit status says pass (0) or fail.

Dry run: CPU, tiny shapes, the Triton interpreter wherever our kernels run (set before they are
imported), fp32 where the interpreter cannot do bf16; timings are one wall-clock call each, only there
so the writers and plots have numbers to handle: they mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

DRY_RUN_NOTE = "dry run: CPU wall clock of one call under the Triton interpreter; not a measurement"


def parse_step_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", type=Path, required=True, help="where this step writes its results")
    parser.add_argument("--dry-run", action="store_true", help="CPU plumbing check: tiny shapes, no timings")
    args = parser.parse_args()
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before any @triton.jit kernel is defined
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    return args


def make_timer(dry_run: bool) -> Callable[[Callable[[], object]], float]:
    """Microseconds per call: CUDA-event median (triton's do_bench, L2 flushed between calls) on a GPU;
    one wall-clock call in a dry run (after the agreement check has already run the provider once)."""
    if not dry_run:
        from _common import bench_us

        # the kernels here take 10 us to a few ms: 50 ms of repeats is hundreds of samples at most sizes
        return lambda fn: bench_us(fn, warmup_ms=10, rep_ms=50)

    def wall_us(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(1):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1e6 * statistics.median(times)

    return wall_us


def skipped_by_dry_run(provider: str, reason: str, **where: object) -> dict:
    return {"provider": provider, "kind": "skipped-by-dry-run", "reason": reason, **where}


def unavailable(provider: str, reason: str, **where: object) -> dict:
    return {"provider": provider, "kind": "unavailable", "reason": reason, **where}


def write_step(path: Path, step: str, dry_run: bool, rows: list[dict], missing: list[dict],
               notes: dict | None = None) -> None:  # fmt: skip
    """The step's JSON (written whole to a temporary name, then renamed: never a half-written file)."""
    from _common import environment

    payload = {
        "step": step,
        "mode": "dry-run" if dry_run else "gpu",
        "env": environment(),
        "rows": rows,
        "unavailable": missing,
        "notes": {**({"timing": DRY_RUN_NOTE} if dry_run else {}), **(notes or {})},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    partial.replace(path)
