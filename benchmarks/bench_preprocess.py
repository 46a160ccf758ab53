"""Preprocessing speed: ours vs transformers' PIL image processor (`Qwen2VLImageProcessorPil`), same process.

Cases: RGB images of 640x480, 1920x1080 and 4000x3000 (default image budget), and a 64-frame 640x360 video
at the video budget (128·28² .. 768·28² pixels per frame). HF's video processor needs torchvision, which
cannot be installed here, so the video baseline is HF's PIL image processor run on the 64 frames with the
video budget (it resizes, normalizes and patchifies every frame; it emits each frame as its own T=2 image,
so it writes twice our rows). Runs alternate HF / ours; the table shows medians and ours/HF (target <= 0.7).

    python benchmarks/bench_preprocess.py [--repeats 7] [--out benchmarks/results/preprocess.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL
import torch
import transformers
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from qwenvl_min.inputs.preprocess import (
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    preprocess_image,
    preprocess_video,
)


def _device() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} torch threads)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like test image: smooth gradients plus mild noise (pure noise is not what cameras produce)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / (37 + 10 * c) + y / (53 + 7 * c)) for c in range(3)], axis=-1)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "preprocess.json")
    args = parser.parse_args()

    hf_image = Qwen2VLImageProcessorPil()
    hf_video = Qwen2VLImageProcessorPil(min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS)
    cases = {}
    for w, h in [(640, 480), (1920, 1080), (4000, 3000)]:
        image = Image.fromarray(_smooth_image(h, w, seed=w))
        cases[f"image {w}x{h}"] = (
            lambda im=image: hf_image(im, return_tensors="pt"),
            lambda im=image: preprocess_image(im),
        )
    frames = np.stack([_smooth_image(360, 640, seed=i) for i in range(64)])
    cases["video 64x640x360"] = (
        lambda: hf_video(list(frames), return_tensors="pt"),
        lambda: preprocess_video(frames, fps=30.0),
    )

    rows = []
    print(f"{'case':<20}{'HF ms':>10}{'ours ms':>10}{'ours/HF':>10}")
    for name, (hf_fn, our_fn) in cases.items():
        hf_fn(), our_fn()  # warm up (imports, allocator)
        hf_times, our_times = [], []
        for _ in range(args.repeats):
            hf_times.append(_time(hf_fn))
            our_times.append(_time(our_fn))
        hf_ms, our_ms = statistics.median(hf_times) * 1e3, statistics.median(our_times) * 1e3
        rows.append(
            {
                "case": name,
                "hf_ms": round(hf_ms, 2),
                "ours_ms": round(our_ms, 2),
                "ratio": round(our_ms / hf_ms, 3),
            }
        )
        print(f"{name:<20}{hf_ms:>10.1f}{our_ms:>10.1f}{our_ms / hf_ms:>10.2f}")

    result = {
        "benchmark": "preprocess",
        "baseline": "transformers Qwen2VLImageProcessorPil (video: per frame, video budget; HF video processor "
        "needs torchvision)",
        "device": _device(),
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
        },
        "git_commit": _git_commit(),
        "repeats": args.repeats,
        "target_ratio": 0.7,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
