"""Benchmark `qwenvl_min.kernels.apply_rotary` on the real models' rotary shapes.

    python benchmarks/bench_rotary.py [--quick] [--out PATH]

Cases: Qwen2.5-VL-7B vision 2D-RoPE (16 heads x 80 for q and k, fp32 tables, bf16 activations) at
448/896/1344 px images, and text M-RoPE for Qwen2-VL-2B (12 q / 2 kv heads x 128) and 7B (28 / 4) at
1k-32k tokens (bf16 tables, as the text model passes them).
Providers: ours-triton (out of place), ours-triton-inplace, torch (`qwenvl_min.rope.apply_rotary`),
hf (transformers' `apply_rotary_pos_emb_vision` / `apply_rotary_pos_emb`), liger (its M-RoPE, in place;
only when liger-kernel imports). Metrics: median microseconds and effective GB/s, counting q and k read
and written once and the cos/sin tables read once.
Without CUDA it runs a correctness-only quick mode (tiny shapes, the Triton interpreter, no timings):
it checks that every provider agrees with the torch reference and exits 0.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from _common import bench_us, environment, print_table, use_interpreter_without_cuda, write_results

use_interpreter_without_cuda()

from transformers.models.qwen2_vl import modeling_qwen2_vl as hf  # noqa: E402

from qwenvl_min import TextConfig, rope  # noqa: E402
from qwenvl_min.kernels import apply_rotary  # noqa: E402

# the released text rotary (head_dim 128, theta 1e6, sections [16, 24, 24]) on a one-head config
ROPE_CONFIG = TextConfig(
    vocab_size=8, hidden_size=128, intermediate_size=8, num_layers=1, num_heads=1, num_kv_heads=1,
    rms_norm_eps=1e-6, rope_theta=1e6, mrope_section=(16, 24, 24), tie_word_embeddings=True,
)  # fmt: skip

Case = dict  # name, q, k (our (.., H, D) layout), cos, sin (half width), positions (M-RoPE only)


def vision_case(px: int, dtype: torch.dtype, device: str, heads: int = 16) -> Case:
    side = px // 14  # patches per side
    grid = torch.tensor([[1, side, side]])
    cos, sin = rope.vision_rotary_table(grid, head_dim=80, theta=10000.0, merge_size=2)
    n = cos.shape[0]
    qkv = torch.randn(n, 3, heads, 80, device=device, dtype=dtype)  # q, k sliced from the fused projection
    return dict(name=f"vision-7B {px}px ({n} patches)", kind="vision", q=qkv[:, 0], k=qkv[:, 1],
                cos=cos.to(device), sin=sin.to(device))  # fmt: skip


def mrope_case(model: str, tokens: int, dtype: torch.dtype, device: str) -> Case:
    hq, hk = {"2B": (12, 2), "7B": (28, 4), "tiny": (3, 1)}[model]
    positions = torch.arange(tokens, device=device).expand(3, 1, tokens)  # text-only positions
    cos, sin = rope.mrope_table(positions, ROPE_CONFIG, dtype)
    # transformers' layout is (B, H, T, D), a transposed view of the (B, T, H, D) projections
    q = torch.randn(1, tokens, hq, 128, device=device, dtype=dtype)
    k = torch.randn(1, tokens, hk, 128, device=device, dtype=dtype)
    return dict(
        name=f"mrope-{model} T={tokens}", kind="mrope", q=q, k=k, cos=cos, sin=sin, positions=positions
    )


Provider = tuple[Callable, Callable]  # (run on fresh copies for checking, run for timing)


def providers(case: Case) -> dict[str, Provider]:
    q, k, cos, sin = case["q"], case["k"], case["cos"], case["sin"]

    def same(fn: Callable) -> Provider:
        return fn, fn

    out: dict[str, Provider] = {
        "ours-triton": same(lambda: apply_rotary(q, k, cos, sin)),
        # timing rotates the same buffers again on every call (no copies in the timed region)
        "ours-triton-inplace": (
            lambda: apply_rotary(q.clone(), k.clone(), cos, sin, inplace=True),
            lambda: apply_rotary(q, k, cos, sin, inplace=True),
        ),
        "torch": same(lambda: rope.apply_rotary(q, k, cos, sin)),
    }
    full = (torch.cat((cos, cos), -1), torch.cat((sin, sin), -1))
    if case["kind"] == "vision":
        out["hf"] = same(lambda: hf.apply_rotary_pos_emb_vision(q, k, *full))
    else:
        out["hf"] = same(
            lambda: tuple(
                x.transpose(1, 2)
                for x in hf.apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), *full)
            )
        )
        liger = _liger_mrope(case)
        if liger is not None:
            out["liger"] = liger
    return out


def _liger_mrope(case: Case) -> Provider | None:
    """liger-kernel's M-RoPE: per-axis full-width cos/sin (3, B, T, D); rotates q/k in place."""
    try:
        from liger_kernel.ops.qwen2vl_mrope import LigerQwen2VLMRopeFunction
    except ImportError:
        return None
    inv_freq = rope.inverse_frequencies(128, 1e6).to(case["q"].device)
    angles = case["positions"].float()[..., None] * inv_freq  # (3, B, T, 64)
    angles = torch.cat((angles, angles), -1)
    cos, sin = angles.cos().to(case["q"].dtype), angles.sin().to(case["q"].dtype)
    q, k = case["q"].transpose(1, 2), case["k"].transpose(1, 2)  # (B, H, T, D) views

    def check():
        q_rot, k_rot = LigerQwen2VLMRopeFunction.apply(q.clone(), k.clone(), cos, sin, [16, 24, 24], 1)
        return q_rot.transpose(1, 2), k_rot.transpose(1, 2)

    return check, lambda: LigerQwen2VLMRopeFunction.apply(q, k, cos, sin, [16, 24, 24], 1)


