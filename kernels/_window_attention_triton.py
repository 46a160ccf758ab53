"""Triton code of the window (varlen) attention op: kernels, launch builders, ahead-of-time cases.
The op around them (checks, torch.library registration, autograd) is `_window_attention.py`; the
variants the launchers may run are listed in `_registry.py`.

Tokens are packed (N, H, Dh); `cu_seqlens` (S + 1,) int32 cuts them into segments (Qwen2.5-VL's windows,
or per-frame segments) and every token attends to all tokens of its own segment:
    O_i = sum_j P_ij V_j,   P_i = softmax_j(scale * Q_i . K_j)        i, j in the same segment.

Forward (FlashAttention-2): a program owns BLOCK_M query rows of one segment and one head, and streams
the segment's keys in BLOCK_N tiles with an online softmax in base 2 (u = scale * log2(e) * Q K^T):
    m' = max(m, rowmax u);   alpha = 2^(m - m');   P~ = 2^(u - m')
    l' = alpha l + rowsum P~;   acc' = alpha acc + P~ V;   and finally O = acc / l,
so no L x L matrix is stored. The log-sum-exp (natural log, of the scaled scores) is
lse = (m + log2 l) * ln 2; the backward recomputes P = exp(scale Q K^T - lse) from it.

Backward: with dP = dO V^T and delta_i = sum_j P_ij dP_ij = dO_i . O_i (computed once, in torch),
    dV = P^T dO,   dS = P * (dP - delta),   dQ = scale * dS K,   dK = scale * dS^T Q.
One kernel owns a key block and loops over the segment's query blocks (dK, dV); another owns a query
block and loops over key blocks (dQ). No atomics, so results are deterministic.

head_dim is covered by a power-of-two main chunk plus a power-of-two tail (both >= 16 for tl.dot):
80 = 64 + 16 and 96 = 64 + 32 run on exactly Dh columns rather than on next_pow2(Dh) = 128 (62.5% useful).
Every Q K^T is the sum of the chunks' products; every P V, dS K, ... is computed per chunk.

Numerics: softmax statistics and accumulators are fp32. fp16/bf16 tiles go to tl.dot as they are
(fp32 accumulation), with P and dS rounded to the input dtype before their dots, as FlashAttention does;
fp32 inputs use IEEE fp32 dots (never TF32). Under the Triton interpreter bf16 tiles are upcast to fp32
first (the interpreter cannot do bf16 arithmetic), so CPU results are if anything more accurate.

Shape legend: N packed tokens, H heads, Dh head dim, S segments, L a segment's length.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._launch import Launch, is_interpreted

# fma contraction on, stated rather than left to Triton's default (which changes in Triton 3.10): the
# attention's results are checked against tolerances, not bits (tile order already changes the sums)
FMA = {"enable_fp_fusion": True}
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _load_tile(base, rows, row_ok, stride_row, COL0: tl.constexpr, COLS: tl.constexpr,
               HEAD_DIM: tl.constexpr, AS_FP32: tl.constexpr):  # fmt: skip
    """Rows `rows` (masked by row_ok), columns [COL0, COL0 + COLS) of a (tokens, Dh) head slice."""
    cols = COL0 + tl.arange(0, COLS)
    ptrs = base + rows[:, None] * stride_row + cols[None, :]
    if COL0 + COLS <= HEAD_DIM:  # static: only a padded tail chunk needs a column mask
        x = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
    else:
        x = tl.load(ptrs, mask=row_ok[:, None] & (cols[None, :] < HEAD_DIM), other=0.0)
    if AS_FP32:
        x = x.to(tl.float32)
    return x


@triton.jit
def _store_tile(base, rows, row_ok, stride_row, x, COL0: tl.constexpr, COLS: tl.constexpr,
                HEAD_DIM: tl.constexpr):  # fmt: skip
    cols = COL0 + tl.arange(0, COLS)
    ptrs = base + rows[:, None] * stride_row + cols[None, :]
    x = x.to(base.dtype.element_ty)
    if COL0 + COLS <= HEAD_DIM:
        tl.store(ptrs, x, mask=row_ok[:, None])
    else:
        tl.store(ptrs, x, mask=row_ok[:, None] & (cols[None, :] < HEAD_DIM))


@triton.jit
def _segment(CU, pid, blocks_per_segment, BLOCK: tl.constexpr):
    """Segment of this program: (first token, length, first row of this program's block in it)."""
    seg = pid // blocks_per_segment
    start = tl.load(CU + seg)
    length = tl.load(CU + seg + 1) - start
    return start.to(tl.int64), length, (pid % blocks_per_segment) * BLOCK


@triton.jit
def fwd_kernel(
    Q, K, V, O, LSE, CU, sq_t, sq_h, sk_t, sk_h, sv_t, sv_h, so_t, so_h, n_tokens, m_blocks, qk_scale,
    HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, AS_FP32: tl.constexpr,
):  # fmt: skip
    start, seg_len, m0 = _segment(CU, tl.program_id(0), m_blocks, BLOCK_M)
    if m0 >= seg_len:  # the segment is shorter than this block (or empty)
        return
    head = tl.program_id(1).to(tl.int64)
    q_base = Q + start * sq_t + head * sq_h
    k_base = K + start * sk_t + head * sk_h
    v_base = V + start * sv_t + head * sv_h

    offs_m = m0 + tl.arange(0, BLOCK_M)
    m_ok = offs_m < seg_len
    q_a = _load_tile(q_base, offs_m, m_ok, sq_t, 0, D_MAIN, HEAD_DIM, AS_FP32)
    if D_TAIL > 0:
        q_b = _load_tile(q_base, offs_m, m_ok, sq_t, D_MAIN, D_TAIL, HEAD_DIM, AS_FP32)
        acc_b = tl.zeros([BLOCK_M, D_TAIL], dtype=tl.float32)
    acc_a = tl.zeros([BLOCK_M, D_MAIN], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running row max of u
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running row sum of 2^(u - m)

    for n0 in range(0, seg_len, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < seg_len
        k_a = _load_tile(k_base, offs_n, n_ok, sk_t, 0, D_MAIN, HEAD_DIM, AS_FP32)
        u = tl.dot(q_a, tl.trans(k_a), input_precision="ieee")
        if D_TAIL > 0:
            k_b = _load_tile(k_base, offs_n, n_ok, sk_t, D_MAIN, D_TAIL, HEAD_DIM, AS_FP32)
            u += tl.dot(q_b, tl.trans(k_b), input_precision="ieee")
        u = tl.where(n_ok[None, :], u * qk_scale, float("-inf"))
        # every tile holds >= 1 valid key (n0 < seg_len), so m_new is finite and alpha = 2^-inf = 0 at first
        m_new = tl.maximum(m_i, tl.max(u, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(u - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
        v_a = _load_tile(v_base, offs_n, n_ok, sv_t, 0, D_MAIN, HEAD_DIM, AS_FP32)
        acc_a = tl.dot(p.to(v_a.dtype), v_a, acc_a * alpha[:, None], input_precision="ieee")
        if D_TAIL > 0:
            v_b = _load_tile(v_base, offs_n, n_ok, sv_t, D_MAIN, D_TAIL, HEAD_DIM, AS_FP32)
            acc_b = tl.dot(p.to(v_b.dtype), v_b, acc_b * alpha[:, None], input_precision="ieee")

    o_base = O + start * so_t + head * so_h
    inv_l = 1.0 / l_i
    _store_tile(o_base, offs_m, m_ok, so_t, acc_a * inv_l[:, None], 0, D_MAIN, HEAD_DIM)
    if D_TAIL > 0:
        _store_tile(o_base, offs_m, m_ok, so_t, acc_b * inv_l[:, None], D_MAIN, D_TAIL, HEAD_DIM)
    tl.store(LSE + head * n_tokens + start + offs_m, (m_i + tl.log2(l_i)) * LN2, mask=m_ok)


@triton.jit
def bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU, sq_t, sq_h, sk_t, sk_h, sv_t, sv_h, sdo_t, sdo_h,
    sdk_t, sdk_h, sdv_t, sdv_h, n_tokens, n_blocks, qk_scale, scale,
    HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, AS_FP32: tl.constexpr,
):  # fmt: skip
    """dK, dV for BLOCK_N keys; works on transposed tiles (keys x queries) so no P^T is formed."""
    start, seg_len, n0 = _segment(CU, tl.program_id(0), n_blocks, BLOCK_N)
    if n0 >= seg_len:
        return
    head = tl.program_id(1).to(tl.int64)
    q_base = Q + start * sq_t + head * sq_h
    do_base = DO + start * sdo_t + head * sdo_h
    stats = head * n_tokens + start  # LSE / DELTA rows of this segment and head, (H, N) layout

    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_ok = offs_n < seg_len
    k_a = _load_tile(K + start * sk_t + head * sk_h, offs_n, n_ok, sk_t, 0, D_MAIN, HEAD_DIM, AS_FP32)
    v_a = _load_tile(V + start * sv_t + head * sv_h, offs_n, n_ok, sv_t, 0, D_MAIN, HEAD_DIM, AS_FP32)
    dk_a = tl.zeros([BLOCK_N, D_MAIN], dtype=tl.float32)
    dv_a = tl.zeros([BLOCK_N, D_MAIN], dtype=tl.float32)
    if D_TAIL > 0:
        k_b = _load_tile(
            K + start * sk_t + head * sk_h, offs_n, n_ok, sk_t, D_MAIN, D_TAIL, HEAD_DIM, AS_FP32
        )
        v_b = _load_tile(
            V + start * sv_t + head * sv_h, offs_n, n_ok, sv_t, D_MAIN, D_TAIL, HEAD_DIM, AS_FP32
        )
        dk_b = tl.zeros([BLOCK_N, D_TAIL], dtype=tl.float32)
        dv_b = tl.zeros([BLOCK_N, D_TAIL], dtype=tl.float32)

    for m0 in range(0, seg_len, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        m_ok = offs_m < seg_len
        # padded query columns get lse = +inf, hence P^T = 0 there and they contribute nothing
        lse = tl.load(LSE + stats + offs_m, mask=m_ok, other=float("inf")) * LOG2E
        delta = tl.load(DELTA + stats + offs_m, mask=m_ok, other=0.0)
        q_a = _load_tile(q_base, offs_m, m_ok, sq_t, 0, D_MAIN, HEAD_DIM, AS_FP32)
        do_a = _load_tile(do_base, offs_m, m_ok, sdo_t, 0, D_MAIN, HEAD_DIM, AS_FP32)
        u_t = tl.dot(k_a, tl.trans(q_a), input_precision="ieee")  # (keys, queries)
        if D_TAIL > 0:
            q_b = _load_tile(q_base, offs_m, m_ok, sq_t, D_MAIN, D_TAIL, HEAD_DIM, AS_FP32)
            do_b = _load_tile(do_base, offs_m, m_ok, sdo_t, D_MAIN, D_TAIL, HEAD_DIM, AS_FP32)
            u_t += tl.dot(k_b, tl.trans(q_b), input_precision="ieee")
        p_t = tl.exp2(u_t * qk_scale - lse[None, :])  # P^T, exact probabilities
        dp_t = tl.dot(v_a, tl.trans(do_a), input_precision="ieee")  # dP^T = V dO^T
        dv_a = tl.dot(p_t.to(do_a.dtype), do_a, dv_a, input_precision="ieee")  # dV += P^T dO
        if D_TAIL > 0:
            dp_t += tl.dot(v_b, tl.trans(do_b), input_precision="ieee")
            dv_b = tl.dot(p_t.to(do_b.dtype), do_b, dv_b, input_precision="ieee")
        ds_t = p_t * (dp_t - delta[None, :])  # dS^T
        dk_a = tl.dot(ds_t.to(q_a.dtype), q_a, dk_a, input_precision="ieee")  # dK += dS^T Q (scaled below)
        if D_TAIL > 0:
            dk_b = tl.dot(ds_t.to(q_b.dtype), q_b, dk_b, input_precision="ieee")

    dk_base = DK + start * sdk_t + head * sdk_h
    dv_base = DV + start * sdv_t + head * sdv_h
    _store_tile(dk_base, offs_n, n_ok, sdk_t, dk_a * scale, 0, D_MAIN, HEAD_DIM)
    _store_tile(dv_base, offs_n, n_ok, sdv_t, dv_a, 0, D_MAIN, HEAD_DIM)
    if D_TAIL > 0:
        _store_tile(dk_base, offs_n, n_ok, sdk_t, dk_b * scale, D_MAIN, D_TAIL, HEAD_DIM)
        _store_tile(dv_base, offs_n, n_ok, sdv_t, dv_b, D_MAIN, D_TAIL, HEAD_DIM)


@triton.jit
def bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU, sq_t, sq_h, sk_t, sk_h, sv_t, sv_h, sdo_t, sdo_h, sdq_t, sdq_h,
    n_tokens, m_blocks, qk_scale, scale,
    HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, AS_FP32: tl.constexpr,
):  # fmt: skip
    """dQ for BLOCK_M queries, streaming the segment's keys and values."""
    start, seg_len, m0 = _segment(CU, tl.program_id(0), m_blocks, BLOCK_M)
    if m0 >= seg_len:
        return
    head = tl.program_id(1).to(tl.int64)
    q_base = Q + start * sq_t + head * sq_h
    do_base = DO + start * sdo_t + head * sdo_h
    k_base = K + start * sk_t + head * sk_h
    v_base = V + start * sv_t + head * sv_h

    offs_m = m0 + tl.arange(0, BLOCK_M)
    m_ok = offs_m < seg_len
    lse = tl.load(LSE + head * n_tokens + start + offs_m, mask=m_ok, other=0.0) * LOG2E
    delta = tl.load(DELTA + head * n_tokens + start + offs_m, mask=m_ok, other=0.0)
    q_a = _load_tile(q_base, offs_m, m_ok, sq_t, 0, D_MAIN, HEAD_DIM, AS_FP32)
    do_a = _load_tile(do_base, offs_m, m_ok, sdo_t, 0, D_MAIN, HEAD_DIM, AS_FP32)
    dq_a = tl.zeros([BLOCK_M, D_MAIN], dtype=tl.float32)
    if D_TAIL > 0:
        q_b = _load_tile(q_base, offs_m, m_ok, sq_t, D_MAIN, D_TAIL, HEAD_DIM, AS_FP32)
        do_b = _load_tile(do_base, offs_m, m_ok, sdo_t, D_MAIN, D_TAIL, HEAD_DIM, AS_FP32)
        dq_b = tl.zeros([BLOCK_M, D_TAIL], dtype=tl.float32)

    for n0 in range(0, seg_len, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < seg_len
        k_a = _load_tile(k_base, offs_n, n_ok, sk_t, 0, D_MAIN, HEAD_DIM, AS_FP32)
        v_a = _load_tile(v_base, offs_n, n_ok, sv_t, 0, D_MAIN, HEAD_DIM, AS_FP32)
        u = tl.dot(q_a, tl.trans(k_a), input_precision="ieee")
        dp = tl.dot(do_a, tl.trans(v_a), input_precision="ieee")  # dP = dO V^T
        if D_TAIL > 0:
            k_b = _load_tile(k_base, offs_n, n_ok, sk_t, D_MAIN, D_TAIL, HEAD_DIM, AS_FP32)
            v_b = _load_tile(v_base, offs_n, n_ok, sv_t, D_MAIN, D_TAIL, HEAD_DIM, AS_FP32)
            u += tl.dot(q_b, tl.trans(k_b), input_precision="ieee")
            dp += tl.dot(do_b, tl.trans(v_b), input_precision="ieee")
        p = tl.where(n_ok[None, :], tl.exp2(u * qk_scale - lse[:, None]), 0.0)  # padded keys: P = 0
        ds = p * (dp - delta[:, None])
        dq_a = tl.dot(ds.to(k_a.dtype), k_a, dq_a, input_precision="ieee")  # dQ += dS K (scaled below)
        if D_TAIL > 0:
            dq_b = tl.dot(ds.to(k_b.dtype), k_b, dq_b, input_precision="ieee")

    dq_base = DQ + start * sdq_t + head * sdq_h
    _store_tile(dq_base, offs_m, m_ok, sdq_t, dq_a * scale, 0, D_MAIN, HEAD_DIM)
    if D_TAIL > 0:
        _store_tile(dq_base, offs_m, m_ok, sdq_t, dq_b * scale, D_MAIN, D_TAIL, HEAD_DIM)


INTERPRETED = is_interpreted(fwd_kernel)


def split_head_dim(head_dim: int) -> tuple[int, int]:
    """(main, tail) column chunks covering head_dim: main = the largest power of two <= Dh (at least 16),
    tail = the next power of two >= the rest (at least 16; 0 when Dh is a power of two).

    80 -> (64, 16), 96 -> (64, 32), 128 -> (128, 0), 72 -> (64, 16) with 8 masked columns."""
    if head_dim <= 16:
        return 16, 0
    main = 1 << (head_dim.bit_length() - 1)
    rest = head_dim - main
    return main, (0 if rest == 0 else max(16, triton.next_power_of_2(rest)))


def _tile(max_seqlen: int, cap: int) -> int:
    """A power-of-two tile in [16, cap] no longer than needed for the longest segment."""
    return min(cap, max(16, triton.next_power_of_2(max_seqlen)))


def _common_args(head_dim: int, dtype: torch.dtype) -> dict:
    main, tail = split_head_dim(head_dim)
    # fp32 always goes through IEEE fp32 dots; bf16 too under the interpreter, which cannot do bf16 math
    as_fp32 = dtype == torch.float32 or (INTERPRETED and dtype == torch.bfloat16)
    return dict(HEAD_DIM=head_dim, D_MAIN=main, D_TAIL=tail, AS_FP32=as_fp32)


def _strides(**tensors: Tensor) -> dict:
    """Token and head strides, named s<name>_t / s<name>_h as the kernels expect."""
    out = {}
    for name, x in tensors.items():
        out[f"s{name}_t"], out[f"s{name}_h"] = x.stride(0), x.stride(1)
    return out


def fwd_launch(kernel: Any, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, cu_seqlens: Tensor,
               max_seqlen: int, scale: float) -> Launch:  # fmt: skip
    """Launch of `kernel` (fwd_kernel's parameters): out (N, H, Dh) and lse (H, N) fp32 from q, k, v."""
    n_tokens, heads, head_dim = q.shape
    # Windows (<= 64 tokens): one 64-row tile per window, so short windows waste little; long (per-frame)
    # segments: 128-row query tiles amortize each key tile over more queries. Wide heads need smaller
    # tiles to fit shared memory.
    block_m = _tile(max_seqlen, 128 if head_dim <= 128 else 64)
    block_n = _tile(max_seqlen, 64 if head_dim <= 128 and q.dtype != torch.float32 else 32)
    m_blocks = triton.cdiv(max_seqlen, block_m)
    args = dict(
        Q=q, K=k, V=v, O=out, LSE=lse, CU=cu_seqlens, **_strides(q=q, k=k, v=v, o=out), n_tokens=n_tokens,
        m_blocks=m_blocks, qk_scale=scale * math.log2(math.e), **_common_args(head_dim, q.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n,
    )  # fmt: skip
    grid = ((cu_seqlens.numel() - 1) * m_blocks, heads)
    return Launch(kernel, grid, args, num_warps=8 if block_m == 128 else 4, num_stages=2, options=FMA)


def _bwd_tiles(q: Tensor, max_seqlen: int) -> tuple[int, int, int]:
    """(block, blocks per segment, warps) shared by both backward kernels."""
    head_dim = q.shape[-1]
    block = _tile(max_seqlen, 64 if head_dim <= 128 and q.dtype != torch.float32 else 32)
    return block, triton.cdiv(max_seqlen, block), 4 if head_dim <= 64 else 8


def _bwd_args(q: Tensor, k: Tensor, v: Tensor, do: Tensor, lse: Tensor, delta: Tensor, cu_seqlens: Tensor,
              scale: float, block: int) -> dict:  # fmt: skip
    return dict(
        Q=q, K=k, V=v, DO=do, LSE=lse, DELTA=delta, CU=cu_seqlens, n_tokens=q.shape[0],
        qk_scale=scale * math.log2(math.e), scale=scale, **_common_args(q.shape[-1], q.dtype),
        BLOCK_M=block, BLOCK_N=block,
    )  # fmt: skip


def bwd_dkdv_launch(kernel: Any, q: Tensor, k: Tensor, v: Tensor, do: Tensor, lse: Tensor, delta: Tensor,
                    dk: Tensor, dv: Tensor, cu_seqlens: Tensor, max_seqlen: int,
                    scale: float) -> Launch:  # fmt: skip
    """Launch of `kernel` (bwd_dkdv_kernel's parameters): dk, dv from the saved forward and dO."""
    block, blocks, warps = _bwd_tiles(q, max_seqlen)
    args = dict(**_bwd_args(q, k, v, do, lse, delta, cu_seqlens, scale, block), DK=dk, DV=dv,
                n_blocks=blocks, **_strides(q=q, k=k, v=v, do=do, dk=dk, dv=dv))  # fmt: skip
    grid = ((cu_seqlens.numel() - 1) * blocks, q.shape[1])
    return Launch(kernel, grid, args, num_warps=warps, num_stages=2, options=FMA)


def bwd_dq_launch(kernel: Any, q: Tensor, k: Tensor, v: Tensor, do: Tensor, lse: Tensor, delta: Tensor,
                  dq: Tensor, cu_seqlens: Tensor, max_seqlen: int, scale: float) -> Launch:  # fmt: skip
    """Launch of `kernel` (bwd_dq_kernel's parameters): dq from the saved forward and dO."""
    block, blocks, warps = _bwd_tiles(q, max_seqlen)
    args = dict(**_bwd_args(q, k, v, do, lse, delta, cu_seqlens, scale, block), DQ=dq, m_blocks=blocks,
                **_strides(q=q, k=k, v=v, do=do, dq=dq))  # fmt: skip
    grid = ((cu_seqlens.numel() - 1) * blocks, q.shape[1])
    return Launch(kernel, grid, args, num_warps=warps, num_stages=2, options=FMA)


# (dtype, head_dim, max_seqlen): windows and per-frame segments, Dh 80 and the widest Dh, fp32's own tiles;
# bf16 Dh 80 on windows and frames is what the Qwen2.5-VL tower and the GPU check launch, bf16 Dh 72 on
# frames the Qwen3-VL-8B tower's
_AOT_SHAPES = (
    (torch.float16, 80, 64),
    (torch.bfloat16, 80, 64),
    (torch.bfloat16, 80, 5476),
    (torch.bfloat16, 72, 7056),
    (torch.bfloat16, 256, 1024),
    (torch.float32, 64, 64),
)


def _aot_tensors(dtype: torch.dtype, head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """A (tokens, heads, Dh) tensor, an (H, N) fp32 statistics tensor and a cu_seqlens, never filled."""
    return (
        torch.empty(8, 2, head_dim, dtype=dtype),
        torch.empty(2, 8),
        torch.tensor([0, 8], dtype=torch.int32),
    )


def fwd_aot_cases() -> list[tuple[str, tuple]]:
    """Arguments of `fwd_launch` (after the kernel) for every tile configuration family."""
    cases = []
    for dtype, head_dim, max_seqlen in _AOT_SHAPES:
        x, stats, cu = _aot_tensors(dtype, head_dim)
        cases.append(
            (f"{dtype} D={head_dim} max_seqlen={max_seqlen}", (x, x, x, x, stats, cu, max_seqlen, 0.1))
        )
    return cases


def bwd_dkdv_aot_cases() -> list[tuple[str, tuple]]:
    cases = []
    for dtype, head_dim, max_seqlen in _AOT_SHAPES:
        x, stats, cu = _aot_tensors(dtype, head_dim)
        args = (x, x, x, x, stats, stats, x, x, cu, max_seqlen, 0.1)
        cases.append((f"{dtype} D={head_dim} max_seqlen={max_seqlen}", args))
    return cases


def bwd_dq_aot_cases() -> list[tuple[str, tuple]]:
    cases = []
    for dtype, head_dim, max_seqlen in _AOT_SHAPES:
        x, stats, cu = _aot_tensors(dtype, head_dim)
        args = (x, x, x, x, stats, stats, x, cu, max_seqlen, 0.1)
        cases.append((f"{dtype} D={head_dim} max_seqlen={max_seqlen}", args))
    return cases
