"""Video decoding: a 2-minute 1280x720 30 fps clip sampled at 2 fps, against decoding every frame.

Variants (each run in a fresh subprocess, so its peak RSS, VmHWM, is its own):
- every_frame_old:  the reader before this change with no sampling (its default): every frame decoded and
                    converted to an RGB array, one thread (frames dropped after conversion, so its RSS is a
                    lower bound: the old pipeline kept them all, 3600 x 2.8 MB);
- sample_2fps_old:  the old reader keeping 2 fps (every frame decoded, 240 converted, one thread);
- sample_2fps_new:  `video_decode.read_frames` with the same 240 indices (frame threads, only kept frames
                    converted, stop after the last);
- prepare_vision:   the whole `prepare_vision` call on the clip (2 fps, qwen-vl-utils' per-frame budget,
                    frames resized and kept: what the model is given).
Variants alternate within each repeat; the table shows medians. The clip (h264, a cheap moving pattern) is
written once to /tmp/qwenvl-min-bench/, never into the repository.

    python benchmarks/bench_video_decode.py [--repeats 3] [--seconds 120]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, print_table, write_results  # noqa: E402

CACHE = Path("/tmp/qwenvl-min-bench")
VARIANTS = ["every_frame_old", "sample_2fps_old", "sample_2fps_new", "prepare_vision"]


def make_clip(seconds: int, fps: int = 30, width: int = 1280, height: int = 720) -> Path:
    import av
    import numpy as np

    path = CACHE / f"pattern-{width}x{height}-{fps}fps-{seconds}s.mp4"
    if path.is_file():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.mp4")
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x // 4) % 256, (y // 3) % 256, ((x + y) // 8) % 256], axis=-1).astype(np.uint8)
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "28"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(seconds * fps):
            frame = np.roll(base, shift=(k * 3, k * 5), axis=(0, 1))  # a moving pattern: real P-frames
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    partial.rename(path)
    return path


def _old_reader(path: str, wanted: set[int]) -> int:
    """The decoding loop of qwenvl_min.inputs.preprocess before this change: decode all, convert the wanted."""
    import av

    converted = 0
    with av.open(path) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                frame.to_ndarray(format="rgb24")
                converted += 1
    return converted


def run_variant(name: str, path: str) -> dict:
    """In a fresh process: time one variant, then read this process's peak RSS."""
    from qwenvl_min import prepare_vision
    from qwenvl_min.inputs import qwen_vl_rules as rules
    from qwenvl_min.inputs.video_decode import probe, read_frames

    header = probe(path)
    count = rules.frame_count(header.frames, header.fps)  # qwen-vl-utils' default: 2 fps
    indices = rules.frame_indices(0, header.frames - 1, count)
    start = time.perf_counter()
    if name == "every_frame_old":
        kept = _old_reader(path, set(range(header.frames)))
    elif name == "sample_2fps_old":
        kept = _old_reader(path, set(indices))
    elif name == "sample_2fps_new":
        kept = len(read_frames(header, indices, lambda frame: None)[0])
    else:
        vision = prepare_vision(
            [{"role": "user", "content": [{"type": "video", "video": path}]}], max_tokens=10**6
        )
        kept = len(vision.videos[0].frames)
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    peak_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    return {"variant": name, "seconds": seconds, "peak_rss_mib": peak_kib / 1024, "frames_kept": kept}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--clip", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.clip)))
        return
    clip = make_clip(args.seconds)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--clip", str(clip)],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = statistics.median(r["seconds"] for r in runs["every_frame_old"])
    rows = []
    for variant, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        rows.append(
            {
                "variant": variant,
                "seconds": seconds,
                "vs_every_frame": seconds / base,
                "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in results),
                "frames_kept": results[0]["frames_kept"],
                "repeats": len(results),
            }
        )
    env = environment()
    env |= {"clip": f"{args.seconds} s 1280x720 30 fps h264 (ultrafast, crf 28), {args.seconds * 30} frames"}
    env["av"] = __import__("av").__version__
    print_table(rows, ["variant", "seconds", "vs_every_frame", "peak_rss_mib", "frames_kept", "repeats"])
    print("wrote", write_results("video_decode", rows, env, mode="cpu"))


if __name__ == "__main__":
    main()
