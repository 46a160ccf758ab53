"""GPU check, step vision tower: Qwen2.5-VL-7B's tower end to end at 1344x1344 in bf16, ours eager
(Triton kernels), ours eager on the torch path, ours compiled, and transformers' sdpa tower on the
same weights (converted through our key mapping, shared, not copied); then Qwen3-VL-8B's tower (27
blocks of width 1152, head_dim 72, full attention per frame, learned positions, 3 DeepStack mergers)
at 1344x1344 (84 x 84 patches of 16 px), ours eager both ways and transformers' sdpa (no compile: it
would double the step's time). Time and peak memory; each row names its tower.

    python benchmarks/gpu_check_tower.py --json PATH [--dry-run]

  ours-eager        VisionTower(kernels="triton"): our rotary and window-attention kernels
  ours-eager-torch  the same tower with the torch attention and rotary (`set_kernels("torch")`)
  ours-compiled     torch.compile(tower) called with its layout computed up front (`tower.layout`), so
                    the compiled graph holds no input checks and no host sync; its first call (the
                    compile) is timed separately as `compile_s`
  hf-sdpa           transformers' Qwen2.5-VL vision model, attn_implementation "sdpa" (its per-window
                    SDPA loop, 5.x)
Each implementation is timed on the same pixels, interleaved, `REPS` times (median; CUDA events
around the forward); peak memory is the CUDA allocator's peak above the pre-forward level. The outputs
are compared with transformers' (relative Frobenius error; bf16 math differs in rounding, so this is
reported, and must only stay below 5e-2, i.e. ~6 bf16 ulps of the typical value: a wrong layout or
mapping gives ~1; for Qwen3-VL the merged features are compared). Dry run: the tiny Qwen2.5-VL tower at
112x112 and the tiny Qwen3-VL tower at 128x128, fp32, CPU, kernels interpreted, and the aot_eager
backend (dynamo and AOT autograd trace the same graph; inductor's CPU codegen would take minutes on a
small CPU).
"""

from __future__ import annotations

import statistics
import time

import torch
from _common import print_table
from gpu_check_common import parse_step_args, write_step

STEP = "vision_tower"
PRESET, SIDE_PX, REPS = "qwen2.5-vl-7b", 1344, 5
DRY_PRESET, DRY_SIDE_PX, DRY_REPS = "tiny-qwen2.5-vl", 112, 1
QWEN3_PRESET, QWEN3_SIDE_PX, DRY_QWEN3_PRESET, DRY_QWEN3_SIDE_PX = "qwen3-vl-8b", 1344, "tiny-qwen3-vl", 128
MAX_RELATIVE_ERROR = 5e-2
IMPLS = ("ours-eager", "ours-eager-torch", "ours-compiled", "hf-sdpa")
QWEN3_IMPLS = ("ours-eager", "ours-eager-torch", "hf-sdpa")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed_ms(fn, device: torch.device) -> float:
    """One call in milliseconds: CUDA events around it on a GPU, the wall clock on the CPU."""
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - start)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end)


def _set_kernels(tower: torch.nn.Module, choice: str) -> None:
    for module in tower.modules():
        if module is not tower and hasattr(module, "set_kernels"):
            module.set_kernels(choice)


def run(dry_run: bool) -> tuple[list[dict], dict]:
    """Both towers' rows; notes per tower."""
    reps = DRY_REPS if dry_run else REPS
    towers = (
        (DRY_PRESET, DRY_SIDE_PX, IMPLS) if dry_run else (PRESET, SIDE_PX, IMPLS),
        (DRY_QWEN3_PRESET, DRY_QWEN3_SIDE_PX, QWEN3_IMPLS)
        if dry_run
        else (QWEN3_PRESET, QWEN3_SIDE_PX, QWEN3_IMPLS),
    )
    rows, notes = [], []
    for preset, side_px, impls in towers:
        tower_rows, tower_notes = run_tower(dry_run, preset, side_px, reps, impls)
        rows += tower_rows
        notes.append(tower_notes)
        if not dry_run:
            torch.cuda.empty_cache()  # the first tower's weights go before the second is built
    return rows, {"towers": notes}


