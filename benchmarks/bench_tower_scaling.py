"""Vision tower cost as the work grows: time per block kind and peak memory, ours vs transformers (sdpa).

Qwen2.5-VL-7B widths (1280 wide, 16 heads, SwiGLU 3420, windows of 112 px), random weights shared by
both implementations (ours is loaded from transformers' state dict without copying, as in
bench_vision_tower.py). Points: square images of 448, 896, 1344 and 1792 px and videos of 8, 32 and 128
frames of 224x224 (the same patch-row counts as the 448, 896 and 1792 px images, so images and videos
compare at equal work; 128 frames of 224x224 stay feasible on a 2-core CPU).

What is timed. A full 32-block tower at 1792 px is minutes per forward on this CPU, so each point runs
a slice of the real tower: patch embedding, one window block, one full-attention block and the merger,
all at the real widths. Blocks of one kind are identical in cost, so forward hooks time each block and
the 32-block tower time is extrapolated as rest + 28 x window block + 4 x full block ("rest" = the slice's
time outside its blocks: patch embedding, layout or window reordering, merger). Reported per point:
microseconds per patch row (token) for each block kind, the extrapolated tower seconds, and the peak
memory of one forward: VmHWM of a fresh process running only that implementation, minus its RSS just
before the forward (activations and workspace; the weights, 2.7 GB for the full tower, come on top and
do not depend on the input).

Window blocks attend within windows of 64 rows, so their cost per token is flat. Full-attention blocks
attend within each frame: for images their cost per token grows with the image (attention is O(N^2)
over the N rows of one frame); for videos every frame is 256 rows, so it stays flat too.

Runs alternate ours / transformers at each point; median of --reps repeats (default 3) for points up to
4096 rows and --large-reps (default 1) above, which is said in the JSON.

    python benchmarks/bench_tower_scaling.py                      # all points, JSON + docs/tower_scaling.png
    python benchmarks/bench_tower_scaling.py --images 448,896 --videos 8 --no-memory   # quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import REPO_ROOT, RESULTS_DIR, environment
from bench_vision_tower import PeakMemory, _vm_hwm_bytes, build_towers_for

from qwenvl_min import Config
from qwenvl_min.model.vision import VisionTower

PRESET = "qwen2.5-vl-7b"
FRAME_SIDE = 224  # video frame size in pixels
WINDOW, FULL = "window", "full"


def slice_config() -> tuple[Config, dict[str, int]]:
    """The 7B config cut to one window block and one full-attention block; and the real tower's counts."""
    config = Config.preset(PRESET)
    v = config.vision
    counts = {FULL: len(v.fullatt_block_indexes), WINDOW: v.depth - len(v.fullatt_block_indexes)}
    sliced = dataclasses.replace(v, depth=2, fullatt_block_indexes=(1,))
    return dataclasses.replace(config, vision=sliced), counts


