"""Vision tower speed and memory: ours (torch path) vs transformers (sdpa, eager), same weights.

Real-size towers (Qwen2.5-VL-7B and Qwen2-VL-7B: depth 32, width 1280, 16 heads; Qwen3-VL-8B: depth 27,
width 1152, 16 heads, patch 16, learned positions and 3 DeepStack mergers) with random weights,
images of 448x448 and 896x896 (plus 1344x1344 on a GPU). Every implementation runs in this one process,
alternating, on the same weight tensors (ours is loaded from HF's state dict without copying).
Reported per (tower, size, implementation): median forward time, ratio to HF sdpa, peak memory above
the pre-forward baseline (RSS sampled every 2 ms on CPU; CUDA peak allocator stats on GPU), and the
roofline fraction = matmul FLOPs of the tower / (time x fp32 GEMM rate measured here on the same
Linear shapes; measured after every repetition, and each repetition's fraction uses that repetition's
rate, so the JSON carries the run-to-run spread). "ours+maps" requests the attention maps of one
full-attention block through the taps; HF can only produce maps on its eager path. `--compile` adds
"ours-compiled": a second tower on the same weight tensors whose blocks are compiled one by one
(`block.compile()`, regional compilation: one graph per block kind, reused by every block of that kind);
its warm-up forward at the measured size (the compile) is timed and reported separately.

    python benchmarks/bench_vision_tower.py                 # both towers, 448 and 896, 2 repetitions
    python benchmarks/bench_vision_tower.py --sizes 448 --reps 3 --towers qwen2.5-vl-7b
    python benchmarks/bench_vision_tower.py --sizes 896 --impls ours,hf-sdpa --compile --no-fresh-memory
    python benchmarks/bench_vision_tower.py --towers qwen3-vl-8b --impls ours,hf-sdpa \
        --out benchmarks/results/vision_tower-qwen3-vl-8b.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from qwenvl_min import Config
from qwenvl_min.model.vision import VisionTower
from qwenvl_min.model.vision_qwen3 import Qwen3VisionTower
from qwenvl_min.weights_convert import hf_key_to_ours
from qwenvl_min.weights_convert.mapping import hf_tensor_to_ours

RESULTS = Path(__file__).resolve().parent / "results"


class PeakMemory:
    """Peak memory above the baseline during a `with` block (CPU: sampled RSS; CUDA: allocator peak)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_bytes = device, 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        self._base, self._max, self._stop = self._rss(), 0, threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._max = max(self._max, self._rss())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._base
            return
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self._max, self._rss()) - self._base


def tower_class(config: Config) -> type[torch.nn.Module]:
    """Our tower for a config: the Qwen3-VL one (learned positions, DeepStack) or the Qwen2 families'."""
    return Qwen3VisionTower if config.vision.family == "qwen3_vl" else VisionTower


def build_towers(
    preset: str,
    device: torch.device,
    with_ours: bool = True,
    dtype: torch.dtype = torch.float32,
    kernels: str | None = None,
    depth: int | None = None,
) -> tuple[torch.nn.Module, VisionTower | None, Config]:
    """A preset's towers (see `build_towers_for`), cut to its first `depth` blocks (`sliced`)."""
    return build_towers_for(sliced(Config.preset(preset), depth), device, with_ours, dtype, kernels)


def sliced(config: Config, depth: int | None) -> Config:
    """The first `depth` blocks of the tower (full-attention blocks where the real tower has them), at the
    real widths; None: the whole tower. Qwen2.5-VL-7B at depth 8 keeps the real 7:1 window:full mix;
    Qwen3-VL keeps the DeepStack mergers of the blocks in the slice."""
    if depth is None:
        return config
    v = config.vision
    full = tuple(i for i in v.fullatt_block_indexes if i < depth)
    deepstack = tuple(i for i in v.deepstack_indexes if i < depth)  # Qwen3-VL: the levels the slice has
    return dataclasses.replace(
        config,
        vision=dataclasses.replace(v, depth=depth, fullatt_block_indexes=full, deepstack_indexes=deepstack),
    )