def bytes_moved(case: Case) -> int:
    q, k, cos = case["q"], case["k"], case["cos"]
    return 2 * (q.numel() + k.numel()) * q.element_size() + 2 * cos.numel() * cos.element_size()


# agreement with the fp32-math reference rounded to the dtype: FMA contraction in fp32, else one ulp
TOL = {torch.float32: dict(rtol=1e-6, atol=1e-5), torch.float16: dict(rtol=2**-10, atol=1e-5),
       torch.bfloat16: dict(rtol=2**-7, atol=1e-5)}  # fmt: skip


def run(cases: list[Case], timed: bool) -> list[dict]:
    rows = []
    for case in cases:
        q, k = case["q"], case["k"]
        q32, k32 = rope.apply_rotary(q.float(), k.float(), case["cos"].float(), case["sin"].float())
        expected = (q32.to(q.dtype), k32.to(k.dtype))
        for name, (check, timed_fn) in providers(case).items():
            row = dict(case=case["name"], provider=name, dtype=str(q.dtype).removeprefix("torch."))
            try:
                got = check()
                row["max_abs_diff"] = max(
                    (x.float() - y.float()).abs().max().item() for x, y in zip(got, expected)
                )
                row["agrees"] = all(torch.allclose(x, y, **TOL[q.dtype]) for x, y in zip(got, expected))
                if timed:
                    row["us"] = bench_us(timed_fn)
                    row["GB/s"] = bytes_moved(case) / row["us"] / 1e3
            except Exception as error:  # a third-party provider failing is reported in its row, not hidden
                row["error"] = f"{type(error).__name__}: {error}"
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="correctness only, tiny shapes (default on CPU)")
    parser.add_argument(
        "--out", type=Path, help="JSON path (default benchmarks/results/rotary-<device>.json)"
    )
    args = parser.parse_args()
    quick = args.quick or not torch.cuda.is_available()
    torch.manual_seed(0)
    if quick:
        print("QUICK MODE: correctness only (tiny shapes, Triton interpreter on CPU), no timings")
        cases = [vision_case(56, torch.float32, "cpu", heads=2), mrope_case("tiny", 16, torch.float16, "cpu")]
        cases += [vision_case(56, torch.bfloat16, "cpu", heads=2)]
    else:
        cases = [vision_case(px, torch.bfloat16, "cuda") for px in (448, 896, 1344)]
        cases += [
            mrope_case(m, t, torch.bfloat16, "cuda") for m in ("2B", "7B") for t in (1024, 4096, 16384, 32768)
        ]
    rows = run(cases, timed=not quick)
    print_table(rows, ["case", "provider", "dtype", "us", "GB/s", "max_abs_diff", "agrees", "error"])
    env = environment()
    if not quick or args.out:
        print("wrote", write_results("rotary", rows, env, mode="quick" if quick else "timed", path=args.out))
    bad = [r for r in rows if r["provider"].startswith("ours") and not r.get("agrees")]
    if bad:
        raise SystemExit(f"our kernel disagrees with the reference: {bad}")


if __name__ == "__main__":
    main()
