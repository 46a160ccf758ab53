"""Triton code of the rotary op: small @triton.jit building blocks, the kernel, its launch builder and
the shapes the ahead-of-time check compiles. The op around it (checks, torch.library registration,
autograd) is `_rotary.py`; the variants the launcher may run are listed in `_registry.py`.

The building blocks keep the three concerns of a rotary kernel apart, so a variant (another mapping of
rows to programs, another table layout) reuses the math instead of copying it:
  _rows         which (b, t, h) rows a program owns
  _load_half / _store_half   one half (R = Dh/2 columns) of a head vector, or of a table row
  _rotate       the rotation and its rounding rule (the numerics contract, see `_rotary.py`)

Shape legend: B batch, T sequence, H heads, Dh head dim, R = Dh/2.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ._launch import Launch


@triton.jit
def _rows(block, n_rows, T, H, BLOCK_ROWS: tl.constexpr):
    """(b, t, h) as int64 offsets and the validity mask of the BLOCK_ROWS rows of `block`, where rows
    enumerate (b, t, h) row-major."""
    rows = block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    h = rows % H
    bt = rows // H
    return (bt // T).to(tl.int64), (bt % T).to(tl.int64), h.to(tl.int64), rows < n_rows


@triton.jit
def _load_half(base, row_offsets, cols, mask):
    """(rows, BLOCK_R) fp32 tile: columns `cols` of the rows starting at base + row_offsets."""
    return tl.load(base + row_offsets[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_half(base, row_offsets, cols, mask, x):
    tl.store(base + row_offsets[:, None] + cols[None, :], x.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _round(x, COMPUTE: tl.constexpr):
    """x (fp32) rounded to COMPUTE and held in fp32 again; a no-op for fp32. Exact emulation of one
    torch op in COMPUTE: fp32 carries 24 significant bits >= 2p + 2 for fp16 (p = 11) and bf16 (p = 8),
    so rounding the fp32 result of a product or sum once more to p bits equals rounding the exact
    result to p bits (double rounding is innocuous at that width)."""
    if COMPUTE != tl.float32:
        x = x.to(COMPUTE).to(tl.float32)
    return x


@triton.jit
def _rotate(x1, x2, c, s, COMPUTE: tl.constexpr, CONJUGATE: tl.constexpr):
    """Rotation of the pairs (x1, x2) by angle a (by -a when CONJUGATE: the backward), rounded as torch
    computes `x * cos + rotate_half(x) * sin` in COMPUTE (every product, then the sum):
        y1 = r(r(x1 cos) - r(x2 sin)),   y2 = r(r(x2 cos) + r(x1 sin)),   r = round to COMPUTE.
    Negating sin is exact, so the conjugate follows the same rule."""
    if CONJUGATE:
        s = -s
    y1 = _round(_round(x1 * c, COMPUTE) - _round(x2 * s, COMPUTE), COMPUTE)
    y2 = _round(_round(x2 * c, COMPUTE) + _round(x1 * s, COMPUTE), COMPUTE)
    return y1, y2


@triton.jit
def _rotary_rows(
    X, OUT, COS, SIN, block, n_rows, T, H,
    sx_b, sx_t, sx_h, so_b, so_t, so_h, sc_b, sc_t, ss_b, ss_t,
    R: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_R: tl.constexpr,
    COMPUTE: tl.constexpr, CONJUGATE: tl.constexpr,
):  # fmt: skip
    """Rotate BLOCK_ROWS rows of one tensor (q or k), gathering each row's token's cos/sin row."""
    b, t, h, row_ok = _rows(block, n_rows, T, H, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_R)
    mask = row_ok[:, None] & (cols[None, :] < R)
    c = _load_half(COS, b * sc_b + t * sc_t, cols, mask)
    s = _load_half(SIN, b * ss_b + t * ss_t, cols, mask)
    x_rows = b * sx_b + t * sx_t + h * sx_h
    y1, y2 = _rotate(_load_half(X, x_rows, cols, mask), _load_half(X + R, x_rows, cols, mask), c, s,
                     COMPUTE, CONJUGATE)  # fmt: skip
    o_rows = b * so_b + t * so_t + h * so_h
    _store_half(OUT, o_rows, cols, mask, y1)
    _store_half(OUT + R, o_rows, cols, mask, y2)


@triton.jit
def rotary_kernel(
    Q, K, QO, KO, COS, SIN, q_blocks, n_tokens, T, HQ, HK,
    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sqo_b, sqo_t, sqo_h, sko_b, sko_t, sko_h, sc_b, sc_t, ss_b, ss_t,
    R: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_R: tl.constexpr,
    COMPUTE: tl.constexpr, CONJUGATE: tl.constexpr,
):  # fmt: skip
    """q and k in one launch: programs [0, q_blocks) take q's rows, the rest k's."""
    pid = tl.program_id(0)
    if pid < q_blocks:
        _rotary_rows(Q, QO, COS, SIN, pid, n_tokens * HQ, T, HQ, sq_b, sq_t, sq_h, sqo_b, sqo_t, sqo_h,
                     sc_b, sc_t, ss_b, ss_t, R, BLOCK_ROWS, BLOCK_R, COMPUTE, CONJUGATE)  # fmt: skip
    else:
        _rotary_rows(K, KO, COS, SIN, pid - q_blocks, n_tokens * HK, T, HK, sk_b, sk_t, sk_h, sko_b,
                     sko_t, sko_h, sc_b, sc_t, ss_b, ss_t, R, BLOCK_ROWS, BLOCK_R, COMPUTE,
                     CONJUGATE)  # fmt: skip


_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def compute_dtype(x_dtype: torch.dtype, table_dtype: torch.dtype) -> torch.dtype:
    """The dtype torch's reference computes in: promote(x, tables) (fp16 with bf16 promotes to fp32)."""
    return torch.promote_types(x_dtype, table_dtype)


