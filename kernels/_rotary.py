"""Rotate-half rotary embedding for q and k in one launch (vision 2D-RoPE and text M-RoPE alike), as
torch ops: `torch.ops.qwenvl_min.rotary` (out of place, differentiable) and `torch.ops.qwenvl_min.rotary_`
(in place). `apply_rotary` is the public entry point. The Triton code is `_rotary_triton.py`.

Every token carries a half-width angle row a (R = Dh/2 values, given as cos a and sin a) and each of its
head vectors x (Dh values) is rotated pairwise (the math of `qwenvl_min.model.rope.apply_rotary`):
    x'[i]     = x[i] cos a[i] - x[i + R] sin a[i]
    x'[i + R] = x[i + R] cos a[i] + x[i] sin a[i]            i < R
The rotation is orthogonal, so the backward pass is the rotation by -a (sin -> -sin) applied to the
incoming gradients; cos/sin are treated as constants (no gradient is returned for them).

Numerics (one rule for the torch reference and the kernel): the math runs in the compute dtype
c = promote(q dtype, table dtype) with torch's per-op rounding,
    x' = round_c(round_c(x cos) -/+ round_c(x_other sin)),   then cast to q's dtype;
so fp32 tables give fp32 math (the vision tower), tables in the activation dtype give activation-dtype
math (the text model; what transformers does). The kernel holds values in fp32 registers and rounds to
c after each product and after the sum, which reproduces torch's fp16/bf16 ops exactly; it is compiled
without fma contraction so the fp32 case rounds each product too. Hence kernel == torch reference bit for
bit. Checked under the Triton interpreter for fp32 and fp16 (q and tables); bf16 is checked on a GPU
(`benchmarks/gpu_check.sh` runs the kernel tests compiled): the interpreter cannot do bf16 arithmetic
and truncates fp32 -> bf16 casts, so on CPU bf16 results may be one bf16 ulp below torch's.

torch.compile: both ops are `torch.library.custom_op`s with fake implementations (and autograd for the
out-of-place one), so dynamo and AOT autograd trace through `apply_rotary` with no graph break. The
kernel stays opaque to inductor (`triton_op`/`wrap_triton` would expose it, but under the interpreter
`wrap_triton` cannot trace the interpreted kernel, and one registration must serve CPU tests and GPUs).
Eager calls that need no gradient skip the op dispatcher and run the same implementation directly
(the dispatcher costs ~9 us per call on a 2-core CPU host, as much as the kernel launch itself).

Shape legend: N packed tokens, B batch, T sequence, Hq/Hk heads, Dh head dim, R = Dh/2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _registry
from ._checks import check_float, check_last_dim_contiguous, check_runnable, check_same_device
from ._launch import is_interpreted

MAX_HEAD_DIM = 1024
STAGE = "rotary"
INTERPRETED = is_interpreted(_registry.variant(STAGE).kernel)


def _check_rotary(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> None:
    """Shapes, dtypes, devices, strides: host-side metadata only (no device sync, fine under compile)."""
    op = "apply_rotary"
    for name, x in (("q", q), ("k", k)):
        if x.dim() not in (3, 4):
            raise ValueError(f"{op}: {name} has shape {tuple(x.shape)}; expected (N, H, Dh) or (B, T, H, Dh)")
    if k.dim() != q.dim() or k.shape[:-2] != q.shape[:-2] or k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"{op}: q {tuple(q.shape)} and k {tuple(k.shape)} must agree in every dimension but heads"
        )
    head_dim = q.shape[-1]
    if head_dim % 2 or not 2 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"{op}: head_dim {head_dim}; expected an even head_dim in [2, {MAX_HEAD_DIM}]")
    table_shape = (*q.shape[:-2], head_dim // 2)
    for name, x in (("cos", cos), ("sin", sin)):
        if tuple(x.shape) != table_shape:
            raise ValueError(
                f"{op}: {name} has shape {tuple(x.shape)}; expected the half-width table {table_shape} "
                f"for q {tuple(q.shape)}"
            )
    check_float(op, q=q, k=k)
    check_float(op, cos=cos, sin=sin)  # one table dtype: it sets the compute dtype with q's
    check_same_device(op, q=q, k=k, cos=cos, sin=sin)
    check_last_dim_contiguous(op, q=q, k=k, cos=cos, sin=sin)
    rows = math.prod(q.shape[:-2]) * max(q.shape[-2], k.shape[-2])  # (Size.numel() would specialize)
    if rows >= 2**31:
        raise ValueError(f"{op}: {rows} (token, head) rows; expected fewer than 2**31")
    check_runnable(op, q.device, INTERPRETED)


def rotate_into(
    q: Tensor,
    k: Tensor,
    cos: Tensor,
    sin: Tensor,
    q_out: Tensor,
    k_out: Tensor,
    conjugate: bool,
    variant: str | None = None,
) -> None:
    """Run a registered rotary variant (default: the first listed in `_registry.VARIANTS`) on checked
    arguments, writing into q_out, k_out (which may be q, k). Benchmarks and tests use it to reach
    every variant; everything else goes through `apply_rotary`."""
    _registry.variant(STAGE, variant).launch(q, k, cos, sin, q_out, k_out, conjugate).run()


def _rotated(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, conjugate: bool) -> tuple[Tensor, Tensor]:
    _check_rotary(q, k, cos, sin)
    q_out, k_out = _new_outputs(q, k)
    rotate_into(q, k, cos, sin, q_out, k_out, conjugate)
    return q_out, k_out


def _rotate_in_place(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, conjugate: bool) -> None:
    _check_rotary(q, k, cos, sin)
    rotate_into(q, k, cos, sin, q, k, conjugate)


def _new_outputs(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    return (
        torch.empty(q.shape, dtype=q.dtype, device=q.device),
        torch.empty(k.shape, dtype=k.dtype, device=k.device),
    )


@torch.library.custom_op("qwenvl_min::rotary", mutates_args=())
def rotary(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, conjugate: bool = False) -> tuple[Tensor, Tensor]:
    """(q_rot, k_rot), new contiguous tensors: the rotation by the angles of cos/sin (by minus them when
    `conjugate`). Arguments as `apply_rotary`'s."""
    return _rotated(q, k, cos, sin, conjugate)


