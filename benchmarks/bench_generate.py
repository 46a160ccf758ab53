"""Prefill and decode speed of `qwenvl_min.generate` vs transformers' `generate`: same weights, greedy.

Two models, both built from random weights and shared between the two implementations:
  * "2b-widths": Qwen2-VL-2B's real text widths (1536 / 8960 / 12 heads / 2 kv heads / vocab 151936, tied
    lm_head) with 4 decoder layers and a 2-block vision tower. Decoding is memory-bandwidth bound: every
    token reads all decoder weights and the 151936 x 1536 lm_head. We report the fraction of the bound:
    (weight bytes read per token / time per token) / measured memcpy bandwidth (read + write bytes / s).
  * "tiny": tiny-qwen2-vl (width 64, 3 layers): a decode step is all framework overhead.

Three engines: transformers ("hf"), ours eager ("ours") and ours with `compile=True` ("compiled": the
decoder compiled by inductor on CPU, CUDA graphs on CUDA; its compilation happens in the warm-up and is
reported separately as `warmup_s`).

Prompt: text around one 224x224 image (64 merged tokens). Prefill = time to the first token (vision tower
included), decode = (time for 1 + N tokens - time for 1 token) / N. The engines alternate within each
repetition (same process, same threads); we report the median of the repetitions (and keep the best and
every raw time in the JSON); the tokens of all engines must match.

    .venv/bin/python benchmarks/bench_generate.py [--reps 7] [--new-tokens 16,64] [--out-dir results]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch
import transformers
from torch import Tensor

from qwenvl_min import Config, QwenVL
from qwenvl_min.generate import generate

RESULTS = Path(__file__).resolve().parent / "results"


def build(name: str) -> tuple[Config, torch.nn.Module, QwenVL]:
    if name == "2b-widths":
        base = Config.preset("qwen2-vl-2b")
        config = dataclasses.replace(
            base,
            text=dataclasses.replace(base.text, num_layers=4),
            vision=dataclasses.replace(base.vision, depth=2),
        )
    else:
        config = Config.preset("tiny-qwen2-vl")
    torch.manual_seed(0)
    hf = transformers.Qwen2VLForConditionalGeneration(transformers.Qwen2VLConfig(**config.to_hf())).eval()
    hf.generation_config.eos_token_id = None  # always decode the full count (no stop criteria on either side)
    ours = QwenVL.from_hf(config.to_hf(), hf.state_dict())  # the same tensors, not a copy
    return config, hf, ours


def prompt(config: Config) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    grid = torch.tensor([[1, 16, 16]])
    pads = int(grid.prod()) // config.vision.merge_size**2
    text = torch.randint(0, min(config.bos_token_id, 1000), (30,), generator=g).tolist()
    ids = [
        *text[:20],
        config.vision_start_token_id,
        *[config.image_token_id] * pads,
        config.vision_end_token_id,
    ]
    ids += text[20:]
    return {
        "input_ids": torch.tensor([ids]),
        "pixel_values": torch.randn(int(grid.prod()), config.vision.patch_dim, generator=g),
        "image_grid_thw": grid,
    }


def run_hf(hf: torch.nn.Module, config: Config, inputs: dict[str, Tensor], n: int) -> Tensor:
    ids = inputs["input_ids"]
    mm = (ids == config.image_token_id).long()
    out = hf.generate(
        **inputs, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm, max_new_tokens=n, do_sample=False
    )
    return out[:, ids.shape[1] :]


def run_ours(
    model: QwenVL, config: Config, inputs: dict[str, Tensor], n: int, compile: bool = False
) -> Tensor:
    return generate(model, **inputs, max_new_tokens=n, stop_token_ids=(), compile=compile)


def timed(fn: Callable[[], Tensor]) -> tuple[float, Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def memcpy_bandwidth(megabytes: int = 512, reps: int = 5) -> float:
    """Bytes moved per second (read + write) by a large tensor copy; the best of `reps`."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(timed(lambda: dst.copy_(src))[0] for _ in range(reps))
    return 2 * src.numel() * src.element_size() / best


def weight_bytes_per_token(model: QwenVL) -> int:
    """Decoder weights + the lm_head matrix (the embedding matrix when tied); the embedding lookup reads one
    row only and the vision tower does not run while decoding."""
    text = sum(
        p.numel() * p.element_size() for n, p in model.text.named_parameters() if not n.startswith("embed")
    )
    head = model.text.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    return text + head.numel() * head.element_size()