def _strides(axes: str, **tensors: torch.Tensor) -> dict[str, int]:
    """Strides named s<tensor>_<axis> as the kernel expects, e.g. sq_b, sq_t, sq_h."""
    return {f"s{name}_{axis}": x.stride(i) for name, x in tensors.items() for i, axis in enumerate(axes)}


def rotary_launch(
    kernel: Any,
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    q_out: torch.Tensor,
    k_out: torch.Tensor,
    conjugate: bool,
) -> Launch:
    """Launch of `kernel` (rotary_kernel's parameters) for q, k, outputs (N, H, Dh) or (B, T, H, Dh) and
    cos/sin (N, R) or (B, T, R), already validated by the op."""
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
        R=head_dim // 2, BLOCK_ROWS=block_rows, BLOCK_R=block_r,
        COMPUTE=_TL_DTYPE[compute_dtype(q.dtype, cos.dtype)], CONJUGATE=conjugate,
    )  # fmt: skip
    # no fma contraction: torch rounds every product before the sum, and so must we (see `_rotate`)
    options = dict(enable_fp_fusion=False)
    return Launch(kernel, (q_blocks + k_blocks,), args, num_warps=4, num_stages=1, options=options)


def aot_cases() -> list[tuple[str, tuple]]:
    """Arguments of `rotary_launch` (after the kernel) covering every compute dtype family and both
    layouts: bf16 and fp32 with fp32 tables (vision; Dh 80 and Qwen3-VL's 72), fp16, bf16 and fp32 with
    same-dtype tables (text M-RoPE). The GPU check launches a subset of these (tests/project/test_gpu_check_aot.py)."""
    cases = []
    for dtype, table_dtype, lead, head_dim, conjugate in (
        (torch.bfloat16, torch.float32, (8,), 80, False),
        (torch.bfloat16, torch.float32, (8,), 72, False),  # the Qwen3-VL-8B tower (1152 / 16 heads)
        (torch.float32, torch.float32, (8,), 80, False),
        (torch.float16, torch.float16, (2, 8), 128, True),
        (torch.bfloat16, torch.bfloat16, (2, 8), 128, False),
        (torch.float32, torch.float32, (2, 8), 128, False),
    ):
        q, k = torch.empty(*lead, 16, head_dim, dtype=dtype), torch.empty(*lead, 2, head_dim, dtype=dtype)
        table = torch.empty(*lead, head_dim // 2, dtype=table_dtype)
        label = f"{dtype} tables {table_dtype} {tuple(q.shape)} conjugate={conjugate}"
        cases.append((label, (q, k, table, table, q, k, conjugate)))
    return cases
