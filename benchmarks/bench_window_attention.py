"""Benchmark `qwenvl_min.kernels.window_attention` on Qwen2.5-VL-7B vision attention layers.

    python benchmarks/bench_window_attention.py [--quick] [--out PATH]

Layers: one image of 448/896/1344 px (32^2 / 64^2 / 96^2 patches), 16 heads x 80, bf16, either a window
layer (segments = 8x8-patch windows, <= 64 tokens, edge windows smaller) or a full layer (one segment per
frame). Providers:
  ours-triton          the public call as the model makes it (validates cu_seqlens: one host sync)
  ours-triton-nosync   validate=False with max_seqlen given (the kernel alone)
  torch                `qwenvl_min.model.attention.segment_attention_torch` (one SDPA call per length group)
  hf-per-window        transformers' non-flash vision path: split by segment, one SDPA call each
  torch-varlen-flash   PyTorch's own FlashAttention-2 varlen kernel (torch.nn.attention.varlen.varlen_attn,
                       or the aten op on older torch)
  flash-attn           flash_attn_varlen_func, when the flash-attn package imports
  triton:<variant>     every forward variant in `qwenvl_min.kernels._registry`, launched directly
Agreement, the same rule for every row: against an fp32 computation on the same inputs, the max error
must be <= (2 u + L u_32) max|v|, with u the unit roundoff of the row's dtype (2^-24 fp32, 2^-11 fp16,
2^-8 bf16; doubled for our bf16 under the interpreter, whose casts truncate) and L the longest segment.
Why: the output is a convex combination of v rows; rounding P to the dtype before P V moves it by
<= u sum_j P_ij |v_j| <= u max|v|, rounding the output by <= u |o| <= u max|v|, and fp32 accumulation
over L keys by <= L u_32 max|v| (the classic worst-case sum bound; the reference has the same).
Metrics: median microseconds; GB/s counting q, k, v read and the output written once; effective TFLOP/s
= 4 * sum(L^2) * D * H / time (head_dim 80, no padding counted). Window layers are memory bound (read
GB/s), full layers compute bound (read TFLOP/s). A fwd+bwd row set is timed for ours and torch.
Without CUDA it runs a correctness-only quick mode (tiny shapes, the Triton interpreter, no timings).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from _common import bench_us, environment, print_table, use_interpreter_without_cuda, write_results

use_interpreter_without_cuda()

from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402

from qwenvl_min.kernels import _registry, window_attention  # noqa: E402
from qwenvl_min.kernels._window_attention import FWD, INTERPRETED, attend_into  # noqa: E402
from qwenvl_min.model.attention import segment_attention_torch  # noqa: E402
from qwenvl_min.model.geometry import frame_lengths, window_unit_order  # noqa: E402
from qwenvl_min.model.segments import Segments  # noqa: E402

HEADS, HEAD_DIM = 16, 80
SCALE = HEAD_DIM**-0.5


def layer_case(px: int, layer: str, dtype: torch.dtype, device: str, heads: int = HEADS) -> dict:
    side = px // 14
    grid = torch.tensor([[1, side, side]])
    lengths = (
        window_unit_order(grid, window_merged=4, merge=2)[1] if layer == "window" else frame_lengths(grid)
    )
    n = sum(lengths)
    qkv = torch.randn(n, 3, heads, HEAD_DIM, device=device, dtype=dtype)  # fused projection output
    q, k, v = qkv.unbind(1)
    return dict(
        name=f"{layer} {px}px ({n} tok, {len(lengths)} seg)", layer=layer, q=q, k=k, v=v, lengths=lengths,
        segments=Segments.from_lengths(lengths, device=device),
    )  # fmt: skip


def _hf_per_window(q, k, v, lengths):
    module = torch.nn.Module()
    module.is_causal = False
    splits = [torch.split(x.transpose(0, 1).unsqueeze(0), lengths, dim=2) for x in (q, k, v)]
    outs = [
        sdpa_attention_forward(module, a, b, c, None, scaling=SCALE, is_causal=False)[0]
        for a, b, c in zip(*splits)
    ]
    return torch.cat(outs, dim=1)[0]


# The baselines below run with their default softmax scale, D^-0.5 = SCALE (older signatures lack the
# keyword), and non-causal by default.


def torch_varlen() -> tuple[Callable | None, str]:
    """PyTorch's own FlashAttention-2 varlen kernel (CUDA only), found by feature: (fn, the API used) or
    (None, why there is none). The public `torch.nn.attention.varlen.varlen_attn` where this torch has
    it, else the aten op that takes cumulative sequence lengths; never a silent substitute."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError as error:
        public = f"torch.nn.attention.varlen.varlen_attn not in torch {torch.__version__} ({error})"
    else:

        def public_varlen(q, k, v, cu, m):
            return varlen_attn(q, k, v, cu, cu, m, m)

        return public_varlen, "torch.nn.attention.varlen.varlen_attn"
    op = getattr(torch.ops.aten, "_flash_attention_forward", None)
    if op is None:
        return None, f"{public}; torch.ops.aten._flash_attention_forward does not exist either"

    def aten_varlen(q, k, v, cu, m):
        # (out, lse, philox seed, philox offset, debug mask); dropout 0, non-causal, no debug mask
        return op(q, k, v, cu, cu, m, m, 0.0, False, False)[0]

    return aten_varlen, f"torch.ops.aten._flash_attention_forward ({public})"


