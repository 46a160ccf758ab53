"""Peak memory of `QwenVL.from_pretrained` on the synthetic HF checkpoint `bench_convert.py` builds.

    python benchmarks/bench_from_pretrained.py                       # Qwen2.5-VL-7B shapes, bf16 (~16.6 GB)
    python benchmarks/bench_from_pretrained.py --shapes 3b --cast float16

The published-layout bf16 source (~4 GB shards with an index) is written by a child process; each
measurement runs in a child of its own and reports its VmHWM (Linux carries a parent's peak into a
child's ru_maxrss, so the kernel's per-process high-water mark is the honest figure):
- `auto` (bf16 as stored, on the CPU): the parameters are views of the mapped shards; the figure after
  loading, and again after reading every weight once (all pages resident: one copy of the weights);
- `--cast DTYPE`: every tensor converted as it is read, its source pages dropped right after; the target
  is about one copy of the weights in DTYPE.
Results go to benchmarks/results/from_pretrained-<shapes>-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

from _common import environment, write_results
from bench_convert import GB, PRESETS, run_child

from qwenvl_min import Config
from qwenvl_min.weights_convert import expected_shapes

_CHILD = """
import sys, time, torch
from qwenvl_min import QwenVL
def hwm():
    return int([l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]) * 1024
t = time.perf_counter()
dtype = sys.argv[2]
m = QwenVL.from_pretrained(sys.argv[1], dtype=dtype if dtype == "auto" else getattr(torch, dtype))
seconds = time.perf_counter() - t
after_load = hwm()
nbytes = sum(p.numel() * p.element_size() for p in m.parameters())
with torch.no_grad():
    for p in m.parameters():
        p.sum()  # reads every page of every weight once
print(seconds, after_load, hwm(), nbytes)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", choices=sorted(PRESETS), default="7b")
    parser.add_argument("--cast", default=None, help="also load with this dtype (float16, float32)")
    parser.add_argument("--workdir", default=None, help="where the checkpoint goes (default: $TMPDIR)")
    args = parser.parse_args()
    config = Config.preset(PRESETS[args.shapes])
    need = sum(math.prod(s) for s in expected_shapes(config).values()) * 2
    parent = Path(args.workdir or tempfile.gettempdir())
    if shutil.disk_usage(parent).free < need * 1.1:
        raise SystemExit(f"{parent} needs ~{need * 1.1 / GB:.1f} GB free for the source checkpoint")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_from_pretrained_", dir=parent) as tmp:
        src = Path(tmp) / "hf"
        src.mkdir()
        bench_convert = str(Path(__file__).with_name("bench_convert.py"))
        _, _, out = run_child([bench_convert, "--shapes", args.shapes, "--write-source", str(src)])
        total = int(out.split()[-1])
        for dtype in ["auto", *([args.cast] if args.cast else [])]:
            _, _, out = run_child(["-c", _CHILD, str(src), dtype])
            seconds, after_load, after_touch, nbytes = out.split()
            rows.append(
                {
                    "shapes": PRESETS[args.shapes],
                    "dtype": dtype,
                    "checkpoint_bytes": total,
                    "weights_bytes_in_dtype": int(nbytes),
                    "load_seconds": round(float(seconds), 2),
                    "peak_rss_after_load_bytes": int(after_load),
                    "peak_rss_after_reading_every_weight_bytes": int(after_touch),
                    "peak_over_one_copy": round(int(after_touch) / int(nbytes), 3),
                }
            )
            print(json.dumps(rows[-1], indent=2), flush=True)
    path = write_results(f"from_pretrained-{args.shapes}", rows, environment(), mode="cpu")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
