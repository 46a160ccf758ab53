"""Non-causal attention within the segments of `cu_seqlens` (varlen / block-diagonal), as torch ops:
`torch.ops.qwenvl_min.window_attention` (forward: output and log-sum-exp, differentiable in q, k, v) and
`torch.ops.qwenvl_min.window_attention_backward`. `window_attention` is the public entry point. The
math and the Triton code are in `_window_attention_triton.py`.

torch.compile: both ops are `torch.library.custom_op`s with fake implementations, and the forward has
its backward registered, so dynamo and AOT autograd trace through `window_attention` with no graph
break. Inside a compiled region the caller must pass `validate=False` and `max_seqlen`: checking
cu_seqlens' values (or computing max_seqlen) copies cu_seqlens to the host, a device sync that a
compiled graph cannot contain, so that combination raises instead of breaking the graph.

`max_seqlen` is a SymInt in the op schema and only sizes the grid and tiles at run time (the fake
implementation never reads it), so a compiled vision tower given a new image sees it as a new value of
a dynamic int: dynamo specializes the first value it sees, and on the second distinct value recompiles
once with max_seqlen (and the token count) dynamic; no further recompiles after that. A caller that
wants zero recompiles can mark it dynamic up front (`torch._dynamo.mark_dynamic` on the inputs and
`torch.compile(dynamic=True)`), or pass a bucketed bound (any value >= the longest segment is valid,
e.g. the next power of two): the kernel's tiles are powers of two anyway, the extra programs exit at once.

Eager calls that need no gradient skip the op dispatcher and run the same implementation directly (the
dispatcher costs ~9 us per call on a 2-core CPU host; a 64-token window layer's kernel takes ~10 us).

Shape legend: N packed tokens, H heads, Dh head dim, S segments.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _registry
from ._checks import check_float, check_last_dim_contiguous, check_runnable, check_same_device
from ._launch import is_interpreted

MAX_HEAD_DIM = 256
FWD, BWD_DKDV, BWD_DQ = "attention_fwd", "attention_bwd_dkdv", "attention_bwd_dq"
INTERPRETED = is_interpreted(_registry.variant(FWD).kernel)
OP = "window_attention"


def _check_static(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int | None) -> None:
    """Shapes, dtypes, devices, strides: host-side metadata only (no device sync, fine under compile)."""
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"{OP}: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; expected three (N, H, Dh) "
            "tensors of one shape"
        )
    head_dim = q.shape[-1]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(
            f"{OP}: head_dim {head_dim} is not supported; expected 1 <= head_dim <= {MAX_HEAD_DIM}"
        )
    check_float(OP, q=q, k=k, v=v)
    check_same_device(OP, q=q, k=k, v=v, cu_seqlens=cu_seqlens)
    check_last_dim_contiguous(OP, q=q, k=k, v=v)
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise TypeError(
            f"{OP}: cu_seqlens is {cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)}; expected a 1-Dh "
            "int32 tensor (segments + 1,)"
        )
    # a SymInt under torch.compile (dynamic max_seqlen)
    if max_seqlen is not None and (not isinstance(max_seqlen, (int, torch.SymInt)) or max_seqlen < 0):
        raise ValueError(f"{OP}: max_seqlen {max_seqlen!r}; expected a non-negative int or None")
    check_runnable(OP, q.device, INTERPRETED)


def _check_values(cu_seqlens: Tensor, n_tokens: int, max_seqlen: int | None) -> int:
    """cu_seqlens' values (one device-to-host copy); return max_seqlen (computed when None)."""
    cu = cu_seqlens.to("cpu", torch.int64)
    lengths = cu[1:] - cu[:-1]
    longest = int(lengths.max()) if lengths.numel() else 0
    if int(cu[0]) != 0:
        raise ValueError(f"{OP}: cu_seqlens starts at {int(cu[0])}; expected 0")
    if lengths.numel() and int(lengths.min()) < 0:
        at = int(torch.nonzero(lengths < 0)[0])
        raise ValueError(
            f"{OP}: cu_seqlens decreases at index {at} ({int(cu[at])} -> {int(cu[at + 1])}); expected "
            "non-decreasing values (zero-length segments are fine)"
        )
    if int(cu[-1]) != n_tokens:
        raise ValueError(f"{OP}: cu_seqlens ends at {int(cu[-1])}; expected the token count {n_tokens}")
    if max_seqlen is None:
        return longest
    if max_seqlen < longest:
        raise ValueError(f"{OP}: max_seqlen {max_seqlen} is smaller than the longest segment ({longest})")
    return max_seqlen


def attend_into(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, scale: float,
                out: Tensor, lse: Tensor, variant: str | None = None) -> None:  # fmt: skip
    """Run a registered forward variant (default: the first listed in `_registry.VARIANTS`) on checked
    arguments. Benchmarks and tests use it to reach every variant; everything else goes through
    `window_attention`."""
    _registry.variant(FWD, variant).launch(q, k, v, out, lse, cu_seqlens, max_seqlen, scale).run()


def _new_outputs(q: Tensor) -> tuple[Tensor, Tensor]:
    n_tokens, heads, _ = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    return out, torch.empty((heads, n_tokens), dtype=torch.float32, device=q.device)