def _flash_attn() -> Callable | None:
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return lambda q, k, v, cu, m: flash_attn_varlen_func(q, k, v, cu, cu, m, m)


def _variant(name: str, q, k, v, cu, longest) -> Callable[[], torch.Tensor]:
    def run():
        out, lse = torch.empty_like(q), torch.empty(q.shape[1], q.shape[0], device=q.device)
        attend_into(q, k, v, cu, longest, SCALE, out, lse, variant=name)
        return out

    return run


OURS = {"ours-triton", "ours-triton-nosync"} | {f"triton:{v.name}" for v in _registry.variants(FWD)}


def providers(case: dict, cuda: bool) -> dict[str, Callable[[], torch.Tensor]]:
    """Every provider by row name; the names in OURS run our kernels."""
    q, k, v, seg = case["q"], case["k"], case["v"], case["segments"]
    cu, longest = seg.cu_seqlens, seg.max_len
    out = {
        "ours-triton": lambda: window_attention(q, k, v, cu, max_seqlen=longest, scale=SCALE),
        "ours-triton-nosync": lambda: window_attention(q, k, v, cu, longest, SCALE, validate=False),
        **{f"triton:{x.name}": _variant(x.name, q, k, v, cu, longest) for x in _registry.variants(FWD)},
        "torch": lambda: segment_attention_torch(q, k, v, seg, SCALE),
        "hf-per-window": lambda: _hf_per_window(q, k, v, case["lengths"]),
    }
    if cuda:
        for name, make in (("torch-varlen-flash", lambda: torch_varlen()[0]), ("flash-attn", _flash_attn)):
            fn = make()
            if fn is not None:
                # these kernels want contiguous (N, H, D) inputs: copy once, outside the timed region
                qc, kc, vc = q.contiguous(), k.contiguous(), v.contiguous()
                out[name] = lambda fn=fn, qc=qc, kc=kc, vc=vc: fn(qc, kc, vc, cu, longest)
    return out


def _fwd_bwd(fn: Callable[..., torch.Tensor], case: dict) -> Callable[[], None]:
    leaves = [case[x].detach().clone().requires_grad_() for x in "qkv"]
    grad = torch.randn_like(case["q"])

    def step():
        torch.autograd.grad(fn(*leaves), leaves, grad)

    return step