@rotary.register_fake
def _rotary_fake(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, conjugate: bool = False):
    _check_rotary(q, k, cos, sin)
    return _new_outputs(q, k)


def _rotary_setup(ctx, inputs, output) -> None:
    _, _, cos, sin, conjugate = inputs
    ctx.save_for_backward(cos, sin)
    ctx.conjugate = conjugate


def _rotary_backward(ctx, dq: Tensor, dk: Tensor):
    # y = R(a) x with R orthogonal  =>  dx = R(a)^T dy = R(-a) dy: the same op with `conjugate` flipped
    # (itself differentiable, so higher derivatives are exact too). cos/sin get no gradient.
    cos, sin = ctx.saved_tensors
    dq, dk = (g if g.stride(-1) == 1 else g.contiguous() for g in (dq, dk))
    dq, dk = torch.ops.qwenvl_min.rotary(dq, dk, cos, sin, not ctx.conjugate)
    return dq, dk, None, None, None


rotary.register_autograd(_rotary_backward, setup_context=_rotary_setup)


@torch.library.custom_op("qwenvl_min::rotary_", mutates_args=("q", "k"))
def rotary_(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, conjugate: bool = False) -> None:
    """In place: q and k are overwritten with their rotations (no autograd of its own: `apply_rotary`
    wraps it in `_RotaryInplace` when gradients are needed)."""
    _rotate_in_place(q, k, cos, sin, conjugate)


@rotary_.register_fake
def _rotary_inplace_fake(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, conjugate: bool = False) -> None:
    _check_rotary(q, k, cos, sin)


class _RotaryInplace(torch.autograd.Function):
    """Autograd for the in-place op (torch.library does not take autograd formulas for mutating ops)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        torch.ops.qwenvl_min.rotary_(q, k, cos, sin, False)
        ctx.mark_dirty(q, k)
        ctx.save_for_backward(cos, sin)
        return q, k

    @staticmethod
    def backward(ctx, dq: Tensor, dk: Tensor) -> tuple[Tensor | None, ...]:
        cos, sin = ctx.saved_tensors
        dq, dk = (g if g.stride(-1) == 1 else g.contiguous() for g in (dq, dk))
        dq, dk = torch.ops.qwenvl_min.rotary(dq, dk, cos, sin, True)
        return dq, dk, None, None


def apply_rotary(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, *, inplace: bool = False
) -> tuple[Tensor, Tensor]:
    """Rotate-half rotary embedding of q and k with per-token half-width tables, in one Triton launch.

    q: (N, Hq, Dh) or (B, T, Hq, Dh); k: the same with Hk heads; cos/sin: (N, Dh/2) or (B, T, Dh/2), one
    float dtype for both. Any strides with a contiguous last dimension (e.g. q, k sliced out of a fused
    qkv). Math in promote(q dtype, table dtype) with torch's rounding (module docstring); outputs in q's
    dtype. Out of place by default (new contiguous tensors); `inplace=True` writes into q and k and
    returns them. Differentiable in q and k (backward = rotation by -theta); cos/sin receive no gradient.
    Traceable by torch.compile without graph breaks. Torch reference: `qwenvl_min.model.rope.apply_rotary`.
    """
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
    if needs_grad or torch.compiler.is_compiling():  # through the ops: autograd, fake tensors
        if inplace and needs_grad:
            return _RotaryInplace.apply(q, k, cos, sin)
        if inplace:
            torch.ops.qwenvl_min.rotary_(q, k, cos, sin, False)
            return q, k
        return torch.ops.qwenvl_min.rotary(q, k, cos, sin, False)
    # eager inference: the ops' own implementations, without the dispatcher's cost
    if inplace:
        _rotate_in_place(q, k, cos, sin, False)
        return q, k
    return _rotated(q, k, cos, sin, False)
