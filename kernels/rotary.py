"""Rotate-half rotary embedding for q and k in one launch (vision 2D-RoPE and text M-RoPE alike).

Every token carries a half-width angle row a (R = D/2 values, given as cos a and sin a) and each of its
head vectors x (D values) is rotated pairwise (the math of `qwenvl_min.rope.apply_rotary`):
    x'[i]     = x[i] cos a[i] - x[i + R] sin a[i]
    x'[i + R] = x[i + R] cos a[i] + x[i] sin a[i]            i < R
The rotation is orthogonal, so the backward pass is the rotation by -a (sin -> -sin) applied to the
incoming gradients; cos/sin are treated as constants (no gradient is returned for them).

Layout: the kernel sees every input as 4-D (B, T, H, D) through strides (packed (N, H, D) is B = 1) and
flattens (b, t, h) into "rows"; one program rotates BLOCK_ROWS rows of q or of k, gathering the cos/sin
row of each row's token. q and k share one launch: the first programs take q's rows, the rest k's.
All math is fp32 (the vision tower rotates in fp32; bf16 arithmetic is also unavailable in the Triton
interpreter) and results are rounded once to the input dtype.

Shape legend: N packed tokens, B batch, T sequence, Hq/Hk heads, D head_dim, R = D/2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._checks import check_float, check_last_dim_contiguous, check_runnable, check_same_device
from ._launch import Launch, is_interpreted

MAX_HEAD_DIM = 1024


@triton.jit
def _rotate_rows(
    X, OUT, COS, SIN, block, n_rows, T, H,
    sx_b, sx_t, sx_h, so_b, so_t, so_h, sc_b, sc_t, ss_b, ss_t,
    R: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, CONJUGATE: tl.constexpr,
):  # fmt: skip
    rows = block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)  # flattened (b, t, h)
    row_ok = rows < n_rows
    h = rows % H
    bt = rows // H
    t = (bt % T).to(tl.int64)
    b = (bt // T).to(tl.int64)
    h = h.to(tl.int64)
    cols = tl.arange(0, BLOCK_R)
    mask = row_ok[:, None] & (cols[None, :] < R)

    c = tl.load(COS + (b * sc_b + t * sc_t)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.load(SIN + (b * ss_b + t * ss_t)[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if CONJUGATE:  # rotation by -a: the backward pass
        s = -s

    x_ptr = X + (b * sx_b + t * sx_t + h * sx_h)[:, None] + cols[None, :]
    x1 = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + R, mask=mask, other=0.0).to(tl.float32)
    o_ptr = OUT + (b * so_b + t * so_t + h * so_h)[:, None] + cols[None, :]
    tl.store(o_ptr, (x1 * c - x2 * s).to(OUT.dtype.element_ty), mask=mask)
    tl.store(o_ptr + R, (x2 * c + x1 * s).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    Q, K, QO, KO, COS, SIN, q_blocks, n_tokens, T, HQ, HK,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sqo_b, sqo_t, sqo_h, sko_b, sko_t, sko_h, sc_b, sc_t, ss_b, ss_t,
    R: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, CONJUGATE: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    if pid < q_blocks:
        _rotate_rows(Q, QO, COS, SIN, pid, n_tokens * HQ, T, HQ, sq_b, sq_t, sq_h, sqo_b, sqo_t, sqo_h,
                     sc_b, sc_t, ss_b, ss_t, R, BLOCK_ROWS, BLOCK_R, CONJUGATE)  # fmt: skip
    else:
        _rotate_rows(K, KO, COS, SIN, pid - q_blocks, n_tokens * HK, T, HK, sk_b, sk_t, sk_h, sko_b, sko_t,
                     sko_h, sc_b, sc_t, ss_b, ss_t, R, BLOCK_ROWS, BLOCK_R, CONJUGATE)  # fmt: skip


INTERPRETED = is_interpreted(_rotary_kernel)


def _strides(axes: str, **tensors: Tensor) -> dict[str, int]:
    """Strides named s<tensor>_<axis> as the kernel expects, e.g. sq_b, sq_t, sq_h."""
    return {f"s{name}_{axis}": x.stride(i) for name, x in tensors.items() for i, axis in enumerate(axes)}


def _rotary_launch(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, q_out: Tensor, k_out: Tensor, conjugate: bool
) -> Launch:
    """q, k, outputs (N, H, D) or (B, T, H, D); cos/sin (N, R) or (B, T, R) (already validated)."""
    q, k, q_out, k_out = (x if x.dim() == 4 else x.unsqueeze(0) for x in (q, k, q_out, k_out))
    cos, sin = (x if x.dim() == 3 else x.unsqueeze(0) for x in (cos, sin))
    batch, seq, hq, head_dim = q.shape
    hk = k.shape[2]
    block_r = triton.next_power_of_2(head_dim // 2)
    block_rows = max(16, 2048 // block_r)  # ~2k elements per tile: 16 per thread at 4 warps
    q_blocks = triton.cdiv(batch * seq * hq, block_rows)
    k_blocks = triton.cdiv(batch * seq * hk, block_rows)
    args = dict(
        Q=q, K=k, QO=q_out, KO=k_out, COS=cos, SIN=sin, q_blocks=q_blocks, n_tokens=batch * seq, T=seq,
        HQ=hq, HK=hk, **_strides("bth", q=q, k=k, qo=q_out, ko=k_out), **_strides("bt", c=cos, s=sin),
        R=head_dim // 2, BLOCK_ROWS=block_rows, BLOCK_R=block_r, CONJUGATE=conjugate,
    )  # fmt: skip
    return Launch(_rotary_kernel, (q_blocks + k_blocks,), args, num_warps=4, num_stages=1)


def _check_rotary(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> None:
    op = "apply_rotary"
    for name, x in (("q", q), ("k", k)):
        if x.dim() not in (3, 4):
            raise ValueError(f"{op}: {name} has shape {tuple(x.shape)}; expected (N, H, D) or (B, T, H, D)")
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
    check_float(op, cos=cos)
    check_float(op, sin=sin)
    check_same_device(op, q=q, k=k, cos=cos, sin=sin)
    check_last_dim_contiguous(op, q=q, k=k, cos=cos, sin=sin)
    rows = q.shape[:-2].numel() * max(q.shape[-2], k.shape[-2])
    if rows >= 2**31:
        raise ValueError(f"{op}: {rows} (token, head) rows; expected fewer than 2**31")
    check_runnable(op, q.device, INTERPRETED)


def _rotate(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, inplace: bool, conjugate: bool
) -> tuple[Tensor, Tensor]:
    q_out, k_out = (
        (q, k)
        if inplace
        else (
            torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty(k.shape, dtype=k.dtype, device=k.device),
        )
    )
    _rotary_launch(q, k, cos, sin, q_out, k_out, conjugate).run()
    return q_out, k_out


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, inplace: bool) -> tuple[Tensor, Tensor]:
        q_out, k_out = _rotate(q, k, cos, sin, inplace, conjugate=False)
        if inplace:
            ctx.mark_dirty(q, k)
        ctx.save_for_backward(cos, sin)
        ctx.shapes_dtype = q.shape, k.shape, q.dtype
        return q_out, k_out

    @staticmethod
    @once_differentiable  # the kernels record no graph: double backward raises instead of lying
    def backward(ctx, dq: Tensor | None, dk: Tensor | None) -> tuple[Tensor | None, ...]:
        # y = R(a) x with R orthogonal  =>  dx = R(a)^T dy = R(-a) dy.  cos/sin get no gradient.
        cos, sin = ctx.saved_tensors
        q_shape, k_shape, dtype = ctx.shapes_dtype
        grads = []
        for g, shape in ((dq, q_shape), (dk, k_shape)):
            if g is None:  # that output did not reach the loss
                g = torch.zeros(shape, dtype=dtype, device=cos.device)
            grads.append(g.to(dtype) if g.stride(-1) == 1 else g.to(dtype).contiguous())
        dq, dk = _rotate(grads[0], grads[1], cos, sin, inplace=False, conjugate=True)
        return dq, dk, None, None, None


def apply_rotary(
    q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, *, inplace: bool = False
) -> tuple[Tensor, Tensor]:
    """Rotate-half rotary embedding of q and k with per-token half-width tables, in one Triton launch.

    q: (N, Hq, D) or (B, T, Hq, D); k: the same with Hk heads; cos/sin: (N, D/2) or (B, T, D/2), any
    float dtype. Any strides with a contiguous last dimension (e.g. q, k sliced out of a fused qkv).
    Math in fp32, outputs in q's dtype (fp16/bf16/fp32). Out of place by default (new contiguous
    tensors); `inplace=True` writes into q and k and returns them. Differentiable in q and k (backward =
    rotation by -theta); cos/sin receive no gradient. Torch reference: `qwenvl_min.rope.apply_rotary`.
    """
    _check_rotary(q, k, cos, sin)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return _Rotary.apply(q, k, cos, sin, inplace)
    return _rotate(q, k, cos, sin, inplace, conjugate=False)  # inference: no autograd.Function overhead
