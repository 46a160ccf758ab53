"""Tensor parallelism on this machine: TP=2 vs TP=1 speed, and peak RSS per rank of sharded loading.

    python benchmarks/bench_tp.py speed                 # vision tower (Qwen2.5-VL widths) + 2B decode step
    python benchmarks/bench_tp.py load --shapes 7b      # sharded load of a synthetic 7B-shaped checkpoint

speed: the same total threads for both (TP=1: one process, 2 threads; TP=2: two gloo ranks, 1 thread
each), random weights. The vision tower runs at real widths (1280, 16 heads, SwiGLU 3420) with
--vision-depth blocks on a 448x448 image (1024 patches) and is reported per block; the decode step runs
the Qwen2-VL-2B text widths (1536, 12/2 heads, MLP 8960, vocab 151936, tied head) with --text-layers
layers after a 128-token prefill, reported as the whole step (embedding + layers + head). Communication per
layer is computed from the plan: two all-reduces of the residual stream per block / layer (attention out,
MLP out), i.e. payload N x D x bytes each; a ring all-reduce moves 2 (tp-1)/tp of it per rank.

load: writes the synthetic HF-layout checkpoint of benchmarks/bench_convert.py (bf16, ~4 GB shards),
then loads it with `qwenvl_min.parallel.load_sharded` in one process (TP=1, a 1-rank group) and in two
ranks (TP=2), each reporting its VmHWM (peak RSS; Linux folds a parent's peak into a child's
ru_maxrss, so the children read /proc/self/status themselves). Results go to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import environment, print_table, write_results

GB = 1000**3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world: int, threads: int, argv: list[str], timeout: float) -> list[dict]:
    """Run this script's worker in `world` loopback ranks; each prints one JSON line last."""
    port, procs = _free_port(), []
    for rank in range(world):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS=str(threads),
        )
        procs.append(
            subprocess.Popen([sys.executable, __file__, *argv], env=env, stdout=subprocess.PIPE, text=True)
        )
    out = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=timeout)
        if proc.returncode:
            raise SystemExit(f"worker {argv[:2]} failed with exit code {proc.returncode}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def _vmhwm() -> int:
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


# ---- workers (one per rank) -------------------------------------------------------------------------------
def _mesh():
    from qwenvl_min.parallel import init_distributed, tp_mesh

    context = init_distributed("cpu")
    return context, tp_mesh(context, context.world_size)


def _random_tp_model(config, mesh):
    """Random weights, each rank materializing only its shards (timing does not depend on the values)."""
    from qwenvl_min import QwenVL
    from qwenvl_min.parallel import parallelize

    with torch.device("meta"):
        model = QwenVL(config, kernels="torch")
    if mesh.size() > 1:  # TP=1 is the plain model: no DTensor wrapping in the baseline
        parallelize(model, mesh)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            local.normal_(0, local.shape[-1] ** -0.5 if local.dim() > 1 else 0.02)
    return model.eval()


def worker_speed(args: argparse.Namespace) -> None:
    from qwenvl_min import Config
    from qwenvl_min.model.text import KVCache

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    context, mesh = _mesh()
    vision_cfg = Config.preset("qwen2.5-vl-7b")
    vision_cfg = dataclasses.replace(
        vision_cfg,
        vision=dataclasses.replace(
            vision_cfg.vision, depth=args.vision_depth, fullatt_block_indexes=(args.vision_depth - 1,)
        ),
    )
    vision_cfg = dataclasses.replace(
        vision_cfg,
        text=dataclasses.replace(vision_cfg.text, num_layers=1, vocab_size=151658, tie_word_embeddings=True),
    )
    model = _random_tp_model(vision_cfg, mesh)
    grid = torch.tensor([[1, 32, 32]])
    pixels = torch.randn(1024, vision_cfg.vision.patch_dim)
    times = []
    with torch.inference_mode():
        for _ in range(1 + args.repeats):
            torch.distributed.barrier()
            start = time.perf_counter()
            model.visual(pixels, grid)
            times.append(time.perf_counter() - start)
    vision_s = sorted(times[1:])[len(times[1:]) // 2]
    del model

    text_cfg = Config.preset("qwen2-vl-2b")
    text_cfg = dataclasses.replace(
        text_cfg,
        vision=dataclasses.replace(text_cfg.vision, depth=1),
        text=dataclasses.replace(text_cfg.text, num_layers=args.text_layers),
    )
    model = _random_tp_model(text_cfg, mesh)
    prompt = torch.randint(0, 1000, (1, 128))
    times = []
    with torch.inference_mode():
        cache = KVCache(args.text_layers, capacity=128 + 2 + args.repeats * 4)
        model(prompt, cache=cache, logits_to_keep=1)
        for step in range(1 + args.repeats * 4):
            pos = torch.full((3, 1, 1), 128 + step)
            torch.distributed.barrier()
            start = time.perf_counter()
            model(torch.tensor([[7]]), cache=cache, positions=pos)
            times.append(time.perf_counter() - start)
    decode_s = sorted(times[1:])[len(times[1:]) // 2]
    print(json.dumps({"rank": context.rank, "vision_s": vision_s, "decode_s": decode_s}))


def worker_load(args: argparse.Namespace) -> None:
    from qwenvl_min.parallel import load_sharded

    if args.one_rank_of:  # this rank alone, under torch's fake process group (loading needs no collective)
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.testing._internal.distributed.fake_pg import FakeStore

        rank = int(os.environ["RANK"])
        dist.init_process_group("fake", rank=rank, world_size=args.one_rank_of, store=FakeStore())
        context, mesh = type("C", (), {"rank": rank})(), init_device_mesh("cpu", (args.one_rank_of,))
    else:
        context, mesh = _mesh()
    start = time.perf_counter()
    model = load_sharded(args.path, mesh)
    seconds = time.perf_counter() - start
    local = sum((p.to_local() if hasattr(p, "to_local") else p).nbytes for p in model.parameters())
    print(
        json.dumps({"rank": context.rank, "seconds": seconds, "vmhwm": _vmhwm(), "local_weight_bytes": local})
    )


# ---- drivers ----------------------------------------------------------------------------------------------
def comm_per_layer(tp: int) -> list[dict]:
    """All-reduces per block / layer and their bytes (bf16 activations), from the plan."""
    rows = []
    for what, tokens, width in (
        ("vision block, 1024 patches", 1024, 1280),
        ("vision block, 16384 patches (1792x1792 px)", 16384, 1280),
        ("2B decode step, batch 1", 1, 1536),
        ("72B decode step, batch 1", 1, 8192),
        ("72B prefill, 4096 tokens", 4096, 8192),
    ):
        payload = tokens * width * 2
        rows.append(
            {
                "layer": what,
                "all_reduces": 2,
                "payload_bytes_each": payload,
                "sent_per_rank_bytes": int(2 * 2 * (tp - 1) / tp * payload),
            }
        )
    return rows


def run_speed(args: argparse.Namespace) -> None:
    argv = ["--worker", "speed", "--vision-depth", str(args.vision_depth), "--text-layers", str(args.text_layers),
            "--repeats", str(args.repeats)]  # fmt: skip
    one = _spawn(1, 2, argv, timeout=900)[0]
    two = _spawn(2, 1, argv, timeout=900)
    slowest = {k: max(r[k] for r in two) for k in ("vision_s", "decode_s")}
    rows = [
        {
            "what": f"vision tower per block (Qwen2.5-VL widths, 1024 patches, {args.vision_depth} blocks)",
            "tp1_ms": round(one["vision_s"] / args.vision_depth * 1e3, 2),
            "tp2_ms": round(slowest["vision_s"] / args.vision_depth * 1e3, 2),
        },
        {
            "what": f"decode step (Qwen2-VL-2B widths, {args.text_layers} layers + tied head, 128 cached)",
            "tp1_ms": round(one["decode_s"] * 1e3, 2),
            "tp2_ms": round(slowest["decode_s"] * 1e3, 2),
        },
    ]
    for row in rows:
        row["speedup"] = round(row["tp1_ms"] / row["tp2_ms"], 2)
    print_table(rows, ["what", "tp1_ms", "tp2_ms", "speedup"])
    comm = comm_per_layer(2)
    print_table(comm, ["layer", "all_reduces", "payload_bytes_each", "sent_per_rank_bytes"])
    env = {**environment(), "threads_total": 2, "backend": "gloo"}
    path = write_results("tp-speed", [*rows, *comm], env, mode="cpu")
    print(f"wrote {path}")


def run_load(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_convert import PRESETS

    from qwenvl_min import Config
    from qwenvl_min.weights_convert import expected_shapes

    config = Config.preset(PRESETS[args.shapes])
    total = sum(math.prod(s) for s in expected_shapes(config).values()) * 2
    with tempfile.TemporaryDirectory(prefix="bench_tp_", dir=args.workdir) as tmp:
        src = Path(tmp) / "hf"
        src.mkdir()
        print(f"writing a synthetic {PRESETS[args.shapes]} checkpoint (bf16, {total / GB:.1f} GB) into {src}")
        bench = Path(__file__).parent / "bench_convert.py"
        subprocess.run([sys.executable, str(bench), "--shapes", args.shapes, "--write-source", str(src)], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        rows = []
        for world in args.worlds:
            load = ["--worker", "load", "--path", str(src)]
            if args.sequential and world > 1:  # one rank at a time: peak memory of one rank only
                ranks = []
                for rank in range(world):
                    env = dict(os.environ, RANK=str(rank), OMP_NUM_THREADS="1")
                    argv = [sys.executable, __file__, *load, "--one-rank-of", str(world)]
                    out = subprocess.run(argv, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
                    ranks.append(json.loads(out.strip().splitlines()[-1]))
            else:
                ranks = _spawn(world, 1, load, timeout=3600)
            for r in ranks:
                rows.append(
                    {
                        "tp": world,
                        "rank": r["rank"],
                        "peak_rss_gb": round(r["vmhwm"] / GB, 2),
                        "local_weights_gb": round(r["local_weight_bytes"] / GB, 2),
                        "overhead_gb": round((r["vmhwm"] - r["local_weight_bytes"]) / GB, 2),
                        "seconds": round(r["seconds"], 1),
                    }
                )
            print_table(rows, ["tp", "rank", "peak_rss_gb", "local_weights_gb", "overhead_gb", "seconds"])
    env = {
        **environment(),
        "checkpoint_bytes": total,
        "shapes": PRESETS[args.shapes],
        "sequential": args.sequential,
    }
    path = write_results(f"tp-load-{args.shapes}", rows, env, mode="cpu")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", choices=["speed", "load"], default="speed")
    parser.add_argument("--vision-depth", type=int, default=4)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", choices=["7b", "3b"], default="7b")
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 1], help="TP degrees to load with")
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="load the TP ranks one after the other (fake process group) when RAM holds one rank only",
    )
    parser.add_argument("--one-rank-of", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "speed":
        return worker_speed(args)
    if args.worker == "load":
        return worker_load(args)
    (run_speed if args.mode == "speed" else run_load)(args)


if __name__ == "__main__":
    main()