def build_towers_for(
    config: Config,
    device: torch.device,
    with_ours: bool = True,
    dtype: torch.dtype = torch.float32,
    kernels: str | None = None,
) -> tuple[torch.nn.Module, VisionTower | None, Config]:
    """transformers' vision model (sdpa, random init, seed 0, built on `device` in `dtype`) and ours
    sharing its weight tensors through our key mapping; `kernels` as `VisionTower`'s."""
    import transformers

    hf_vision = config.to_hf()["vision_config"]
    if config.model_type == "qwen2_vl":
        hf_cfg = transformers.Qwen2VLVisionConfig(**hf_vision)
        hf_cls = transformers.models.qwen2_vl.modeling_qwen2_vl.Qwen2VisionTransformerPretrainedModel
    elif config.vision.family == "qwen3_vl":
        hf_cfg = transformers.models.qwen3_vl.configuration_qwen3_vl.Qwen3VLVisionConfig(**hf_vision)
        hf_cls = transformers.models.qwen3_vl.modeling_qwen3_vl.Qwen3VLVisionModel
    else:
        hf_cfg = transformers.Qwen2_5_VLVisionConfig(**hf_vision)
        hf_cls = transformers.models.qwen2_5_vl.modeling_qwen2_5_vl.Qwen2_5_VisionTransformerPretrainedModel
    hf_cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):  # random init where the weights live (fast on a GPU)
        hf = hf_cls(hf_cfg).to(dtype).eval()
    if not with_ours:
        return hf, None, config
    state = {hf_key_to_ours("visual." + k, config.model_type): v for k, v in hf.state_dict().items()}
    state = {
        k.removeprefix("visual."): hf_tensor_to_ours(config, k, v)  # the patch embedding: a view
        for k, v in state.items()
        if k is not None
    }
    with torch.device("meta"):
        ours = tower_class(config)(config.vision, kernels)
    ours.load_state_dict(state, strict=True, assign=True)  # shares HF's tensors: no second copy
    return hf, ours.eval(), config


