"""GPU check, step rotary: our Triton rotary vs the torch reference, transformers and liger's M-RoPE.

    python benchmarks/gpu_check_rotary.py --json PATH [--dry-run]

Cases (`cases`): Qwen2.5-VL-7B vision 2D-RoPE (16 heads x 80, fp32 tables) at 448 and 1344 px, text
M-RoPE at Qwen2-VL-2B (12 / 2 heads x 128) and 7B (28 / 4) widths at 4k and 16k tokens (tables in the
activation dtype, as the text model passes them), each in bf16 and fp32. Providers and the agreement
rule are `bench_rotary.py`'s (every row checked against an fp32 rotation; ours also bit-equal to the
torch reference when compiled); liger-kernel has an M-RoPE op only (no vision 2D-RoPE), and a row says
why when it does not import. Fails when any of our rows breaks the rule.
"""

from __future__ import annotations

import torch
from _common import print_table
from gpu_check_common import make_timer, parse_step_args, write_step

STEP = "rotary"
VISION_PX = (448, 1344)
MROPE = (("2B", 4096), ("2B", 16384), ("7B", 16384))


def case_specs(dry_run: bool) -> list[tuple]:
    """("vision", px, dtype, heads) / ("mrope", model, tokens, dtype) for each case this step runs.
    The dry run stays fp32: the interpreter cannot do bf16 arithmetic."""
    if dry_run:
        return [("vision", 56, torch.float32, 2), ("mrope", "tiny", 16, torch.float32)]
    specs: list[tuple] = []
    for dtype in (torch.bfloat16, torch.float32):
        specs += [("vision", px, dtype, 16) for px in VISION_PX]
        specs += [("mrope", model, tokens, dtype) for model, tokens in MROPE]
    return specs


def cases(dry_run: bool) -> list[dict]:
    import bench_rotary

    device = "cpu" if dry_run else "cuda"
    out = []
    for spec in case_specs(dry_run):
        if spec[0] == "vision":
            _, px, dtype, heads = spec
            out.append(bench_rotary.vision_case(px, dtype, device, heads=heads))
        else:
            _, model, tokens, dtype = spec
            out.append(bench_rotary.mrope_case(model, tokens, dtype, device))
    return out


def main() -> None:
    args = parse_step_args(__doc__.splitlines()[0])
    import bench_rotary  # after parse_step_args: it sets or clears TRITON_INTERPRET

    torch.manual_seed(0)
    rows = bench_rotary.run(cases(args.dry_run), timed=True, timer=make_timer(args.dry_run))
    missing = [
        {"provider": r["provider"], "case": r["case"], "kind": "unavailable", "reason": r["unavailable"]}
        for r in rows
        if "unavailable" in r
    ]
    notes = {"liger": "M-RoPE only (liger-kernel has no vision 2D-RoPE op): text rows have a liger row"}
    bad = bench_rotary.findings(rows)
    write_step(args.json, STEP, args.dry_run, [r for r in rows if "unavailable" not in r], missing,
               {**notes, "findings": bad})  # fmt: skip
    columns = ["case", "provider", "dtype", "compute", "us", "GB/s", "agrees", "equals_torch", "error"]
    print_table(rows, [*columns, "unavailable"])
    if bad:
        raise SystemExit(f"rows outside the agreement rule: {bad}")


if __name__ == "__main__":
    main()