def run_tower(
    dry_run: bool, preset: str, side_px: int, reps: int, impls: tuple[str, ...]
) -> tuple[list[dict], dict]:
    from bench_vision_tower import PeakMemory, build_towers, matmul_flops

    device = torch.device("cpu" if dry_run else "cuda")
    dtype = torch.float32 if dry_run else torch.bfloat16
    hf, ours, config = build_towers(preset, device, dtype=dtype, kernels="triton")
    patches = side_px // config.vision.patch_size
    grid = torch.tensor([[1, patches, patches]])
    torch.manual_seed(1)
    pixels = torch.randn(patches * patches, config.vision.patch_dim, device=device, dtype=dtype)
    layout = ours.layout(pixels, grid)  # checks and layout once, outside every timed region
    hf_grid = grid.to(device)  # transformers is given its grid on the model's device, as a processor batch is
    backend = "aot_eager" if dry_run else "inductor"  # the dry run traces the same graph, compiles none
    compiled = torch.compile(ours, dynamic=False, backend=backend)

    def forward(impl: str) -> torch.Tensor:
        if impl == "hf-sdpa":
            return hf(pixels, grid_thw=hf_grid).pooler_output
        _set_kernels(ours, "torch" if impl == "ours-eager-torch" else "triton")
        out = (compiled if impl == "ours-compiled" else ours)(pixels, grid, layout)
        return getattr(out, "merged", out)  # Qwen3-VL's tower returns merged and DeepStack features

    notes: dict = {"preset": preset, "image": f"{side_px}x{side_px}", "patches": patches * patches,
                   "dtype": str(dtype)[6:], "reps": reps}  # fmt: skip
    if "ours-compiled" in impls:
        notes["compile"] = f"torch.compile(tower, dynamic=False, backend={backend!r})"
    outputs, compile_s = {}, None
    with torch.inference_mode():
        for impl in impls:  # warm-up: kernels compiled, the tower compiled (timed), allocator primed
            start = time.perf_counter()
            outputs[impl] = forward(impl).float()
            _sync(device)
            if impl == "ours-compiled":
                compile_s = time.perf_counter() - start
        times: dict[str, list[float]] = {impl: [] for impl in impls}
        peaks: dict[str, list[int]] = {impl: [] for impl in impls}
        for _ in range(reps):
            for impl in impls:
                with PeakMemory(device) as memory:
                    times[impl].append(_timed_ms(lambda impl=impl: forward(impl), device))
                peaks[impl].append(memory.peak_bytes)
    _set_kernels(ours, "triton")
    reference = outputs["hf-sdpa"]
    flops = matmul_flops(config, grid)
    base = statistics.median(times["hf-sdpa"])
    rows = []
    for impl in impls:
        ms = statistics.median(times[impl])
        error = ((outputs[impl] - reference).norm() / reference.norm()).item()
        row = dict(tower=preset, impl=impl, ms=ms, all_ms=times[impl], ratio_vs_hf_sdpa=ms / base,
                   peak_mem_gb=max(peaks[impl]) / 2**30, relative_error_vs_hf=error,
                   agrees=error <= MAX_RELATIVE_ERROR, TFLOP_s=flops / (ms * 1e9))  # fmt: skip
        if impl == "ours-compiled":
            row["compile_s"] = compile_s
        rows.append(row)
    notes["matmul_gflop"] = flops / 1e9
    return rows, notes


def main() -> None:
    args = parse_step_args(__doc__.splitlines()[0])
    rows, notes = run(args.dry_run)
    bad = [r for r in rows if not r["agrees"]]
    write_step(args.json, STEP, args.dry_run, rows, [], {**notes, "findings": bad})
    print_table(
        rows, ["tower", "impl", "ms", "ratio_vs_hf_sdpa", "peak_mem_gb", "relative_error_vs_hf", "compile_s"]
    )
    if bad:
        raise SystemExit(f"outputs differ from transformers' beyond {MAX_RELATIVE_ERROR}: {bad}")


if __name__ == "__main__":
    main()