def _forward(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, scale: float
) -> tuple[Tensor, Tensor]:
    _check_static(q, k, v, cu_seqlens, max_seqlen)
    out, lse = _new_outputs(q)
    attend_into(q, k, v, cu_seqlens, max_seqlen, scale, out, lse)
    return out, lse


@torch.library.custom_op("qwenvl_min::window_attention", mutates_args=())
def window_attention_op(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, scale: float
) -> tuple[Tensor, Tensor]:
    """(out (N, H, Dh) in q's dtype, lse (H, N) fp32). cu_seqlens is trusted (no value checks here:
    `window_attention` does them when asked) and max_seqlen must bound its longest segment."""
    return _forward(q, k, v, cu_seqlens, max_seqlen, scale)


@window_attention_op.register_fake
def _forward_fake(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, scale: float):
    _check_static(q, k, v, cu_seqlens, max_seqlen)
    return _new_outputs(q)


@torch.library.custom_op("qwenvl_min::window_attention_backward", mutates_args=())
def window_attention_backward(d_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                              cu_seqlens: Tensor, max_seqlen: int,
                              scale: float) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """(dq, dk, dv) from the forward's inputs, output and lse and the output's gradient d_out."""
    _check_static(q, k, v, cu_seqlens, max_seqlen)
    do = d_out.to(q.dtype)
    do = do if do.stride(-1) == 1 else do.contiguous()
    # delta_i = dO_i . O_i = sum_j P_ij dP_ij, (H, N) fp32 like lse
    delta = (do.float() * out.float()).sum(-1).transpose(0, 1).contiguous()
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    shared = (cu_seqlens, max_seqlen, scale)
    _registry.variant(BWD_DKDV).launch(q, k, v, do, lse, delta, dk, dv, *shared).run()
    _registry.variant(BWD_DQ).launch(q, k, v, do, lse, delta, dq, *shared).run()
    return dq, dk, dv


@window_attention_backward.register_fake
def _backward_fake(d_out, q, k, v, out, lse, cu_seqlens, max_seqlen, scale):
    _check_static(q, k, v, cu_seqlens, max_seqlen)
    return tuple(torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))


def _setup(ctx, inputs, output) -> None:
    q, k, v, cu_seqlens, max_seqlen, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.max_seqlen, ctx.scale = max_seqlen, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, d_out: Tensor, _d_lse: Tensor | None):
    # the backward op has no autograd of its own: a double backward raises instead of being wrong
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = torch.ops.qwenvl_min.window_attention_backward(
        d_out, q, k, v, out, lse, cu_seqlens, ctx.max_seqlen, ctx.scale
    )
    return dq, dk, dv, None, None, None


window_attention_op.register_autograd(_backward, setup_context=_setup)


_SYNC_UNDER_COMPILE = (
    f"{OP}: under torch.compile pass validate=False and max_seqlen: checking cu_seqlens' values (or "
    "computing max_seqlen from them) copies cu_seqlens to the host, a device sync a compiled graph cannot "
    "contain"
)


# disabled for dynamo, so the error reaches the caller as it is: with fullgraph=True as the reason of the
# refused call, otherwise raised by this function when the compiled frame runs it (a `raise` traced by
# dynamo would instead resume the frame eagerly, where the check passes and the sync happens)
@torch.compiler.disable(reason=_SYNC_UNDER_COMPILE)
def _refuse_sync_under_compile() -> None:
    raise RuntimeError(_SYNC_UNDER_COMPILE)


def window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens: Tensor,
    max_seqlen: int | None = None,
    scale: float | None = None,
    *,
    return_lse: bool = False,
    validate: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(scale q k^T) v within each segment of `cu_seqlens` (non-causal), as one Triton launch.

    q, k, v: (N, H, Dh), fp16/bf16/fp32, one shape and dtype, any strides with a contiguous last dimension
    (e.g. slices of a fused qkv), Dh <= 256. cu_seqlens: (S + 1,) int32 on q's device, starting at 0,
    non-decreasing (zero-length segments allowed), ending at N. max_seqlen: the longest segment (or any
    larger bound; it only sizes the grid); None computes it. scale defaults to Dh^-0.5.
    Returns the output (N, H, Dh) in q's dtype, and with `return_lse` also the fp32 log-sum-exp (H, N) of
    the scaled scores (not differentiable). Differentiable in q, k, v.

    The checks of cu_seqlens' values (and computing max_seqlen) copy it to the host: one sync per call.
    `validate=False` skips that copy when max_seqlen is given (the caller vouches for cu_seqlens, e.g.
    one built by `qwenvl_min.model.segments.Segments`); shapes, dtypes, devices and strides are always checked.
    Under torch.compile, pass validate=False and max_seqlen (module docstring).
    Torch reference: `qwenvl_min.model.attention.segment_attention_torch`.
    """
    _check_static(q, k, v, cu_seqlens, max_seqlen)
    compiling = torch.compiler.is_compiling()
    if validate or max_seqlen is None:
        if compiling:
            _refuse_sync_under_compile()
        max_seqlen = _check_values(cu_seqlens, q.shape[0], max_seqlen)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if compiling or (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        out, lse = torch.ops.qwenvl_min.window_attention(q, k, v, cu_seqlens, max_seqlen, scale)
    else:  # eager inference: the op's own implementation, without the dispatcher's cost
        out, lse = _forward(q, k, v, cu_seqlens, max_seqlen, scale)
    return (out, lse) if return_lse else out