def point_grid(kind: str, size: int, patch: int, temporal_patch: int) -> torch.Tensor:
    """grid_thw of an image of size x size px, or of a video of `size` frames of FRAME_SIDE px."""
    if kind == "image":
        return torch.tensor([[1, size // patch, size // patch]])
    side = FRAME_SIDE // patch
    return torch.tensor([[size // temporal_patch, side, side]])


class BlockTimer:
    """Forward hooks on each block: wall seconds per block kind for the forwards inside the `with`."""

    def __init__(self, blocks: torch.nn.ModuleList, kinds: list[str]) -> None:
        self.blocks, self.kinds = blocks, kinds
        self.seconds = {WINDOW: 0.0, FULL: 0.0}

    def __enter__(self) -> BlockTimer:
        self.handles, starts = [], {}
        for index, (block, kind) in enumerate(zip(self.blocks, self.kinds)):

            def before(module, args, index=index):
                starts[index] = time.perf_counter()

            def after(module, args, output, index=index, kind=kind):
                self.seconds[kind] += time.perf_counter() - starts.pop(index)

            self.handles += [block.register_forward_pre_hook(before), block.register_forward_hook(after)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


def forward(impl: str, tower: torch.nn.Module, pixels: torch.Tensor, grid: torch.Tensor) -> None:
    with torch.inference_mode():
        if impl == "ours":
            tower(pixels, grid)
        else:
            tower(pixels, grid_thw=grid)


def time_point(
    towers: dict[str, torch.nn.Module], kinds: list[str], pixels, grid, reps: int
) -> dict[str, dict[str, list[float]]]:
    """Per implementation: lists (one per repeat) of total, window-block and full-block seconds."""
    out = {impl: {"total": [], WINDOW: [], FULL: []} for impl in towers}
    for _ in range(reps):
        for impl, tower in towers.items():  # alternating
            with BlockTimer(tower.blocks, kinds) as timer:
                start = time.perf_counter()
                forward(impl, tower, pixels, grid)
                out[impl]["total"].append(time.perf_counter() - start)
            out[impl][WINDOW].append(timer.seconds[WINDOW])
            out[impl][FULL].append(timer.seconds[FULL])
    return out


def child_memory(impl: str, kind: str, size: int) -> None:
    """Fresh process: one implementation's slice, one forward; print RSS before and VmHWM as JSON."""
    config, _ = slice_config()
    v = config.vision
    torch.manual_seed(0)
    if impl == "ours":
        tower: torch.nn.Module = VisionTower(v).eval()
    else:
        tower, _, _ = build_towers_for(config, torch.device("cpu"), with_ours=False)
    grid = point_grid(kind, size, v.patch_size, v.temporal_patch_size)
    pixels = torch.randn(int(grid.prod()), v.patch_dim)
    before = PeakMemory._rss()
    forward(impl, tower, pixels, grid)
    print(json.dumps({"rss_before_gb": before / 2**30, "peak_rss_gb": _vm_hwm_bytes() / 2**30}))


def memory_in_fresh_process(impl: str, kind: str, size: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", f"{impl}:{kind}:{size}"],
        capture_output=True,
        text=True,
        check=True,
    )
    mem = json.loads(out.stdout.strip().splitlines()[-1])
    mem["forward_peak_gb"] = mem["peak_rss_gb"] - mem["rss_before_gb"]
    return mem


def summarize(kind: str, size: int, rows: int, impl: str, times: dict[str, list[float]], counts, reps):
    total, window, full = (statistics.median(times[k]) for k in ("total", WINDOW, FULL))
    rest = statistics.median([t - w - f for t, w, f in zip(times["total"], times[WINDOW], times[FULL])])
    return {
        "kind": kind,
        "size": size,
        "label": f"{size}px" if kind == "image" else f"{size}x{FRAME_SIDE}px frames",
        "rows": rows,
        "impl": impl,
        "reps": reps,
        "slice_seconds": total,
        "all_slice_seconds": times["total"],
        "window_block_seconds": window,
        "full_block_seconds": full,
        "rest_seconds": rest,
        "window_us_per_token": window / rows * 1e6,
        "full_us_per_token": full / rows * 1e6,
        "tower_seconds_extrapolated": rest + counts[WINDOW] * window + counts[FULL] * full,
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    styles = {"ours": ("tab:blue", "ours"), "hf-sdpa": ("tab:orange", "transformers sdpa")}
    for impl, (color, name) in styles.items():
        for kind, marker, dash in (("image", "o", "-"), ("video", "s", "--")):
            pts = sorted(
                (r for r in rows if r["impl"] == impl and r["kind"] == kind), key=lambda r: r["rows"]
            )
            if not pts:
                continue
            n = [r["rows"] for r in pts]
            axes[0].plot(
                n,
                [r["window_us_per_token"] for r in pts],
                dash,
                marker=marker,
                color=color,
                alpha=0.55,
                label=f"{name}, {kind}s, window block",
            )
            axes[0].plot(
                n,
                [r["full_us_per_token"] for r in pts],
                dash,
                marker=marker,
                color=color,
                label=f"{name}, {kind}s, full block",
            )
            axes[1].plot(
                n,
                [r["tower_seconds_extrapolated"] for r in pts],
                dash,
                marker=marker,
                color=color,
                label=f"{name}, {kind}s",
            )
            mem = [(r["rows"], r["forward_peak_gb"]) for r in pts if r.get("forward_peak_gb") is not None]
            if mem:
                axes[2].plot(*zip(*mem), dash, marker=marker, color=color, label=f"{name}, {kind}s")
    axes[0].set(title="time per token of one block", ylabel="µs per patch row", xscale="log")
    axes[1].set(
        title="32-block tower (28 window + 4 full blocks)", ylabel="seconds", xscale="log", yscale="log"
    )
    axes[2].set(title="peak memory of one forward (above weights)", ylabel="GB", xscale="log")
    for ax in axes:
        ax.set_xlabel("patch rows (4 per merged token)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Qwen2.5-VL-7B vision tower on CPU: images 448-1792 px (o), videos of 224 px frames (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", default="448,896,1344,1792", help="image sides in pixels")
    parser.add_argument("--videos", default="8,32,128", help="video frame counts (224x224 frames)")
    parser.add_argument("--reps", type=int, default=3, help="repeats for points of at most 4096 rows")
    parser.add_argument("--large-reps", type=int, default=1, help="repeats for larger points")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process peak memory runs")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "tower_scaling.json")
    parser.add_argument("--plot", type=Path, default=REPO_ROOT / "docs" / "tower_scaling.png")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, kind, size = args.child.split(":")
        child_memory(impl, kind, int(size))
        return

    torch.set_grad_enabled(False)
    config, counts = slice_config()
    v = config.vision
    hf, ours, _ = build_towers_for(config, torch.device("cpu"))
    towers = {"ours": ours, "hf-sdpa": hf}
    kinds = [FULL if v.is_full_attention(i) else WINDOW for i in range(v.depth)]
    points = [("image", int(s)) for s in args.images.split(",") if s] + [
        ("video", int(s)) for s in args.videos.split(",") if s
    ]
    small = point_grid("image", 112, v.patch_size, v.temporal_patch_size)
    time_point(towers, kinds, torch.randn(int(small.prod()), v.patch_dim), small, reps=1)  # warm-up
    rows, started = [], time.perf_counter()
    for kind, size in points:
        grid = point_grid(kind, size, v.patch_size, v.temporal_patch_size)
        n = int(grid.prod())
        torch.manual_seed(1)
        pixels = torch.randn(n, v.patch_dim)
        reps = args.reps if n <= 4096 else args.large_reps
        times = time_point(towers, kinds, pixels, grid, reps)
        for impl in towers:
            row = summarize(kind, size, n, impl, times[impl], counts, reps)
            if not args.no_memory:
                row.update(memory_in_fresh_process(impl, kind, size))
            rows.append(row)
            mem = f"  forward peak +{row['forward_peak_gb']:.2f} GB" if "forward_peak_gb" in row else ""
            print(
                f"{row['label']:>22s} {n:6d} rows {impl:8s} window {row['window_us_per_token']:7.1f} us/tok  "
                f"full {row['full_us_per_token']:7.1f} us/tok  tower ~{row['tower_seconds_extrapolated']:7.1f} s{mem}",
                flush=True,
            )
    payload = {
        "benchmark": "tower_scaling",
        "env": environment(),
        "threads": torch.get_num_threads(),
        "preset": PRESET,
        "frame_side": FRAME_SIDE,
        "slice": "patch embed + 1 window block + 1 full block + merger; tower = rest + 28 window + 4 full",
        "block_counts": counts,
        "repeats": {"up_to_4096_rows": args.reps, "larger": args.large_reps},
        "measured": "alternating ours / hf-sdpa per repeat, medians; machine shared with other jobs",
        "run_seconds": time.perf_counter() - started,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    plot(rows, args.plot)
    print(f"wrote {args.out} and {args.plot} in {payload['run_seconds']:.0f} s")


if __name__ == "__main__":
    main()
