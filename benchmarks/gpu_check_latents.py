"""GPU check, step latents: the Qwen2.5-VL-7B tower in bf16 over JPEG photos, the transformers user's loop
vs `qwenvl-min latents` (workers + packing), and the tower's matmul rate vs the card's bf16 matmul rate.

    python benchmarks/gpu_check_latents.py --json PATH [--dry-run]

  hf-loop     one image at a time: PIL open -> transformers' Qwen2-VL image processor (its torchvision
              backend where torchvision is installed, else the PIL one) -> model.visual -> .cpu() ->
              safetensors save_file (benchmarks/bench_latents.py)
  ours        `latents --device cuda --dtype bfloat16 --workers W` with packing (the CLI in this process)
Cases: PHOTOS images of 448x448 and of 896x896 (the processor keeps both sizes: multiples of 28 within its
budget); images/s for each, and ours / hf-loop (target >= 3x). The tower alone on one pack of the 448 px
images (CUDA events, median of REPS): its linear and attention matmul FLOPs / time, against torch.matmul
bf16 at 8192^3 on the same card (target >= 50 %). The weights are random (N(0, 1/fan_in)), written once as
an HF checkpoint with the 7B tower and a one-layer decoder of the 7B's width (the decoder never runs:
only tower taps); ours and transformers' outputs are compared (relative max error, bf16 rounding).
Dry run: the tiny model, fp32, CPU, two small images per case, no workers; timings mean nothing.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import print_table
from gpu_check_common import parse_step_args, write_step
from PIL import Image

STEP = "latents"
PHOTOS, SIDES, WORKERS, REPS = 16, (448, 896), 6, 5
DRY_PHOTOS, DRY_SIDES = 2, (56, 112)
TARGET_SPEEDUP, TARGET_MATMUL_FRACTION = 3.0, 0.5
MAX_RELATIVE_ERROR = 5e-2  # bf16 towers that differ in rounding only agree far better; a wrong layout ~1


def photos(folder: Path, side: int, count: int) -> list[Path]:
    rng = np.random.default_rng(side)
    paths = []
    for k in range(count):
        small = rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC)
        path = folder / f"p{side}-{k:02d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """FLOP/s of torch.matmul on (size x size) @ (size x size) (CUDA events, median of 10)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = [_timed_s(lambda: a @ b, device) for _ in range(12)][2:]
    return 2 * size**3 / statistics.median(times)


def _timed_s(fn, device: torch.device) -> float:
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3


def tower_rate(
    checkpoint: Path, images: list[Path], device: torch.device, dtype: torch.dtype, reps: int
) -> dict:
    """The tower alone on one pack of `images` (our preprocessing): time and matmul FLOP/s."""
    from bench_vision_tower import matmul_flops

    from qwenvl_min import QwenVL
    from qwenvl_min.inputs.input_lists import source_of
    from qwenvl_min.latents.packing import Pack
    from qwenvl_min.latents.prepare import InputPreparer, Recipe

    model = QwenVL.from_pretrained(checkpoint, dtype=dtype, device=device)
    preparer = InputPreparer(model.config, checkpoint, Recipe())
    pack = Pack.of([preparer(source_of(str(p))).to(device) for p in images], model.config.vision.merge_size)
    pixels, grid = pack.tower_inputs()
    layout = model.visual.layout(pixels, grid)
    with torch.inference_mode():
        model.visual(pixels, grid, layout)  # warm-up
        seconds = statistics.median(
            _timed_s(lambda: model.visual(pixels, grid, layout), device) for _ in range(reps)
        )
    flops = matmul_flops(model.config, grid.cpu())
    return {"rows": int(pixels.shape[0]), "tower_ms": 1e3 * seconds, "matmul_tflop_s": flops / seconds / 1e12}


