"""GPU check, step window attention: our varlen Triton kernel vs torch SDPA over padded windows, torch's
own varlen flash attention, transformers' per-window loop and our torch path; forward and fwd+bwd.

    python benchmarks/gpu_check_attention.py --json PATH [--dry-run]

Qwen2.5-VL vision attention shapes: 16 heads x 80, bf16, windows of 64 tokens at 4k, 8k and 16k tokens,
plus one 1344x1344 image's real layouts (its window layer, with smaller edge windows, and its
full-attention layer, one 9216-token segment). Providers:
  ours-triton         `window_attention(..., validate=False)`, as the vision tower calls it
  torch               our torch path (`segment_attention_torch`: one SDPA call per length group)
  sdpa-padded         dense batched SDPA: windows padded to the longest into (S, L, H, Dh), a key mask
                      when they are ragged; the padding and unpadding are timed too (a model pays them)
  torch-varlen-flash  PyTorch's FlashAttention-2 varlen kernel, found by feature (the API used is in the
                      notes; unavailable with the reason when this torch has neither entry point)
  hf-per-window       transformers' non-flash vision path: split by segment, one SDPA call each
Every forward row is checked against an fp32 computation (`bench_window_attention.tolerance`: the
rule (2 u + L u_32) max|v|); the step fails when one of ours breaks it or raises.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import print_table
from gpu_check_common import make_timer, parse_step_args, skipped_by_dry_run, unavailable, write_step
from torch import Tensor

STEP = "window_attention"
HEADS, HEAD_DIM, WINDOW = 16, 80, 64
UNIFORM_TOKENS = (4096, 8192, 16384)
IMAGE_PX = 1344


def layouts(dry_run: bool) -> list[tuple[str, list[int]]]:
    """(name, segment lengths) of every case."""
    from qwenvl_min.model.geometry import frame_lengths, window_unit_order

    def image(px: int) -> tuple[list[int], list[int]]:
        side = px // 14
        grid = torch.tensor([[1, side, side]])
        return window_unit_order(grid, window_merged=4, merge=2)[1], frame_lengths(grid)

    if dry_run:
        windows, _ = image(168)  # 12 x 12 patches: one full window, two edge windows, a corner
        return [(f"windows {2 * WINDOW} tok", [WINDOW] * 2), (f"window 168px ({sum(windows)} tok)", windows)]
    out = [(f"windows {n} tok", [WINDOW] * (n // WINDOW)) for n in UNIFORM_TOKENS]
    windows, frames = image(IMAGE_PX)
    out.append((f"window {IMAGE_PX}px ({sum(windows)} tok)", windows))
    out.append((f"full {IMAGE_PX}px ({sum(frames)} tok)", frames))
    return out


def case_dtype(dry_run: bool) -> torch.dtype:
    return torch.float32 if dry_run else torch.bfloat16  # the interpreter cannot do bf16 arithmetic


def make_case(name: str, lengths: list[int], dtype: torch.dtype, device: str, heads: int) -> dict:
    from qwenvl_min.model.segments import Segments

    n = sum(lengths)
    qkv = torch.randn(n, 3, heads, HEAD_DIM, device=device, dtype=dtype)  # a fused projection's output
    q, k, v = qkv.unbind(1)
    segments = Segments.from_lengths(lengths, device=device)
    return dict(name=name, q=q, k=k, v=v, lengths=lengths, segments=segments)


def padded_sdpa(lengths: list[int], device: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """Dense batched SDPA over the windows padded to the longest: (N, H, Dh) -> (S, L, H, Dh) -> SDPA ->
    (N, H, Dh). Uniform windows need no mask (a reshape); ragged ones gather and mask padded keys."""
    count, longest = len(lengths), max(lengths)
    if all(n == longest for n in lengths):

        def uniform(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            q, k, v = (x.reshape(count, longest, *x.shape[1:]).transpose(1, 2) for x in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v)  # (S, H, L, Dh)
            return out.transpose(1, 2).reshape(-1, *out.shape[1:2], out.shape[-1])

        return uniform
    starts = torch.tensor([0, *lengths[:-1]], device=device).cumsum(0)
    column = torch.arange(longest, device=device)
    valid = column < torch.tensor(lengths, device=device)[:, None]  # (S, L)
    index = torch.where(valid, starts[:, None] + column, 0)  # padded slots read token 0, masked below
    key_mask = valid[:, None, None, :]  # (S, 1, 1, L): padded keys never attended

    def ragged(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = (x[index].transpose(1, 2) for x in (q, k, v))  # (S, H, L, Dh)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        return out.transpose(1, 2)[valid]  # (S, L, H, Dh) -> (N, H, Dh)

    return ragged


def providers(case: dict, dry_run: bool, varlen: Callable | None) -> dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]]:  # fmt: skip
    """name -> f(q, k, v) for every provider that runs in this mode."""
    import bench_window_attention as bwa

    from qwenvl_min.kernels import window_attention
    from qwenvl_min.model.attention import segment_attention_torch

    seg, scale = case["segments"], HEAD_DIM**-0.5
    out = {
        "ours-triton": lambda q, k, v: window_attention(q, k, v, seg.cu_seqlens, seg.max_len, scale, validate=False),
        "torch": lambda q, k, v: segment_attention_torch(q, k, v, seg, scale),
        "sdpa-padded": padded_sdpa(case["lengths"], case["q"].device.type),
        "hf-per-window": lambda q, k, v: bwa._hf_per_window(q, k, v, case["lengths"]),
    }  # fmt: skip
    if varlen is not None and not dry_run:
        # the flash kernels want contiguous (N, H, Dh) inputs: the copies are made outside the timing
        out["torch-varlen-flash"] = lambda q, k, v: varlen(
            q.contiguous(), k.contiguous(), v.contiguous(), seg.cu_seqlens, seg.max_len
        )
    return out


def _fwd_bwd(fn: Callable[[Tensor, Tensor, Tensor], Tensor], case: dict) -> Callable[[], object]:
    leaves = [case[x].detach().contiguous().requires_grad_() for x in "qkv"]
    grad = torch.randn_like(leaves[0])
    return lambda: torch.autograd.grad(fn(*leaves), leaves, grad)


def run(dry_run: bool) -> tuple[list[dict], list[dict], dict]:
    import bench_window_attention as bwa

    from qwenvl_min.model.attention import segment_attention_torch

    timer = make_timer(dry_run)
    varlen, varlen_api = bwa.torch_varlen()
    missing: list[dict] = []
    if dry_run:
        missing.append(skipped_by_dry_run("torch-varlen-flash", "FlashAttention kernels run on CUDA only"))
    elif varlen is None:
        missing.append(unavailable("torch-varlen-flash", varlen_api))
    device, dtype = ("cpu", case_dtype(True)) if dry_run else ("cuda", case_dtype(False))
    rows = []
    for name, lengths in layouts(dry_run):
        case = make_case(name, lengths, dtype, device, heads=2 if dry_run else HEADS)
        q, k, v = case["q"], case["k"], case["v"]
        n, heads, head_dim = q.shape
        flops = 4 * sum(length**2 for length in lengths) * head_dim * heads
        io_bytes = 4 * n * heads * head_dim * q.element_size()
        expected = segment_attention_torch(q.float(), k.float(), v.float(), case["segments"], HEAD_DIM**-0.5)
        base = dict(case=name, tokens=n, segments=len(lengths), longest=max(lengths), dtype=str(dtype)[6:])
        for provider, fn in providers(case, dry_run, varlen).items():
            ours = provider == "ours-triton"
            row = {**base, "provider": provider, "direction": "fwd", "ours": ours}
            try:
                row["max_abs_diff"] = (fn(q, k, v).float() - expected).abs().max().item()
                row["tolerance"] = bwa.tolerance(
                    case, truncating=False
                )  # compiled bf16 rounds to nearest; dry run: fp32
                row["agrees"] = row["max_abs_diff"] <= row["tolerance"]
                row["us"] = timer(lambda fn=fn, q=q, k=k, v=v: fn(q, k, v))
                row["GB/s"], row["TFLOP/s"] = io_bytes / row["us"] / 1e3, flops / row["us"] / 1e6
            except Exception as error:  # a baseline failing is reported in its row, not hidden
                row["error"] = f"{type(error).__name__}: {error}"
            rows.append(row)
            back = {**base, "provider": provider, "direction": "fwd+bwd", "ours": ours}
            try:
                back["us"] = timer(_fwd_bwd(fn, case))
                back["TFLOP/s"] = 3.5 * flops / back["us"] / 1e6  # backward: 2.5x the forward's matmuls
            except Exception as error:
                back["error"] = f"{type(error).__name__}: {error}"
            rows.append(back)
    return rows, missing, {"torch_varlen_api": varlen_api if not dry_run else None}


def findings(rows: list[dict]) -> list[dict]:
    """Our rows that raised or broke the rule, and any other forward row outside the rule."""
    ours = [r for r in rows if r["ours"] and "error" in r]
    return ours + [r for r in rows if r["direction"] == "fwd" and "error" not in r and not r["agrees"]]


def main() -> None:
    args = parse_step_args(__doc__.splitlines()[0])
    torch.manual_seed(0)
    rows, missing, notes = run(args.dry_run)
    bad = findings(rows)
    write_step(args.json, STEP, args.dry_run, rows, missing, {**notes, "findings": bad})
    columns = ["case", "provider", "direction", "us", "GB/s", "TFLOP/s", "max_abs_diff", "tolerance"]
    print_table(rows, [*columns, "agrees", "error"])
    if bad:
        raise SystemExit(f"rows outside the agreement rule or failing: {bad}")


if __name__ == "__main__":
    main()
