"""Qwen3-VL-MoE decode speed per token: ours vs transformers' generate, same weights, greedy.

The model has Qwen3-VL-30B-A3B's real text widths (hidden 2048, 32 query / 4 kv heads of 128, 128
experts of width 768, 8 per token, vocab 151936, untied lm_head) with `--layers` sparse decoder layers
(default 8, 9.7 GB in bf16: the whole 48 would not fit this machine's memory; with fewer layers the
151936 x 2048 lm_head, read once per token, hides the experts' share) and a one-block vision tower
(unused: the prompt is text). Weights are random (normal, std 0.02), built once in transformers and shared with ours
(`QwenVL.from_hf(..., share=True)`: no copy). transformers runs its default experts implementation
("grouped_mm"); ours groups the tokens by expert and runs each chosen expert once
(`qwenvl_min.model.moe`).

Decode time per token: each engine reports the moment every new token is ready (ours through
`generate(on_token=)`, transformers through a stopping criterion, called once per step), and a
repetition's figure is the median gap between consecutive tokens (the prefill excluded), for a prompt of
`--prompt` random tokens. The engines alternate within each repetition (same process, same threads);
the median over repetitions is reported with every repetition's figure in the JSON, with the machine's
load before and after (it is shared), and the greedy tokens of both engines must be equal.

A second table times the sparse MLP alone (layer 0's: transformers' `Qwen3VLMoeTextSparseMoeBlock` and
our `SparseMoE`, the same weight tensors) on one token (a decode step) and on `--block-tokens` tokens (a
prefill), median of `--block-calls` alternating calls: the experts' own cost, without the lm_head and
attention that dominate a 2048-wide model's decode step at few layers.

    .venv/bin/python benchmarks/bench_moe_decode.py [--dtype bfloat16] [--layers 2] [--reps 5] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
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


class _Stamps(transformers.StoppingCriteria):
    """A stopping criterion that never stops and notes when each of transformers' steps is done."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


def per_token(times: list[float]) -> float:
    """Median gap between consecutive tokens (the first token, after the prefill, starts the count)."""
    return statistics.median(b - a for a, b in zip(times, times[1:]))


def moe_block_rows(hf, ours: QwenVL, dtype: torch.dtype, prefill: int, calls: int) -> list[dict]:
    """The sparse MLP of layer 0 alone, both implementations on the same tensors (see the docstring)."""
    blocks = {"hf": hf.model.language_model.layers[0].mlp, "ours": ours.text.layers[0].mlp}
    rows = []
    for tokens in (1, prefill):
        x = torch.randn(1, tokens, 2048, generator=torch.Generator().manual_seed(tokens)).to(dtype)
        times: dict[str, list[float]] = {name: [] for name in blocks}
        with torch.inference_mode():
            outs = {name: block(x) for name, block in blocks.items()}  # warm-up, and the outputs compared
            for _ in range(calls):
                for name, block in blocks.items():
                    start = time.perf_counter()
                    block(x)
                    times[name].append(time.perf_counter() - start)
        base = statistics.median(times["hf"])
        diff = (outs["ours"].float() - outs["hf"].float()).abs().max().item()
        for name in blocks:
            ms = 1e3 * statistics.median(times[name])
            rows.append(dict(engine=f"moe-block-{name}", tokens=tokens, ms_per_call=ms,
                             ratio_vs_hf=ms / (1e3 * base), max_abs_diff_vs_hf=diff))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default torch's); 1 is steadier on a shared machine, where a busy core stalls "
        "every parallel region of a multi-threaded decode step",
    )
    parser.add_argument("--block-tokens", type=int, default=256)
    parser.add_argument("--block-calls", type=int, default=30)
    parser.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/moe_decode-<device>.json)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    load_before = os.getloadavg()[0]  # a shared machine: the load the timings were taken under
    config, hf, ours = build(args.layers, dtype)
    ids = torch.randint(0, 150000, (1, args.prompt), generator=torch.Generator().manual_seed(1))

    def hf_generate(n: int) -> tuple[list[float], torch.Tensor]:
        stamps = _Stamps()
        with torch.inference_mode():
            out = hf.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                do_sample=False,
                stopping_criteria=transformers.StoppingCriteriaList([stamps]),
            )
        return stamps.times, out[:, ids.shape[1] :]

    def ours_generate(n: int) -> tuple[list[float], torch.Tensor]:
        stamps: list[float] = []

        def note(_: torch.Tensor) -> None:
            stamps.append(time.perf_counter())

        return stamps, generate(ours, ids, max_new_tokens=n, temperature=0, stop_token_ids=(), on_token=note)

    engines = {"hf": hf_generate, "ours": ours_generate}
    for run in engines.values():  # warm-up (allocators, one-time setup)
        run(3)
    times: dict[str, list[float]] = {name: [] for name in engines}
    tokens = {}
    for _ in range(args.reps):
        for name, run in engines.items():
            stamps, out = run(1 + args.new_tokens)
            assert len(stamps) == 1 + args.new_tokens, (name, len(stamps))
            times[name].append(per_token(stamps))
            tokens[name] = out
    same = torch.equal(tokens["hf"], tokens["ours"])
    block_rows = moe_block_rows(hf, ours, dtype, args.block_tokens, args.block_calls)
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
                loadavg_1min_before=load_before,
                loadavg_1min_after=os.getloadavg()[0],
            )  # fmt: skip
        )
    print_table(rows, ["engine", "dtype", "layers", "ms_per_token", "ratio_vs_hf", "tokens_equal"])
    print_table(block_rows, ["engine", "tokens", "ms_per_call", "ratio_vs_hf", "max_abs_diff_vs_hf"])
    rows += block_rows
    from pathlib import Path

    out = write_results(
        f"moe_decode-{args.dtype}-{torch.get_num_threads()}threads",
        rows,
        environment(),
        mode="cpu",
        path=Path(args.out) if args.out else None,
    )
    print(f"wrote {out}")
    if not same:
        raise SystemExit("the greedy tokens differ between transformers and ours")


if __name__ == "__main__":
    main()