def relative_error(ours_dir: Path, hf_dir: Path) -> float:
    from safetensors.torch import load_file

    worst = 0.0
    for path in sorted(hf_dir.glob("*.safetensors")):
        want = load_file(path)["visual.merger"].float()
        got = load_file(ours_dir / path.name)["visual.merger"].float()
        worst = max(worst, ((got - want).abs().max() / want.abs().max().clamp(min=1)).item())
    return worst


def run(dry_run: bool) -> tuple[list[dict], dict]:
    from bench_latents import hf_loop, hf_model, image_processor, model_config, ours, write_checkpoint

    device = torch.device("cpu" if dry_run else "cuda")
    dtype = torch.float32 if dry_run else torch.bfloat16
    count, sides = (DRY_PHOTOS, DRY_SIDES) if dry_run else (PHOTOS, SIDES)
    workers, reps = (0, 1) if dry_run else (WORKERS, REPS)
    try:
        import torchvision  # noqa: F401

        pil = False
    except ImportError:
        pil = True
    notes: dict = {"processor": "Qwen2VLImageProcessorPil" if pil else "Qwen2VLImageProcessor (torchvision)"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-latents-") as tmp:
        root = Path(tmp)
        config = model_config("tiny", 0) if dry_run else model_config("wide", 32)
        if not dry_run:  # the released tower: 32 blocks, full attention in 7, 15, 23, 31
            from qwenvl_min import Config

            vision = Config.preset("qwen2.5-vl-7b").vision
            config = dataclasses.replace(config, vision=vision)
        checkpoint = write_checkpoint(root / "model", config, dtype)
        model = hf_model(checkpoint, str(device), dtype)
        processor = image_processor(pil)
        dtype_flag = ["--device", str(device), "--dtype", "float32" if dry_run else "bfloat16"]
        for side in sides:
            folder = root / f"in{side}"
            folder.mkdir()
            images = photos(folder, side, count)
            hf_loop(checkpoint, images[:1], [], root / f"warm-hf{side}", str(device), dtype, processor, model)
            ours(checkpoint, images[:1], root / f"warm-ours{side}", workers, 16384, *dtype_flag)
            hf_s = hf_loop(checkpoint, images, [], root / f"hf{side}", str(device), dtype, processor, model)
            ours_s = ours(checkpoint, images, root / f"ours{side}", workers, 16384, *dtype_flag)
            speedup = hf_s / ours_s
            rows.append(dict(case=f"{side}x{side}", images=count, hf_images_per_s=count / hf_s,
                             ours_images_per_s=count / ours_s, speedup=speedup, target=TARGET_SPEEDUP,
                             relative_error_vs_hf=relative_error(root / f"ours{side}", root / f"hf{side}")))  # fmt: skip
        del model
        peak = matmul_rate(device, dtype, 512 if dry_run else 8192)
        tower = tower_rate(checkpoint, sorted((root / f"in{sides[0]}").glob("*.jpg")), device, dtype, reps)
        fraction = tower["matmul_tflop_s"] * 1e12 / peak
        rows.append(dict(case=f"tower, one pack of {count} x {sides[0]} px", images=count, **tower,
                         matmul_peak_tflop_s=peak / 1e12, fraction_of_matmul=fraction,
                         target=TARGET_MATMUL_FRACTION))  # fmt: skip
    notes |= {
        "dtype": str(dtype)[6:],
        "workers": workers,
        "model": "Qwen2.5-VL-7B tower" if not dry_run else "tiny",
    }
    return rows, notes


def main() -> None:
    args = parse_step_args(__doc__.splitlines()[0])
    rows, notes = run(args.dry_run)
    bad = [r for r in rows if r.get("relative_error_vs_hf", 0) > MAX_RELATIVE_ERROR]
    write_step(args.json, STEP, args.dry_run, rows, [], {**notes, "findings": bad})
    print_table(
        rows, ["case", "hf_images_per_s", "ours_images_per_s", "speedup", "tower_ms", "fraction_of_matmul"]
    )
    if bad:
        raise SystemExit(f"outputs differ from transformers' beyond {MAX_RELATIVE_ERROR}: {bad}")


if __name__ == "__main__":
    main()
