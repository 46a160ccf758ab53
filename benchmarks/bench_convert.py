"""Conversion time and peak memory on a synthetic checkpoint with the real Qwen2.5-VL shapes.

    python benchmarks/bench_convert.py                 # Qwen2.5-VL-7B shapes: ~16.6 GB source + same output
    python benchmarks/bench_convert.py --shapes 3b     # Qwen2.5-VL-3B shapes: ~7.5 GB + same

A source checkpoint in the published HF layout (bf16, ~4 GB shards with an index, as on the Hub) is
written into a temporary directory one shard at a time by a child process (the tensor bytes are slices
of one random buffer: conversion cost does not depend on the values). The conversion then runs in
another child (the CLI's `main`) whose peak RSS is the figure reported, as ru_maxrss from wait4 and as
the child's own VmHWM; the target is peak RSS <= largest output shard + 1 GB. (Linux folds the RSS of
the forking parent into a child's ru_maxrss, which is why the big buffer lives in a child of its own.) A second child loads the result with
`qwenvl_min.hf.load` (meta device + memory map) and reports its time and peak RSS. Results are printed and
written to benchmarks/results/convert-<shapes>-<device>.json with the machine, versions and commit.
Note: the source was just written, so part of it may still be in the page cache (a warm read).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import environment, write_results

from qwenvl_min import Config
from qwenvl_min.weights_convert import expected_shapes, our_key_to_hf
from qwenvl_min.weights_convert.checkpoint import INDEX_FILE, shard_name
from qwenvl_min.weights_convert.mapping import our_tensor_to_hf
from qwenvl_min.weights_convert.safetensors_io import write_safetensors

PRESETS = {"7b": "qwen2.5-vl-7b", "3b": "qwen2.5-vl-3b"}
SOURCE_SHARD = 4 * 1000**3  # the Hub's Qwen2.5-VL shards are ~4 GB
GB = 1000**3


def write_synthetic_source(config: Config, directory: Path) -> int:
    """HF published layout, bf16; returns total bytes of tensor data."""
    tensors = []
    for key, shape in expected_shapes(config).items():
        hf_shape = tuple(our_tensor_to_hf(config, key, torch.empty(shape, device="meta")).shape)
        tensors.append((our_key_to_hf(key, config.model_type), hf_shape))
    largest = max(math.prod(s) for _, s in tensors)
    pool = torch.randn(largest, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)

    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for key, shape in tensors:
        nbytes = math.prod(shape) * 2
        if shards[-1] and size + nbytes > SOURCE_SHARD:
            shards.append([])
            size = 0
        shards[-1].append((key, shape))
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = shard_name(i + 1, len(shards))
        by_key = dict(shard)
        write_safetensors(
            directory / name,
            [(key, torch.bfloat16, shape) for key, shape in shard],
            lambda key, by_key=by_key: pool[: math.prod(by_key[key])].view(by_key[key]),
            {"format": "pt"},
        )
        weight_map.update(dict.fromkeys(by_key, name))
        print(f"  source shard {i + 1}/{len(shards)} written", file=sys.stderr, flush=True)
    total = sum(math.prod(s) * 2 for _, s in tensors)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index))
    hf_config = config.to_hf()
    hf_config["dtype"] = "bfloat16"
    (directory / "config.json").write_text(json.dumps(hf_config))
    return total


_CONVERT_CHILD = """
import sys
from qwenvl_min.weights_convert.cli import main
code = main(sys.argv[1:])
hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print("VmHWM_kB", hwm)
sys.exit(code)
"""


def run_child(code_or_args: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of a child Python process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *code_or_args], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    out = proc.stdout.read() if proc.stdout else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"child {code_or_args[:2]} failed with exit code {proc.returncode}")
    return seconds, usage.ru_maxrss * 1024, out  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", choices=sorted(PRESETS), default="7b")
    parser.add_argument("--shard-size", default="5GB", help="output shard size (converter default 5GB)")
    parser.add_argument(
        "--workdir", default=None, help="where the temporary checkpoints go (default: $TMPDIR)"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="JSON result path (default: benchmarks/results/convert-<shapes>-<device>.json)",
    )
    parser.add_argument("--write-source", default=None, help=argparse.SUPPRESS)  # internal: the child's job
    args = parser.parse_args()
    if args.write_source:
        print(write_synthetic_source(Config.preset(PRESETS[args.shapes]), Path(args.write_source)))
        return

    config = Config.preset(PRESETS[args.shapes])
    need = 2 * sum(math.prod(s) for s in expected_shapes(config).values()) * 2  # source + output, bf16
    parent = Path(args.workdir or tempfile.gettempdir())
    free = shutil.disk_usage(parent).free
    if free < need * 1.1:
        raise SystemExit(
            f"{parent} has {free / GB:.1f} GB free; {args.shapes} shapes need ~{need * 1.1 / GB:.1f} GB "
            "(source + output). Use --shapes 3b or --workdir on a larger disk"
        )
    with tempfile.TemporaryDirectory(prefix="bench_convert_", dir=parent) as tmp:
        src, dst = Path(tmp) / "hf", Path(tmp) / "ours"
        src.mkdir()
        print(f"writing a synthetic {PRESETS[args.shapes]} checkpoint (bf16) into {src}", flush=True)
        _, _, out = run_child([__file__, "--shapes", args.shapes, "--write-source", str(src)])
        total = int(out.split()[-1])
        convert_args = [str(src), str(dst), "--shard-size", args.shard_size, "--no-progress"]
        convert_s, convert_rss, out = run_child(["-c", _CONVERT_CHILD, *convert_args])
        convert_hwm = int(out.split("VmHWM_kB")[1].split()[0]) * 1024
        manifest = json.loads((dst / "manifest.json").read_text())
        largest_shard = max(r["bytes"] for r in manifest["shards"])
        load_code = (
            "import time, torch; t = time.perf_counter(); from qwenvl_min.hf.load import load; "
            f"m = load({str(dst)!r}); print(time.perf_counter() - t, sum(p.numel() for p in m.parameters()))"
        )
        load_s, load_rss, load_out = run_child(["-c", load_code])
        load_inner_s, params = load_out.split()

    import huggingface_hub
    import safetensors

    env = {
        **environment(),
        "safetensors": safetensors.__version__,
        "huggingface_hub": huggingface_hub.__version__,
    }
    row = {
        "shapes": PRESETS[args.shapes],
        "workdir": str(parent),
        "checkpoint_bytes": total,
        "parameters": int(params),
        "output_shards": len(manifest["shards"]),
        "largest_output_shard_bytes": largest_shard,
        "convert_seconds": round(convert_s, 2),
        "convert_throughput_gb_per_s": round(total / GB / convert_s, 3),
        "convert_peak_rss_bytes": convert_rss,
        "convert_vmhwm_bytes": convert_hwm,
        "target_peak_rss_bytes": largest_shard + GB,
        "meets_target": convert_rss <= largest_shard + GB,
        "load_seconds_including_imports": round(load_s, 2),
        "load_seconds": round(float(load_inner_s), 2),
        "load_peak_rss_bytes": load_rss,
    }
    print(json.dumps(row, indent=2))
    path = write_results(f"convert-{args.shapes}", [row], env, mode="cpu", path=args.out and Path(args.out))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
