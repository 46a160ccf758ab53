"""GPU check, step decode: per-token decode time of `qwenvl_min.generate`, eager vs compiled with CUDA
graphs (`generate(..., compile="reduce-overhead")`: a static, preallocated KV cache, one graph for all
steps), on a random model with Qwen2-VL-2B's text widths (1536 / 8960 / 12 heads / 2 kv heads / vocab
151936, 4 decoder layers: `bench_generate.py`'s "2b-widths"), bf16, greedy.

    python benchmarks/gpu_check_decode.py --json PATH [--dry-run]

Per-token time: `on_token` stamps every step after a device sync; the median gap between consecutive
tokens after the first (prefill and the first step excluded) over `NEW_TOKENS` tokens, median over
`REPS` interleaved runs. The compiled path's first call (the compile and graph capture) is timed
apart. Tokens of the two paths are compared and reported (not a pass criterion: bf16 logits of random
weights have near ties that another op order may flip).

`compile=` is detected by feature: a build whose `generate` has no such parameter records the step as
"not available in this build" (exit 0) instead of failing. Dry run: the tiny model, fp32, CPU, the
torch path, `compile="aot_eager"`: the same capture, static cache and guards as a real compile, without
inductor's C++ code generation (a cold inductor build of even the tiny model takes minutes on a 2-core
CPU, more than the whole dry run may).
"""

from __future__ import annotations

import dataclasses
import inspect
import statistics
import time

import torch
from _common import print_table
from gpu_check_common import parse_step_args, unavailable, write_step

STEP = "decode"
PROMPT_TOKENS, NEW_TOKENS, REPS = 128, 64, 3
DRY_PROMPT_TOKENS, DRY_NEW_TOKENS, DRY_REPS = 8, 4, 1
NOT_AVAILABLE = "not available in this build: qwenvl_min.generate.generate has no compile= parameter"


def compile_supported() -> bool:
    from qwenvl_min.generate import generate

    return "compile" in inspect.signature(generate).parameters


def build(dry_run: bool, device: torch.device, dtype: torch.dtype):
    from qwenvl_min import Config, QwenVL

    if dry_run:
        config = Config.preset("tiny-qwen2-vl")
    else:
        base = Config.preset("qwen2-vl-2b")
        config = dataclasses.replace(
            base,
            text=dataclasses.replace(base.text, num_layers=4),
            vision=dataclasses.replace(base.vision, depth=2),
        )
    torch.manual_seed(0)
    with torch.device(device):  # random init where the weights live
        model = QwenVL(config, kernels="torch" if dry_run else None).to(dtype).eval()
    return config, model


def token_times(model, prompt: torch.Tensor, new_tokens: int, compile_mode, device) -> tuple[list[float], torch.Tensor]:  # fmt: skip
    """(wall-clock stamp of every new token, the tokens) of one greedy generate call."""
    from qwenvl_min.generate import generate

    stamps: list[float] = []

    def stamp(_tokens: torch.Tensor) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    options = {} if compile_mode is None else {"compile": compile_mode}
    out = generate(model, prompt, max_new_tokens=new_tokens, stop_token_ids=(), temperature=0,
                   on_token=stamp, **options)  # fmt: skip
    return stamps, out


def run(dry_run: bool) -> tuple[list[dict], dict]:
    device = torch.device("cpu" if dry_run else "cuda")
    dtype = torch.float32 if dry_run else torch.bfloat16
    prompt_len, new_tokens, reps = (
        (DRY_PROMPT_TOKENS, DRY_NEW_TOKENS, DRY_REPS) if dry_run else (PROMPT_TOKENS, NEW_TOKENS, REPS)
    )
    config, model = build(dry_run, device, dtype)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, min(config.bos_token_id, 1000), (1, prompt_len), generator=generator)
    modes = {"eager": None, "compiled": "aot_eager" if dry_run else "reduce-overhead"}
    warm_s, tokens = {}, {}
    for name, mode in modes.items():  # warm-up: kernels, the compile and the graph capture
        start = time.perf_counter()
        _, tokens[name] = token_times(model, prompt, new_tokens, mode, device)
        warm_s[name] = time.perf_counter() - start
    gaps: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(reps):
        for name, mode in modes.items():
            stamps, _ = token_times(model, prompt, new_tokens, mode, device)
            steps = [b - a for a, b in zip(stamps[1:], stamps[2:])]  # after the first decode step
            gaps[name].append(1e3 * statistics.median(steps))
    same = (tokens["eager"] == tokens["compiled"]).flatten().tolist()
    rows = []
    for name, mode in modes.items():
        ms = statistics.median(gaps[name])
        rows.append(dict(impl=name, compile=str(mode), ms_per_token=ms, all_ms_per_token=gaps[name],
                         first_call_s=warm_s[name], speedup_vs_eager=statistics.median(gaps["eager"]) / ms))  # fmt: skip
    notes = {
        "model": "tiny-qwen2-vl" if dry_run else "qwen2-vl-2b text widths, 4 layers",
        "dtype": str(dtype)[6:],
        "prompt_tokens": prompt_len,
        "new_tokens": new_tokens,
        "tokens_match": all(same),
        "first_mismatch": None if all(same) else same.index(False),
    }
    return rows, notes


def main() -> None:
    args = parse_step_args(__doc__.splitlines()[0])
    if not compile_supported():
        print(f"decode: {NOT_AVAILABLE}")
        write_step(args.json, STEP, args.dry_run, [], [unavailable("compiled", NOT_AVAILABLE)],
                   {"status": "unavailable"})  # fmt: skip
        return
    rows, notes = run(args.dry_run)
    write_step(args.json, STEP, args.dry_run, rows, [], notes)
    print_table(rows, ["impl", "compile", "ms_per_token", "first_call_s", "speedup_vs_eager"])
    print("tokens match:", notes["tokens_match"])


if __name__ == "__main__":
    main()
