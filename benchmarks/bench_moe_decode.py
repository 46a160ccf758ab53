"""Qwen3-VL-MoE decode speed per token: ours vs transformers' generate, same weights, greedy.

The model has Qwen3-VL-30B-A3B's real text widths (hidden 2048, 32 query / 4 kv heads of 128, 128
experts of width 768, 8 per token, vocab 151936, untied lm_head) with `--layers` sparse decoder layers
(default 2: the whole 48 would not fit this machine's memory) and a one-block vision tower (unused: the
prompt is text). Weights are random (normal, std 0.02), built once in transformers and shared with ours
(`QwenVL.from_hf(..., share=True)`: no copy). transformers runs its default experts implementation
("grouped_mm"); ours groups the tokens by expert and runs each chosen expert once
(`qwenvl_min.model.moe`).

Decode time per token = (time for 1 + N new tokens - time for 1 new token) / N, for a prompt of
`--prompt` random tokens; the engines alternate within each repetition (same process, same threads),
the median over repetitions is reported with every raw time in the JSON, and the greedy tokens of both
engines must be equal.

    .venv/bin/python benchmarks/bench_moe_decode.py [--dtype bfloat16] [--layers 2] [--reps 5] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
import transformers
from _common import environment, print_table, write_results

from qwenvl_min import Config, QwenVL
from qwenvl_min.generate import generate

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def build(layers: int, dtype: torch.dtype) -> tuple[Config, torch.nn.Module, QwenVL]:
    base = Config.preset("qwen3-vl-30b-a3b")
    moe = dataclasses.replace(base.text.moe, sparse_layers=tuple(range(layers)))
    config = dataclasses.replace(
        base,
        text=dataclasses.replace(base.text, num_layers=layers, moe=moe),
        vision=dataclasses.replace(base.vision, depth=1, deepstack_indexes=(0,)),
    )
    hf_config = transformers.Qwen3VLMoeConfig(**config.to_hf())
    with torch.device("meta"):  # no random init of 2.5B parameters: filled below
        hf = transformers.Qwen3VLMoeForConditionalGeneration._from_config(hf_config, dtype=dtype)
    hf = hf.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32).mul_(0.02))
        for name, buffer in hf.named_buffers():  # rotary inv_freq: recompute what to_empty left unset
            module = hf.get_submodule(name.rsplit(".", 1)[0])
            if name.endswith("inv_freq") and hasattr(module, "compute_default_rope_parameters"):
                buffer.copy_(module.compute_default_rope_parameters(module.config)[0])
            elif name.endswith("inv_freq"):
                buffer.copy_(module.compute_axial_rope_parameters(module.config)[0])
    hf.generation_config.eos_token_id = None  # always decode the full count
    ours = QwenVL.from_hf(config.to_hf(), hf.state_dict(), share=True).eval()
    return config, hf, ours


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/moe_decode-<device>.json)"
    )
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]
    config, hf, ours = build(args.layers, dtype)
    ids = torch.randint(0, 150000, (1, args.prompt), generator=torch.Generator().manual_seed(1))

    def hf_generate(n: int) -> torch.Tensor:
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False
            )
        return out[:, ids.shape[1] :]

    def ours_generate(n: int) -> torch.Tensor:
        return generate(ours, ids, max_new_tokens=n, temperature=0, stop_token_ids=())

    engines = {"hf": hf_generate, "ours": ours_generate}
    for run in engines.values():  # warm-up (allocators, one-time setup)
        run(2)
    times: dict[str, list[float]] = {name: [] for name in engines}
    tokens = {}
    for _ in range(args.reps):
        for name, run in engines.items():
            first, _ = timed(lambda run=run: run(1))
            full, out = timed(lambda run=run: run(1 + args.new_tokens))
            times[name].append((full - first) / args.new_tokens)
            tokens[name] = out
    same = torch.equal(tokens["hf"], tokens["ours"])
    base = statistics.median(times["hf"])
    rows = []
    for name in engines:
        ms = 1e3 * statistics.median(times[name])
        rows.append(
            dict(
                engine=name,
                dtype=args.dtype,
                layers=args.layers,
                prompt_tokens=args.prompt,
                new_tokens=args.new_tokens,
                ms_per_token=ms,
                all_ms_per_token=[1e3 * t for t in times[name]],
                ratio_vs_hf=ms / (1e3 * base),
                tokens_equal=same,
                threads=torch.get_num_threads(),
                hf_experts_implementation=hf.config.text_config._experts_implementation,
            )  # fmt: skip
        )
    print_table(rows, ["engine", "dtype", "layers", "ms_per_token", "ratio_vs_hf", "tokens_equal"])
    from pathlib import Path

    out = write_results(
        f"moe_decode-{args.dtype}", rows, environment(), mode="cpu", path=Path(args.out) if args.out else None
    )
    print(f"wrote {out}")
    if not same:
        raise SystemExit("the greedy tokens differ between transformers and ours")


if __name__ == "__main__":
    main()