def bench(name: str, reps: int, new_tokens: int) -> dict[str, object]:
    config, hf, ours = build(name)
    inputs = prompt(config)
    engines = {
        "hf": lambda n: run_hf(hf, config, inputs, n),
        "ours": lambda n: run_ours(ours, config, inputs, n),
        "compiled": lambda n: run_ours(ours, config, inputs, n, compile=True),
    }
    warmup = {}
    with torch.inference_mode():
        for key, run in engines.items():  # warm-up (the compiled engine compiles here)
            warmup[key] = timed(partial(run, 2))[0]
        first: dict[str, list[float]] = {k: [] for k in engines}
        full: dict[str, list[float]] = {k: [] for k in engines}
        tokens: dict[str, Tensor] = {}
        for _ in range(reps):
            for key, run in engines.items():  # alternate: both see the same machine state
                first[key].append(timed(partial(run, 1))[0])
                seconds, tokens[key] = timed(partial(run, 1 + new_tokens))
                full[key].append(seconds)
    assert all(t.shape[1] == 1 + new_tokens for t in tokens.values()), "a run stopped early"
    row: dict[str, object] = {
        "model": name,
        "prompt_tokens": inputs["input_ids"].shape[1],
        "new_tokens": new_tokens,
        "tokens_match": bool(torch.equal(tokens["hf"], tokens["ours"])),
        "compiled_tokens_match_eager": bool(torch.equal(tokens["compiled"], tokens["ours"])),
    }
    for key in engines:
        # median of the repetitions, per repetition decode = (full - first) / N; best kept alongside
        decodes = [(f - p) / new_tokens for f, p in zip(full[key], first[key])]
        prefill, decode = statistics.median(first[key]), statistics.median(decodes)
        row[key] = {
            "warmup_s": warmup[key],
            "prefill_ms": prefill * 1e3,
            "prefill_tok_s": inputs["input_ids"].shape[1] / prefill,
            "decode_ms_per_token": decode * 1e3,
            "decode_tok_s": 1 / decode,
            "best_decode_ms_per_token": min(decodes) * 1e3,
            "all_first_s": first[key],
            "all_full_s": full[key],
        }
    for key in ("ours", "compiled"):
        ratio = row[key]["decode_ms_per_token"] / row["hf"]["decode_ms_per_token"]
        row[f"decode_time_ratio_{key}_over_hf"] = ratio
        row[f"prefill_speedup_{key}_vs_hf"] = row["hf"]["prefill_ms"] / row[key]["prefill_ms"]
    if name == "2b-widths":
        bandwidth = memcpy_bandwidth()
        per_token = weight_bytes_per_token(ours)
        row["weight_bytes_per_token"] = per_token
        row["memcpy_bandwidth_gb_s"] = bandwidth / 1e9
        for key in engines:
            achieved = per_token / (row[key]["decode_ms_per_token"] / 1e3)
            row[key]["bandwidth_fraction"] = achieved / bandwidth
    return row


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="2b-widths,tiny")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--new-tokens", default="16,64", help="decode steps per model, in --models order")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="writes generate-<model>.json there")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = args.models.split(",")
    counts = [int(n) for n in args.new_tokens.split(",")]
    device = f"{cpu_name()}, {torch.get_num_threads()} torch threads"
    print(f"device: {device}; torch {torch.__version__}, transformers {transformers.__version__}")
    rows = [bench(name, args.reps, n) for name, n in zip(names, counts)]

    print(
        "\n| model | impl | warm-up s | prefill ms (tok/s) | decode ms/token (tok/s) | decode / HF | "
        "bandwidth bound | tokens match |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        for key in ("hf", "ours", "compiled"):
            r = row[key]
            bound = f"{r['bandwidth_fraction']:.0%}" if "bandwidth_fraction" in r else "-"
            ratio = "1" if key == "hf" else f"{row[f'decode_time_ratio_{key}_over_hf']:.2f}"
            match = row["tokens_match"] if key != "compiled" else row["compiled_tokens_match_eager"]
            print(
                f"| {row['model']} | {key} | {r['warmup_s']:.1f} | {r['prefill_ms']:.1f} ({r['prefill_tok_s']:.0f}) | "
                f"{r['decode_ms_per_token']:.2f} ({r['decode_tok_s']:.1f}) | {ratio} | {bound} | {match} |"
            )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for row in rows:
        write_result(args, device, row)


def write_result(args: argparse.Namespace, device: str, row: dict[str, object]) -> None:
    result = {
        "benchmark": "generate",
        "baseline": "transformers generate(do_sample=False), same weights, same process, alternating",
        "device": device,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "repeats": args.reps,
        "statistic": "median of the repeats (engines interleaved within each repeat)",
        "threads": torch.get_num_threads(),
        "targets": {
            "tiny decode time ratio (compiled or eager) / hf": "<= 0.3",
            "2b-widths decode bandwidth fraction": ">= 0.70",
        },
        "results": [row],
    }
    out = args.out_dir / f"generate-{row['model']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
