"""Every Triton kernel launch the GPU check makes, as `Launch` descriptions built from the steps' own
case definitions (on meta tensors: shapes, strides and dtypes, no data), so a CPU-only test can check
that each one's compiled variant (kernel, constexprs, pointer types, warps, stages, options) is among
the variants `python -m qwenvl_min.kernels._aot --arch 90` compiles (tests/project/test_gpu_check_aot.py).

What the steps launch: rotary (every registered rotary variant on every case of `gpu_check_rotary`),
window attention (the default forward on every layout of `gpu_check_attention`, and both backward
kernels for its fwd+bwd rows), the vision tower (its rotary and the forward on windows and full
frames; compiled, the ops stay opaque and launch the same kernels), decode (the text rotary at prefill
and decode lengths; the text attention is SDPA).
"""

from __future__ import annotations

import dataclasses

import torch

META = "meta"


def _rotary_args(q_shape: tuple, k_heads: int, dtype: torch.dtype, table_dtype: torch.dtype, fused: bool):
    """(q, k, cos, sin, q_out, k_out, conjugate) as the rotary op receives them."""
    *lead, heads, head_dim = q_shape
    if fused:  # q, k sliced out of a fused (N, 3, H, Dh) projection, as the vision attention does
        qkv = torch.empty(*lead, 3, heads, head_dim, dtype=dtype, device=META)
        q, k = qkv[..., 0, :, :], qkv[..., 1, :, :]
    else:
        q = torch.empty(*lead, heads, head_dim, dtype=dtype, device=META)
        k = torch.empty(*lead, k_heads, head_dim, dtype=dtype, device=META)
    table = torch.empty(*lead, head_dim // 2, dtype=table_dtype, device=META)
    return (q, k, table, table, torch.empty_like(q), torch.empty_like(k), False)


def _attention_args(lengths: list[int], heads: int, head_dim: int, dtype: torch.dtype):
    n = sum(lengths)
    qkv = torch.empty(n, 3, heads, head_dim, dtype=dtype, device=META)
    q, k, v = qkv.unbind(1)
    cu = torch.empty(len(lengths) + 1, dtype=torch.int32, device=META)
    out, lse = torch.empty(n, heads, head_dim, dtype=dtype, device=META), torch.empty(heads, n, device=META)
    return q, k, v, out, lse, cu, max(lengths)


def rotary_launches() -> list[tuple[str, object]]:
    import gpu_check_rotary as step

    from qwenvl_min.kernels import _registry

    out = []
    mrope_heads = {"2B": (12, 2), "7B": (28, 4)}
    for spec in step.case_specs(dry_run=False):
        if spec[0] == "vision":
            _, px, dtype, heads = spec
            n = (px // 14) ** 2
            args = _rotary_args((n, heads, 80), heads, dtype, torch.float32, fused=True)
        else:
            _, model, tokens, dtype = spec
            hq, hk = mrope_heads[model]
            args = _rotary_args((1, tokens, hq, 128), hk, dtype, dtype, fused=False)
        for variant in _registry.variants("rotary"):
            out.append((f"rotary step {spec} {variant.name}", variant.launch(*args)))
    return out


def attention_launches() -> list[tuple[str, object]]:
    import gpu_check_attention as step

    from qwenvl_min.kernels import _registry

    out = []
    for name, lengths in step.layouts(dry_run=False):
        q, k, v, o, lse, cu, longest = _attention_args(
            lengths, step.HEADS, step.HEAD_DIM, step.case_dtype(False)
        )
        scale = step.HEAD_DIM**-0.5
        out.append(
            (
                f"attention step {name} fwd",
                _registry.variant("attention_fwd").launch(q, k, v, o, lse, cu, longest, scale),
            )
        )
        grads = [torch.empty_like(q) for _ in range(3)]
        do = torch.empty_like(q)
        dkdv = _registry.variant("attention_bwd_dkdv").launch(
            q, k, v, do, lse, lse, grads[1], grads[2], cu, longest, scale
        )
        dq = _registry.variant("attention_bwd_dq").launch(q, k, v, do, lse, lse, grads[0], cu, longest, scale)
        out += [(f"attention step {name} bwd dkdv", dkdv), (f"attention step {name} bwd dq", dq)]
    return out


def tower_launches() -> list[tuple[str, object]]:
    import gpu_check_tower as step

    from qwenvl_min import Config
    from qwenvl_min.kernels import _registry
    from qwenvl_min.model.geometry import frame_lengths, window_unit_order

    out = []
    for preset, side_px in ((step.PRESET, step.SIDE_PX), (step.QWEN3_PRESET, step.QWEN3_SIDE_PX)):
        vision = Config.preset(preset).vision
        side = side_px // vision.patch_size
        grid = torch.tensor([[1, side, side]])
        rotary = _rotary_args((side * side, vision.num_heads, vision.head_dim), vision.num_heads, torch.bfloat16,
                              torch.float32, fused=True)  # fmt: skip
        out += [
            (f"tower step {preset} rotary {variant.name}", variant.launch(*rotary))
            for variant in _registry.variants("rotary")
        ]
        layouts = [("frames", frame_lengths(grid))]
        if vision.family == "qwen2_5_vl":
            layouts.insert(
                0, ("windows", window_unit_order(grid, vision.window_merged, vision.merge_size)[1])
            )
        for name, lengths in layouts:
            q, k, v, o, lse, cu, longest = _attention_args(
                lengths, vision.num_heads, vision.head_dim, torch.bfloat16
            )
            launch = _registry.variant("attention_fwd").launch(
                q, k, v, o, lse, cu, longest, vision.head_dim**-0.5
            )
            out.append((f"tower step {preset} attention {name}", launch))
    return out


def decode_launches() -> list[tuple[str, object]]:
    import gpu_check_decode as step

    from qwenvl_min import Config
    from qwenvl_min.kernels import _registry

    text = dataclasses.replace(Config.preset("qwen2-vl-2b").text, num_layers=4)
    head_dim = text.hidden_size // text.num_heads
    out = []
    for tokens in (step.PROMPT_TOKENS, 1):  # prefill, then one token per step
        args = _rotary_args((1, tokens, text.num_heads, head_dim), text.num_kv_heads, torch.bfloat16,
                            torch.bfloat16, fused=False)  # fmt: skip
        out.append((f"decode step rotary T={tokens}", _registry.variant("rotary").launch(*args)))
    return out


def planned_launches() -> list[tuple[str, object]]:
    """(label, Launch) for every kernel launch of the GPU check's steps."""
    return rotary_launches() + attention_launches() + tower_launches() + decode_launches()
