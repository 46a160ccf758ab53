"""Benchmark `qwenvl_min.kernels.apply_rotary` on the real models' rotary shapes.

    python benchmarks/bench_rotary.py [--quick] [--out PATH]

Cases: Qwen2.5-VL-7B vision 2D-RoPE (16 heads x 80 for q and k, fp32 tables, bf16 activations) at
448/896/1344 px images, and text M-RoPE for Qwen2-VL-2B (12 q / 2 kv heads x 128) and 7B (28 / 4) at
1k-32k tokens (bf16 tables, as the text model passes them).
Providers: ours-triton (the public call, out of place), ours-triton-inplace, triton:<variant> (every
rotary variant in `qwenvl_min.kernels._registry`, launched directly), torch (`qwenvl_min.model.rope.apply_rotary`),
hf (transformers' `apply_rotary_pos_emb_vision` / `apply_rotary_pos_emb`), liger (its M-RoPE, in place;
a row saying why when liger-kernel does not import). Metrics: median microseconds and effective GB/s, counting q and k read
and written once and the cos/sin tables read once.

Agreement, the same rule for every row: against an fp32 rotation of the same inputs, each element must
lie within (2 u_c + u_out + 2 u_32) * m, where m = |x cos| + |x_other sin| (fp32), u_c is the unit
roundoff of the dtype the provider computes in (its row's `compute`), u_out that of the output dtype
when it differs from c (one more rounding), and 2 u_32 covers the fp32 reference's own rounding. Why:
two rounded products and a rounded sum are off by <= u_c |x cos| + u_c |x_other sin| + u_c |sum|
<= 2 u_c m. Under the Triton interpreter our bf16 casts truncate: u doubles there. `equals_torch` says
whether a row is bit-equal to the torch reference (ours must be on a GPU: the numerics rule in
kernels/_rotary.py).
Without CUDA it runs a correctness-only quick mode (tiny shapes, the Triton interpreter, no timings):
it checks every row's agreement and exits 0.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import bench_us, environment, print_table, use_interpreter_without_cuda, write_results

use_interpreter_without_cuda()

from transformers.models.qwen2_vl import modeling_qwen2_vl as hf  # noqa: E402

from qwenvl_min import TextConfig  # noqa: E402
from qwenvl_min.kernels import _registry, apply_rotary  # noqa: E402
from qwenvl_min.kernels._rotary import INTERPRETED, STAGE, rotate_into  # noqa: E402
from qwenvl_min.model import rope  # noqa: E402

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


@dataclass(frozen=True)
class Provider:
    check: Callable  # runs on fresh copies, for the agreement check
    timed: Callable  # what is timed
    compute: torch.dtype  # the dtype its math is rounded to (the agreement rule's u_c)
    ours: bool = False  # our kernel (its bf16 casts truncate under the interpreter)


def _variant(name: str, q, k, cos, sin) -> Callable:
    def run():
        q_out, k_out = torch.empty_like(q), torch.empty_like(k)
        rotate_into(q, k, cos, sin, q_out, k_out, False, variant=name)
        return q_out, k_out

    return run


def providers(case: Case) -> dict[str, Provider | Unavailable]:
    q, k, cos, sin = case["q"], case["k"], case["cos"], case["sin"]
    promoted = torch.promote_types(q.dtype, cos.dtype)  # torch's rule, and ours
    q_scratch, k_scratch = q.clone(), k.clone()  # what the in-place rows rotate while timed

    def same(fn: Callable, compute: torch.dtype = promoted, ours: bool = False) -> Provider:
        return Provider(fn, fn, compute, ours)

    out: dict[str, Provider] = {
        "ours-triton": same(lambda: apply_rotary(q, k, cos, sin), ours=True),
        # timing rotates private copies again on every call (no copies in the timed region, and the
        # case's q, k stay as they are for the rows after this one)
        "ours-triton-inplace": Provider(
            lambda: apply_rotary(q.clone(), k.clone(), cos, sin, inplace=True),
            lambda: apply_rotary(q_scratch, k_scratch, cos, sin, inplace=True),
            promoted,
            ours=True,
        ),
    }
    for variant in _registry.variants(STAGE):
        out[f"triton:{variant.name}"] = same(_variant(variant.name, q, k, cos, sin), ours=True)
    out["torch"] = same(lambda: rope.apply_rotary(q, k, cos, sin))
    full = (torch.cat((cos, cos), -1), torch.cat((sin, sin), -1))
    if case["kind"] == "vision":  # transformers upcasts q, k and the tables to fp32
        out["hf"] = same(lambda: hf.apply_rotary_pos_emb_vision(q, k, *full), compute=torch.float32)
    else:
        out["hf"] = same(
            lambda: tuple(
                x.transpose(1, 2)
                for x in hf.apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), *full)
            )
        )
        out["liger"] = _liger_mrope(case)
    return out


@dataclass(frozen=True)
class Unavailable:
    """A provider that cannot run here, and why (reported in its row, never dropped silently)."""

    reason: str


def liger_mrope_function() -> tuple[type | None, str | None]:
    """(liger-kernel's M-RoPE autograd function, None), or (None, why it cannot be used)."""
    try:
        from liger_kernel.ops.qwen2vl_mrope import LigerQwen2VLMRopeFunction
    except ImportError as error:
        return None, f"liger-kernel is not importable ({error}); install its wheel (make gpu-wheels)"
    return LigerQwen2VLMRopeFunction, None


def _liger_mrope(case: Case) -> Provider | Unavailable:
    """liger-kernel's M-RoPE: per-axis full-width cos/sin (3, B, T, D); rotates q/k in place."""
    function, reason = liger_mrope_function()
    if function is None:
        return Unavailable(reason)
    inv_freq = rope.inverse_frequencies(128, 1e6).to(case["q"].device)
    angles = case["positions"].float()[..., None] * inv_freq  # (3, B, T, 64)
    angles = torch.cat((angles, angles), -1)
    cos, sin = angles.cos().to(case["q"].dtype), angles.sin().to(case["q"].dtype)
    q, k = case["q"].transpose(1, 2), case["k"].transpose(1, 2)  # (B, H, T, D) views

    def check():
        q_rot, k_rot = function.apply(q.clone(), k.clone(), cos, sin, [16, 24, 24], 1)
        return q_rot.transpose(1, 2), k_rot.transpose(1, 2)

    # liger computes in its tables' dtype, here the activation dtype; timed in place on private copies
    q_scratch, k_scratch = q.clone(), k.clone()
    return Provider(check, lambda: function.apply(q_scratch, k_scratch, cos, sin, [16, 24, 24], 1), q.dtype)


def bytes_moved(case: Case) -> int:
    q, k, cos = case["q"], case["k"], case["cos"]
    return 2 * (q.numel() + k.numel()) * q.element_size() + 2 * cos.numel() * cos.element_size()


def unit_roundoff(dtype: torch.dtype, truncating: bool = False) -> float:
    """u = 2^-p for a p-bit significand (fp32 2^-24, fp16 2^-11, bf16 2^-8); a truncating cast errs by
    up to a whole ulp, 2u."""
    u = torch.finfo(dtype).eps / 2
    return 2 * u if truncating else u


def bound_coefficient(provider: Provider, out_dtype: torch.dtype) -> float:
    """The agreement rule's (2 u_c + u_out + 2 u_32) for one row (module docstring)."""
    truncating = provider.ours and INTERPRETED and torch.bfloat16 in (provider.compute, out_dtype)
    u_c = unit_roundoff(provider.compute, truncating)
    u_out = 0.0 if out_dtype == provider.compute else unit_roundoff(out_dtype, truncating)
    return 2 * u_c + u_out + 2 * unit_roundoff(torch.float32)


def magnitude(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """|x cos| + |x_other sin| per element, fp32, with x in our (..., H, D) layout."""
    half = x.shape[-1] // 2
    x = x.float().abs()
    c, s = (torch.cat((t, t), -1).float().abs().unsqueeze(-2) for t in (cos, sin))
    return x * c + torch.cat((x[..., half:], x[..., :half]), -1) * s


def run(cases: list[Case], timed: bool, timer: Callable[[Callable], float] = bench_us) -> list[dict]:
    """One row per (case, provider); `timer(fn)` returns microseconds (CUDA events by default)."""
    rows = []
    for case in cases:
        q, k, cos, sin = case["q"], case["k"], case["cos"], case["sin"]
        expected = rope.apply_rotary(q.float(), k.float(), cos.float(), sin.float())
        scales = (magnitude(q, cos, sin), magnitude(k, cos, sin))
        torch_ref = rope.apply_rotary(q, k, cos, sin)
        for name, provider in providers(case).items():
            row = dict(case=case["name"], provider=name, dtype=str(q.dtype).removeprefix("torch."))
            if isinstance(provider, Unavailable):
                rows.append({**row, "ours": False, "unavailable": provider.reason})
                continue
            row["compute"], row["ours"] = str(provider.compute).removeprefix("torch."), provider.ours
            try:
                got = provider.check()
                coefficient = bound_coefficient(provider, q.dtype)
                errors = [(x.float() - y).abs() for x, y in zip(got, expected)]
                row["max_abs_diff"] = max(e.max().item() for e in errors)
                # elementwise: error <= coefficient * magnitude (+ the smallest subnormal, for zeros)
                tiny = torch.finfo(q.dtype).smallest_normal * torch.finfo(q.dtype).eps
                row["agrees"] = all(bool((e <= coefficient * m + tiny).all()) for e, m in zip(errors, scales))
                row["equals_torch"] = all(torch.equal(x, y) for x, y in zip(got, torch_ref))
                if timed:
                    row["us"] = timer(provider.timed)
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
        cases += [
            vision_case(56, torch.bfloat16, "cpu", heads=2),
            mrope_case("tiny", 16, torch.bfloat16, "cpu"),
        ]
    else:
        cases = [vision_case(px, torch.bfloat16, "cuda") for px in (448, 896, 1344)]
        cases += [
            mrope_case(m, t, torch.bfloat16, "cuda") for m in ("2B", "7B") for t in (1024, 4096, 16384, 32768)
        ]
    rows = run(cases, timed=not quick)
    columns = ["case", "provider", "dtype", "compute", "us", "GB/s", "max_abs_diff", "agrees", "equals_torch"]
    print_table(rows, [*columns, "error", "unavailable"])
    env = environment()
    if not quick or args.out:
        print("wrote", write_results("rotary", rows, env, mode="quick" if quick else "timed", path=args.out))
    # the rule holds for every correct provider: any row outside it is a finding; an error is one for
    # our rows (a third-party baseline that fails to run is reported in its row)
    bad = findings(rows)
    if bad:
        raise SystemExit(f"rows outside the agreement rule: {bad}")


def findings(rows: list[dict]) -> list[dict]:
    """Rows that break the agreement rule: any provider that ran, and our rows even when they raised;
    compiled, ours must also equal torch's rule exactly (kernels/_rotary.py; interpreted bf16 casts
    truncate). A third-party baseline that fails to run or is unavailable is reported in its row."""
    ran = [r for r in rows if "unavailable" not in r]
    bad = [r for r in ran if r["ours"] or "error" not in r if not r.get("agrees")]
    return bad + [r for r in ran if r["ours"] and not INTERPRETED and not r.get("equals_torch")]


if __name__ == "__main__":
    main()