def tolerance(case: dict, truncating: bool) -> float:
    """(2 u + L u_32) max|v| for the case's dtype (module docstring)."""
    v = case["v"]
    u = torch.finfo(v.dtype).eps / 2
    u = 2 * u if truncating and v.dtype == torch.bfloat16 else u
    longest = max(case["lengths"])
    return (2 * u + longest * torch.finfo(torch.float32).eps / 2) * v.float().abs().max().item()


def run(cases: list[dict], timed: bool, cuda: bool) -> list[dict]:
    rows = []
    for case in cases:
        q = case["q"]
        n, heads, head_dim = q.shape
        flops = 4 * sum(n_seg**2 for n_seg in case["lengths"]) * head_dim * heads
        io_bytes = 4 * n * heads * head_dim * q.element_size()
        expected = segment_attention_torch(
            q.float(), case["k"].float(), case["v"].float(), case["segments"], SCALE
        )
        for name, fn in providers(case, cuda).items():
            row = dict(
                case=case["name"], provider=name, direction="fwd", dtype=str(q.dtype).removeprefix("torch.")
            )
            row["ours"] = name in OURS
            try:
                row["max_abs_diff"] = (fn().float() - expected).abs().max().item()
                row["tolerance"] = tolerance(case, truncating=row["ours"] and INTERPRETED)
                row["agrees"] = row["max_abs_diff"] <= row["tolerance"]
                if timed:
                    row["us"] = bench_us(fn)
                    row["GB/s"] = io_bytes / row["us"] / 1e3
                    row["TFLOP/s"] = flops / row["us"] / 1e6
            except Exception as error:  # a baseline failing is reported in its row, not hidden
                row["error"] = f"{type(error).__name__}: {error}"
            rows.append(row)
        if timed:
            seg = case["segments"]
            backward = {
                "ours-triton": lambda q, k, v, seg=seg: window_attention(
                    q, k, v, seg.cu_seqlens, seg.max_len, SCALE
                ),
                "torch": lambda q, k, v, seg=seg: segment_attention_torch(q, k, v, seg, SCALE),
            }
            for name, fn in backward.items():
                us = bench_us(_fwd_bwd(fn, case))
                tflops = 3.5 * flops / us / 1e6  # the backward does 2.5x the forward's matmul flops
                row = dict(case=case["name"], provider=name, direction="fwd+bwd", dtype=row["dtype"], us=us)
                rows.append({**row, "TFLOP/s": tflops})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="correctness only, tiny shapes (default on CPU)")
    parser.add_argument(
        "--out", type=Path, help="JSON path (default benchmarks/results/window_attention-<device>.json)"
    )
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    quick = args.quick or not cuda
    torch.manual_seed(0)
    if quick:
        print("QUICK MODE: correctness only (tiny shapes, Triton interpreter on CPU), no timings")
        device = "cuda" if cuda else "cpu"
        cases = [
            layer_case(252, layer, torch.float32, device, heads=2) for layer in ("window", "full")
        ]  # edge windows
    else:
        cases = [
            layer_case(px, layer, torch.bfloat16, "cuda")
            for px in (448, 896, 1344)
            for layer in ("window", "full")
        ]
    rows = run(cases, timed=not quick, cuda=cuda)
    columns = ["case", "provider", "direction", "dtype", "us", "GB/s", "TFLOP/s", "max_abs_diff", "tolerance"]
    columns += ["agrees", "error"]
    print_table(rows, columns)
    if not quick or args.out:
        mode = "quick" if quick else "timed"
        print("wrote", write_results("window_attention", rows, environment(), mode=mode, path=args.out))
    # the rule holds for every correct provider: any forward row outside it is a finding; an error is
    # one for our rows (a baseline that fails to run is reported in its row)
    forward = [r for r in rows if r["direction"] == "fwd"]
    bad = [r for r in forward if r["ours"] or "error" not in r if not r.get("agrees")]
    if bad:
        raise SystemExit(f"rows outside the agreement rule: {bad}")


if __name__ == "__main__":
    main()
