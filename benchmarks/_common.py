"""Helpers shared by the benchmark scripts: environment record, timing, JSON results.

Every result file names the device and the software it was measured with, so figures from different
cards (an H100 and an H200 are not comparable) or versions are never mixed up.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
COMMIT_ENV = "GPU_CHECK_COMMIT"  # the commit to record when the tree has no .git (see _commit)


def use_interpreter_without_cuda() -> None:
    """On a machine without CUDA the Triton kernels run interpreted; the switch must be set before
    `qwenvl_min.kernels` is imported (the kernels are defined at import time)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _commit() -> str | None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.CalledProcessError):
        # a copy of the tree without git metadata (e.g. a lent GPU machine): the caller may name it
        return os.environ.get(COMMIT_ENV) or None
    return commit + ("-dirty" if dirty else "")


def _driver() -> str | None:
    """The NVIDIA driver version (nvidia-smi), or None without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def environment() -> dict[str, str | None]:
    """Device (with compute capability and driver on CUDA), versions, commit and date of this run (one
    dict, stored with every result row)."""
    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.cuda.get_device_name()
    else:
        device = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return {
        "device": device,
        "capability": ".".join(map(str, torch.cuda.get_device_capability())) if cuda else None,
        "driver": _driver() if cuda else None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "liger_kernel": _version("liger-kernel"),
        "python": platform.python_version(),
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def bench_us(fn: Callable[[], object], *, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median time of `fn` in microseconds on the current CUDA device (CUDA events, L2 cleared between
    runs by triton's do_bench)."""
    import triton.testing

    return 1e3 * triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


def write_results(name: str, rows: list[dict], env: dict, *, mode: str, path: Path | None = None) -> Path:
    """Write {"env", "mode", "rows"} as JSON (each row also carries the env) and return the path;
    default path: benchmarks/results/<name>-<device>.json."""
    if path is None:
        path = RESULTS_DIR / f"{name}-{slug(env['device'])}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "mode": mode, "env": env, "rows": [{**env, **row} for row in rows]}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A plain text table of the rows (missing values shown as '-')."""

    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    table = [columns] + [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for r in table:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))
    sys.stdout.flush()
