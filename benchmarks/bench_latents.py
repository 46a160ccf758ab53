"""Latents over a small dataset: the transformers user's loop vs `qwenvl-min latents` (workers + packing).

The same inputs (JPEG photos 640x480 and short clips, made here), the same weights, the same CPU budget
(this process and its workers on the same cores, one process's torch threads = the cores), the same tap
(the tower's merged features, `visual.merger`), one safetensors file per input. Wall time for the whole
set, model loading excluded for both (ours: the CLI's own load is inside its time, a few ms for the tiny
model, about 1 s for the wide one; it counts against us).

(a) the transformers loop, one input at a time: PIL open -> `Qwen2VLImageProcessorPil` -> `model.visual`
    -> `safetensors.torch.save_file`. Clips: transformers' video processor needs torchvision, which cannot
    be installed beside the pinned CPU torch, so the loop samples and preprocesses clips with our
    `preprocess_video` (qwen-vl-utils' 2 fps) and only the tower and the save are transformers' work.
(b) `qwenvl-min latents --workers W [--batch-tokens N]` (main() in this process; workers are forked; without
--batch-tokens the CLI's default pack size, which on a CPU depends on the tower's width).

Models: `tiny` (the tiny Qwen2.5-VL preset: pipeline-bound, target ours <= 0.5x the loop's wall time) and
`wide` (the Qwen2.5-VL-7B tower's width, heads, MLP and windows with `--wide-depth` blocks, full attention
in the last; compute-bound, target <= 1.0x), each in fp32 on CPU. Each case runs `--rounds` interleaved rounds and keeps each side's fastest (the
least disturbed by other work on a shared machine: its small ops slow down many times when another process
takes a core); every round's time is in the JSON, with the load average before and after.

    python benchmarks/bench_latents.py [--photos 64 --clips 4] [--wide-photos 8 --wide-clips 1]
        [--wide-depth 8] [--workers 2] [--rounds 3] [--models tiny,wide] [--out results/latents-<device>.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS_DIR, environment, print_table, slug, write_results
from PIL import Image
from safetensors.torch import save_file

from qwenvl_min import Config, QwenVL
from qwenvl_min.cli.main import main as cli
from qwenvl_min.cli.support import load_model
from qwenvl_min.inputs.input_lists import source_of
from qwenvl_min.inputs.preprocess import IMAGE_MAX_PIXELS, IMAGE_MIN_PIXELS
from qwenvl_min.latents.packing import default_batch_tokens
from qwenvl_min.latents.prepare import InputPreparer, Recipe
from qwenvl_min.weights_convert import our_state_dict_to_hf

TARGETS = {"tiny": 0.5, "wide": 1.0}


def make_photos(folder: Path, count: int) -> list[Path]:
    """Smooth random 640x480 pictures saved as JPEG (quality 90): decoding costs what a photo costs."""
    rng = np.random.default_rng(0)
    paths = []
    for k in range(count):
        small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 13, (480, 640, 3))
        pixels = np.clip(np.asarray(image, dtype=np.int32) + noise, 0, 255).astype(np.uint8)
        path = folder / f"photo{k:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def make_clips(folder: Path, count: int) -> list[Path]:
    """3 s clips, 24 fps, 320x240, MPEG-4."""
    import av

    rng = np.random.default_rng(1)
    paths = []
    for k in range(count):
        path = folder / f"clip{k}.mp4"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("mpeg4", rate=24)
            stream.height, stream.width, stream.pix_fmt = 240, 320, "yuv420p"
            base = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            for t in range(72):
                frame = np.roll(base, 4 * t, axis=1)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
        paths.append(path)
    return paths


def model_config(kind: str, wide_depth: int) -> Config:
    tiny = Config.preset("tiny-qwen2.5-vl")
    if kind == "tiny":
        return tiny
    vision = dataclasses.replace(
        Config.preset("qwen2.5-vl-7b").vision, depth=wide_depth, fullatt_block_indexes=(wide_depth - 1,)
    )
    # a one-layer decoder of the 7B's width: the merger keeps its real output size; the decoder never runs
    text = dataclasses.replace(
        tiny.text,
        hidden_size=vision.out_width,
        num_layers=1,
        num_heads=28,
        num_kv_heads=4,
        mrope_section=(16, 24, 24),
    )
    return dataclasses.replace(tiny, vision=vision, text=text)


def write_checkpoint(directory: Path, config: Config, dtype: torch.dtype = torch.float32) -> Path:
    """Random weights (N(0, 1/fan_in) matrices, keeping activations O(1)) in the published HF layout."""
    torch.manual_seed(0)
    model = QwenVL(config, kernels="torch")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, p[0].numel() ** -0.5 if p.dim() >= 2 else 0.02)
    state = {k: v.to(dtype).contiguous() for k, v in our_state_dict_to_hf(config, model.state_dict()).items()}
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config.to_hf()))
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def hf_model(checkpoint: Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(checkpoint, dtype=dtype).to(device).eval()


def image_processor(pil: bool = True):
    """transformers' Qwen2-VL image processor at the library's default budget: the PIL backend (the only
    one beside the pinned CPU torch), or its default torchvision one where torchvision is installed."""
    size = {"shortest_edge": IMAGE_MIN_PIXELS, "longest_edge": IMAGE_MAX_PIXELS}
    if pil:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil(size=size)
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(size=size)


def hf_loop(
    checkpoint: Path,
    photos: list[Path],
    clips: list[Path],
    out: Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    processor=None,
    model=None,
) -> float:
    """The transformers user's loop; returns its wall time in seconds (model loading excluded; `model`:
    one loaded already)."""
    visual = (model or hf_model(checkpoint, device, dtype)).model.visual
    processor = processor or image_processor()
    config = Config.from_hf(json.loads((checkpoint / "config.json").read_text()))
    clip_inputs = InputPreparer(config, checkpoint, Recipe())  # our video sampling (see the docstring)
    out.mkdir(parents=True)

    def save(rows: torch.Tensor, grid: torch.Tensor, path: Path) -> None:
        features = visual(rows.to(device, dtype), grid_thw=grid.to(device))
        merged = features.pooler_output if hasattr(features, "pooler_output") else features
        save_file({"visual.merger": merged.cpu().contiguous()}, str(out / f"{path.stem}.safetensors"))

    started = time.perf_counter()
    with torch.inference_mode():
        for path in photos:
            batch = processor(images=Image.open(path).convert("RGB"), return_tensors="pt")
            save(batch["pixel_values"], batch["image_grid_thw"], path)
        for path in clips:
            item = clip_inputs(source_of(str(path)))
            save(item.vision["pixel_values_videos"], item.vision["video_grid_thw"], path)
    return time.perf_counter() - started


def ours(
    checkpoint: Path, inputs: list[Path], out: Path, workers: int, batch_tokens: int | None, *extra: str
) -> float:
    """`qwenvl-min latents` on the inputs; returns its wall time in seconds (its model load included)."""
    argv = ["latents", "-q", "--model", str(checkpoint), "--taps", "visual.merger", "--out", str(out)]
    argv += ["--no-progress", "--workers", str(workers), *extra]
    if batch_tokens is not None:
        argv += ["--batch-tokens", str(batch_tokens)]
    started = time.perf_counter()
    code = cli([*argv, *map(str, inputs)])
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"latents exited {code}")
    return elapsed


def max_difference(a: Path, b: Path) -> float:
    """Largest |ours - transformers| over every output, relative to max(1, max |transformers|)."""
    from safetensors.torch import load_file

    worst = 0.0
    for path in sorted(b.glob("*.safetensors")):
        want = load_file(path)["visual.merger"]
        got = load_file(a / path.name)["visual.merger"]
        worst = max(worst, (got - want).abs().max().item() / max(1.0, want.abs().max().item()))
    return worst


def run_case(kind: str, args: argparse.Namespace, root: Path, photos: list[Path], clips: list[Path]) -> dict:
    n_photos, n_clips = (args.photos, args.clips) if kind == "tiny" else (args.wide_photos, args.wide_clips)
    photos, clips = photos[:n_photos], clips[:n_clips]
    checkpoint = write_checkpoint(root / f"{kind}-model", model_config(kind, args.wide_depth))
    warm = root / f"{kind}-warm"  # first calls (allocator, lazy imports) on two inputs, both sides
    hf_loop(checkpoint, photos[:1], clips[:1], warm / "hf")
    ours(checkpoint, [*photos[:1], *clips[:1]], warm / "ours", args.workers, args.batch_tokens)
    rounds = args.rounds
    hf_all, ours_all = [], []
    for r in range(rounds):  # interleaved; the fastest round of each is the least disturbed by other work
        hf_all.append(hf_loop(checkpoint, photos, clips, root / f"{kind}-hf{r}"))
        ours_all.append(
            ours(checkpoint, [*photos, *clips], root / f"{kind}-ours{r}", args.workers, args.batch_tokens)
        )
    hf_s, ours_s = min(hf_all), min(ours_all)
    started = time.perf_counter()  # what the CLI spends loading the model (inside ours_s, not in hf_s)
    load_model(str(checkpoint), None, "cpu")
    load_s = time.perf_counter() - started
    count = len(photos) + len(clips)
    return {
        "model": kind,
        "vision": f"depth {args.wide_depth}, width 1280" if kind == "wide" else "tiny (depth 4, width 64)",
        "photos": len(photos),
        "clips": len(clips),
        "workers": args.workers,
        "batch_tokens": args.batch_tokens
        if args.batch_tokens is not None
        else default_batch_tokens(
            model_config(kind, args.wide_depth).vision, torch.float32, torch.device("cpu")
        ),
        "hf_s": hf_s,
        "ours_s": ours_s,
        "hf_all_s": hf_all,
        "ours_all_s": ours_all,
        "hf_inputs_per_s": count / hf_s,
        "ours_inputs_per_s": count / ours_s,
        "ratio": ours_s / hf_s,
        "ours_load_s": load_s,
        "ratio_without_load": (ours_s - load_s) / hf_s,
        "target": TARGETS[kind],
        "max_rel_diff": max_difference(root / f"{kind}-ours0", root / f"{kind}-hf0"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--wide-photos", type=int, default=8)
    parser.add_argument("--wide-clips", type=int, default=1)
    parser.add_argument("--wide-depth", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: the CLI's")
    parser.add_argument("--models", default="tiny,wide")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per model (fastest kept)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    env = environment() | {"cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads()}
    env["load_average_before"] = os.getloadavg()[0]  # other work on the machine skews both sides
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-latents-") as tmp:
        root = Path(tmp)
        (root / "inputs").mkdir()
        photos = make_photos(root / "inputs", max(args.photos, args.wide_photos))
        clips = make_clips(root / "inputs", max(args.clips, args.wide_clips))
        for kind in args.models.split(","):
            rows.append(run_case(kind, args, root, photos, clips))
            print(
                f"{kind}: transformers {rows[-1]['hf_s']:.2f} s, ours {rows[-1]['ours_s']:.2f} s",
                file=sys.stderr,
            )
    columns = [
        "model",
        "photos",
        "clips",
        "workers",
        "hf_inputs_per_s",
        "ours_inputs_per_s",
        "ratio",
        "ratio_without_load",
        "target",
    ]
    print_table(rows, columns + ["max_rel_diff"])
    path = args.out or RESULTS_DIR / f"latents-{slug(env['device'])}.json"
    env["load_average_after"] = os.getloadavg()[0]
    print(f"wrote {write_results('latents', rows, env, mode='cpu', path=path)}")


if __name__ == "__main__":
    main()