def matmul_flops(config: Config, grid: torch.Tensor) -> float:
    """Linear-layer and attention (q k^T, p v) multiply-add FLOPs of one tower forward."""
    v = config.vision
    n = int(grid.prod(dim=1).sum())
    d, f = v.width, v.mlp_hidden
    mlp = 2 * n * d * f * (3 if v.family == "qwen2_5_vl" else 2)
    per_block_linear = 2 * n * d * 3 * d + 2 * n * d * d + mlp
    frame = int(grid[0, 1] * grid[0, 2])
    full_l2 = n * frame  # sum over frame segments of L^2 (one frame per image here)
    window_l2 = sum(size * size for size in _window_sizes(config, grid)) if v.family == "qwen2_5_vl" else 0
    attention = 0
    for block in range(v.depth):
        attention += 4 * d * (full_l2 if v.is_full_attention(block) else window_l2)
    merged = d * v.merge_size**2
    merger = 2 * (n // 4) * merged * merged + 2 * (n // 4) * merged * v.out_width
    merger *= 1 + len(v.deepstack_indexes)  # Qwen3-VL's DeepStack mergers have the main one's shapes
    return v.depth * per_block_linear + attention + merger + 2 * n * v.patch_dim * d


def _window_sizes(config: Config, grid: torch.Tensor) -> list[int]:
    from qwenvl_min.model.geometry import window_unit_order

    return window_unit_order(grid, config.vision.window_merged, config.vision.merge_size)[1]


def gemm_rate(config: Config, n: int, device: torch.device, reps: int = 3) -> float:
    """fp32 FLOP/s of torch Linear on the tower's own shapes (a proxy for the machine's GEMM roofline)."""
    v = config.vision
    shapes = [
        (n, v.width, 3 * v.width),
        (n, v.width, v.width),
        (n, v.width, v.mlp_hidden),
        (n, v.mlp_hidden, v.width),
    ]
    flops, seconds = 0.0, 0.0
    for m, k, o in shapes:
        x, w, b = (
            torch.randn(m, k, device=device),
            torch.randn(o, k, device=device),
            torch.randn(o, device=device),
        )
        torch.nn.functional.linear(x, w, b)
        for _ in range(reps):
            _sync(device)
            start = time.perf_counter()
            torch.nn.functional.linear(x, w, b)
            _sync(device)
            seconds += time.perf_counter() - start
            flops += 2 * m * k * o
    return flops / seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_once(impl: str, hf, ours: VisionTower, config: Config, pixels, grid, device) -> tuple[float, int]:
    full_block = next(i for i in range(config.vision.depth) if config.vision.is_full_attention(i))
    with torch.inference_mode(), PeakMemory(device) as mem:
        _sync(device)
        start = time.perf_counter()
        if impl == "ours":
            ours(pixels, grid)
        elif impl == "ours-compiled":
            compiled(ours)(pixels, grid)
        elif impl == "ours+maps":
            from qwenvl_min.interp.taps import Taps

            with Taps(ours, read=[f"blocks.{full_block}.attn.probs"]):  # paths inside the tower
                ours(pixels, grid)
        else:
            hf.set_attn_implementation(impl.removeprefix("hf-"))
            hf(pixels, grid_thw=grid)
        _sync(device)
        elapsed = time.perf_counter() - start
    return elapsed, mem.peak_bytes


_COMPILED: dict[int, VisionTower] = {}


def compiled(ours: VisionTower) -> VisionTower:
    """A second tower on `ours`'s weight tensors with every block compiled (built once per tower)."""
    if id(ours) not in _COMPILED:
        with torch.device("meta"):
            twin = type(ours)(ours.config)
        twin.load_state_dict(ours.state_dict(), strict=True, assign=True)  # shares the tensors
        for block in twin.blocks:
            block.compile()
        _COMPILED[id(ours)] = twin.eval()
    return _COMPILED[id(ours)]


def child_memory(preset: str, impl: str, side: int) -> None:
    """Fresh process, one copy of one implementation's weights, one forward: print peak RSS as JSON.

    Peak memory is measured per implementation in its own process because a process's RSS keeps the
    allocator's history (freed blocks are not always returned to the OS), which would blur an in-process
    comparison. Weights are built directly (random init) so only one copy exists.
    """
    device = torch.device("cpu")
    config = Config.preset(preset)
    torch.manual_seed(0)
    if impl.startswith("ours"):
        tower = tower_class(config)(config.vision).eval()
    else:
        hf, _, _ = build_towers(preset, device, with_ours=False)
        tower = hf
    patches = side // config.vision.patch_size
    grid = torch.tensor([[1, patches, patches]])
    pixels = torch.randn(patches * patches, config.vision.patch_dim)
    ours = tower if impl.startswith("ours") else None
    before = PeakMemory._rss()
    _, peak = run_once(impl, None if ours else tower, ours, config, pixels, grid, device)
    print(
        json.dumps(
            {
                "rss_before_forward_gb": before / 2**30,
                "peak_above_before_gb": peak / 2**30,
                "peak_rss_gb": _vm_hwm_bytes() / 2**30,
            }
        )
    )


def _vm_hwm_bytes() -> int:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's peak into a spawned
    child's ru_maxrss, which would credit every child with the benchmark parent's memory."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def memory_in_fresh_processes(preset: str, impl: str, side: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", f"{preset}:{impl}:{side}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def versions() -> dict[str, str]:
    import transformers

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": commit or "unknown",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--towers", default="qwen2.5-vl-7b,qwen2-vl-7b")
    parser.add_argument("--sizes", default=None, help="image sides in pixels (default 448,896; +1344 on GPU)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--impls", default="ours,hf-sdpa,hf-eager,ours+maps")
    parser.add_argument("--out", type=Path, default=RESULTS / "vision_tower.json")
    parser.add_argument("--no-fresh-memory", action="store_true", help="skip the per-process peak RSS runs")
    parser.add_argument(
        "--compile", action="store_true", help="add ours-compiled (blocks compiled one by one)"
    )
    parser.add_argument("--depth", type=int, help="time only the first DEPTH blocks (a slice; default all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        preset, impl, side = args.child.split(":")
        child_memory(preset, impl, int(side))
        return

    if args.depth is not None and not args.no_fresh_memory:
        parser.error(
            "--depth times a slice of the tower; pass --no-fresh-memory (the memory runs build it whole)"
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = [
        int(s) for s in (args.sizes or ("448,896,1344" if device.type == "cuda" else "448,896")).split(",")
    ]
    impls = args.impls.split(",") + (["ours-compiled"] if args.compile else [])
    rows = []
    print(f"device: {device_name(device)}; torch {torch.__version__}")
    for preset in args.towers.split(","):
        hf, ours, config = build_towers(preset, device, depth=args.depth)
        for side in sizes:
            patches = side // config.vision.patch_size
            grid = torch.tensor([[1, patches, patches]])
            torch.manual_seed(1)
            pixels = torch.randn(patches * patches, config.vision.patch_dim, device=device)
            small = torch.tensor([[1, 8, 8]])
            for impl in impls:  # warm-up on a small input
                run_once(
                    impl,
                    hf,
                    ours,
                    config,
                    torch.randn(64, config.vision.patch_dim, device=device),
                    small,
                    device,
                )
            warmup = {}
            if "ours-compiled" in impls:  # compile for this size before anything is timed
                warmup["ours-compiled"] = run_once("ours-compiled", hf, ours, config, pixels, grid, device)[0]
                print(
                    f"ours-compiled warm-up (compile) at {side}px: {warmup['ours-compiled']:.1f} s",
                    flush=True,
                )
            times: dict[str, list[float]] = {i: [] for i in impls}
            peaks: dict[str, list[int]] = {i: [] for i in impls}
            rates: list[float] = []
            for _ in range(args.reps):
                for impl in impls:
                    t, peak = run_once(impl, hf, ours, config, pixels, grid, device)
                    times[impl].append(t)
                    peaks[impl].append(peak)
                rates.append(gemm_rate(config, patches * patches, device))  # once per repetition
            flops = matmul_flops(config, grid)
            rate = statistics.median(rates)
            base = statistics.median(times["hf-sdpa"]) if "hf-sdpa" in times else None
            plain = statistics.median(times["ours"]) if "ours" in times else None
            fresh = {}
            if device.type == "cpu" and not args.no_fresh_memory:
                fresh = {impl: memory_in_fresh_processes(preset, impl, side) for impl in impls}
            for impl in impls:
                t = statistics.median(times[impl])
                row = {
                    "tower": preset,
                    "depth": config.vision.depth,
                    "image": f"{side}x{side}",
                    "patches": patches * patches,
                    "impl": impl,
                    "seconds": t,
                    "all_seconds": times[impl],
                    "ratio_vs_hf_sdpa": t / base if base else None,
                    "ratio_vs_ours_plain": t / plain if plain else None,
                    "peak_mem_above_baseline_gb": max(peaks[impl]) / 2**30,
                    "fresh_process": fresh.get(impl),
                    "matmul_gflop": flops / 1e9,
                    "gemm_gflops_measured": rate / 1e9,
                    "all_gemm_gflops_measured": [r / 1e9 for r in rates],
                    "roofline_fraction": flops / (t * rate),
                    # each repetition against the GEMM rate measured right after it: the run-to-run spread
                    "all_roofline_fractions": [flops / (ti * ri) for ti, ri in zip(times[impl], rates)],
                    "warmup_seconds": warmup.get(impl),
                }
                rows.append(row)
                mem = fresh.get(impl)
                mem_text = (
                    f"  fresh process: peak RSS {mem['peak_rss_gb']:.2f} GB, forward +{mem['peak_above_before_gb']:.2f} GB"
                    if mem
                    else ""
                )
                print(
                    f"{preset:14s} {side:5d}px {impl:10s} {t:8.2f} s  x{row['ratio_vs_hf_sdpa'] or 0:5.2f} vs hf-sdpa  "
                    f"peak +{row['peak_mem_above_baseline_gb']:.2f} GB  roofline {row['roofline_fraction']:.2f}{mem_text}"
                )
        del hf, ours
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"device": device_name(device), **versions(), "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
