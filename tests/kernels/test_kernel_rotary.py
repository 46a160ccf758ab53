"""`qwenvl_min.kernels.apply_rotary` (Triton; interpreted on CPU) against our torch reference and
against transformers' own rotary functions (vision 2D-RoPE and text M-RoPE).

The rule (kernels/_rotary.py): both compute in promote(q dtype, table dtype) with torch's per-op
rounding, and the kernel is compiled without fma contraction, so kernel == torch reference bit for bit
(rtol = atol = 0) in every dtype on a GPU. Under the Triton interpreter fp32 and fp16 are exact too; bf16
is not: the interpreter truncates fp32 -> bf16 casts where torch rounds to nearest, so there a bf16
result may sit one bf16 ulp (2^-7 relative) from torch's. The bf16 bit-equality is checked when these
tests run compiled on a GPU (`benchmarks/gpu_check.sh`).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hf_models import rope_config
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.qwen2_vl import modeling_qwen2_vl as hf

from qwenvl_min.kernels import _registry, apply_rotary
from qwenvl_min.kernels._rotary import INTERPRETED, STAGE, rotate_into
from qwenvl_min.model import rope

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter (tests/conftest.py)

EXACT = dict(rtol=0, atol=0)
BF16_ULP = 2**-7  # bf16 keeps 8 significant bits: ulp(x) <= 2^-7 |x|


def _tables(shape: tuple[int, ...], scale: float = 50.0) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.rand(shape, device=DEVICE) * scale  # large angles, as for late positions
    return angles.cos(), angles.sin()


def _magnitude(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """|x_i cos_i| + |x_other sin_i| per element (fp32), the scale of the rotation's intermediates."""
    half = x.shape[-1] // 2
    x = x.float().abs()
    c, s = (torch.cat((t, t), -1).float().abs().unsqueeze(-2) for t in (cos, sin))
    return x * c + torch.cat((x[..., half:], x[..., :half]), -1) * s


def _assert_close(
    actual: torch.Tensor, expected: torch.Tensor, magnitude: torch.Tensor | None = None
) -> None:
    """Bit equality, except bf16 under the interpreter (module docstring). There a rounding may truncate
    where torch rounds to nearest. With fp32 math only the result is rounded, and the two candidates
    are the same or adjacent: one ulp, <= 2^-7 |expected|. With bf16 math (`magnitude` given) the two
    products and the sum are rounded, each up to 1/2 ulp (torch) + 1 ulp (truncation) away:
    1.5 * 2^-7 * (|p1| + |p2| + |sum|) <= 3 * 2^-7 * magnitude."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if not (INTERPRETED and expected.dtype == torch.bfloat16):
        torch.testing.assert_close(actual.float(), expected.float(), **EXACT)
        return
    if magnitude is None:
        torch.testing.assert_close(actual.float(), expected.float(), rtol=BF16_ULP, atol=1e-6)
        return
    err = (actual.float() - expected.float()).abs()
    bound = 3 * BF16_ULP * magnitude
    assert bool((err <= bound).all()), (err - bound).max().item()


@settings(max_examples=10, deadline=None)
@given(
    batched=st.booleans(),
    tokens=st.sampled_from([0, 1, 5, 33]),
    hq=st.integers(1, 16),
    hk=st.integers(1, 16),
    head_dim=st.sampled_from([64, 80, 128]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    table_dtype=st.sampled_from([torch.float32, torch.float16]),
)
def test_matches_torch_reference(batched, tokens, hq, hk, head_dim, dtype, table_dtype):
    """Bit equality in every (q, table) dtype pair the interpreter computes exactly: fp32 tables (fp32
    math) and fp16 tables (fp16 math for fp16 q, fp32 math for fp32 q)."""
    lead = (2, tokens) if batched else (tokens,)
    q = torch.randn(*lead, hq, head_dim, device=DEVICE).to(dtype)
    k = torch.randn(*lead, hk, head_dim, device=DEVICE).to(dtype)
    cos, sin = (t.to(table_dtype) for t in _tables((*lead, head_dim // 2)))
    q_rot, k_rot = apply_rotary(q, k, cos, sin)
    q_ref, k_ref = rope.apply_rotary(q, k, cos, sin)
    _assert_close(q_rot, q_ref)
    _assert_close(k_rot, k_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_vision_rotary_matches_hf(dtype):
    """Vision 2D-RoPE on q, k sliced out of a fused qkv (strided), as the vision attention does."""
    grid_thw = torch.tensor([[1, 8, 12], [2, 4, 4]])
    tables = rope.vision_rotary_table(grid_thw, head_dim=80, theta=10000.0, merge_size=2)  # (N, 40) fp32
    cos, sin = (t.to(DEVICE) for t in tables)
    qkv = torch.randn(cos.shape[0], 3, 16, 80, device=DEVICE).to(dtype)
    q, k = qkv[:, 0], qkv[:, 1]  # (N, 16, 80), token stride 3 * 16 * 80
    q_rot, k_rot = apply_rotary(q, k, cos, sin)
    q_hf, k_hf = hf.apply_rotary_pos_emb_vision(q, k, torch.cat((cos, cos), -1), torch.cat((sin, sin), -1))
    _assert_close(q_rot, q_hf)
    _assert_close(k_rot, k_hf)


def _mrope_case(dtype: torch.dtype):
    """2B-like text shapes: 12 q heads, 2 kv heads, Dh 128, M-RoPE sections [16, 24, 24]."""
    batch, seq = 2, 24
    positions = torch.randint(0, 30000, (3, batch, seq), device=DEVICE)
    cos, sin = rope.mrope_table(positions, rope_config(), dtype)  # (B, T, 64)
    q_hf = torch.randn(batch, 12, seq, 128, device=DEVICE).to(dtype)  # transformers' (B, H, T, Dh) layout
    k_hf = torch.randn(batch, 2, seq, 128, device=DEVICE).to(dtype)
    return q_hf, k_hf, cos, sin


def test_mrope_matches_hf_fp32():
    q_hf, k_hf, cos, sin = _mrope_case(torch.float32)
    # our (B, T, H, Dh) views of transformers' (B, H, T, Dh) tensors: heads are not the inner stride
    q_rot, k_rot = apply_rotary(q_hf.transpose(1, 2), k_hf.transpose(1, 2), cos, sin)
    q_ref, k_ref = hf.apply_rotary_pos_emb(q_hf, k_hf, torch.cat((cos, cos), -1), torch.cat((sin, sin), -1))
    _assert_close(q_rot, q_ref.transpose(1, 2))
    _assert_close(k_rot, k_ref.transpose(1, 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mrope_in_activation_dtype_equals_hf(dtype):
    """Tables cast to the activation dtype (as the text model passes them): transformers rotates in that
    dtype, rounding every product and the sum, and so does the kernel: bit equality (bf16: module
    docstring)."""
    q_hf, k_hf, cos, sin = _mrope_case(dtype)
    q, k = q_hf.transpose(1, 2), k_hf.transpose(1, 2)
    q_rot, k_rot = apply_rotary(q, k, cos, sin)
    q_ref, k_ref = hf.apply_rotary_pos_emb(q_hf, k_hf, torch.cat((cos, cos), -1), torch.cat((sin, sin), -1))
    _assert_close(q_rot, q_ref.transpose(1, 2), _magnitude(q, cos, sin))
    _assert_close(k_rot, k_ref.transpose(1, 2), _magnitude(k, cos, sin))


def test_mrope_fp16_with_fp32_tables_rounds_once():
    """The same fp16 inputs and table values, given as fp32 tables: fp32 math and a single rounding, so
    the kernel's error against an fp64 rotation is at most transformers' fp16 error and within half an
    ulp of the largest value."""
    q_hf, k_hf, cos, sin = _mrope_case(torch.float16)
    q_rot, k_rot = apply_rotary(q_hf.transpose(1, 2), k_hf.transpose(1, 2), cos.float(), sin.float())
    full = (torch.cat((cos, cos), -1), torch.cat((sin, sin), -1))
    q_hf16, k_hf16 = hf.apply_rotary_pos_emb(q_hf, k_hf, *full)
    q_64, k_64 = hf.apply_rotary_pos_emb(q_hf.double(), k_hf.double(), *(t.double() for t in full))
    for ours, theirs, exact in ((q_rot, q_hf16, q_64), (k_rot, k_hf16, k_64)):
        err_ours = (ours.transpose(1, 2).double() - exact).abs().max()
        err_hf = (theirs.double() - exact).abs().max()
        assert err_ours <= err_hf, (err_ours, err_hf)
        assert err_ours <= 2**-11 * exact.abs().max()  # half an ulp of the largest value


@pytest.mark.parametrize("table_dtype", [torch.float32, torch.bfloat16])
def test_bf16_follows_the_rule(table_dtype):
    """bf16 q with fp32 tables (fp32 math) and with bf16 tables (bf16 math, each op rounded): bit equal
    to the torch reference when compiled (GPU); within one bf16 ulp under the interpreter."""
    q = torch.randn(40, 4, 64, device=DEVICE).to(torch.bfloat16)
    k = torch.randn(40, 2, 64, device=DEVICE).to(torch.bfloat16)
    cos, sin = (t.to(table_dtype) for t in _tables((40, 32)))
    q_rot, k_rot = apply_rotary(q, k, cos, sin)
    q_ref, k_ref = rope.apply_rotary(q, k, cos, sin)
    bf16_math = table_dtype == torch.bfloat16
    _assert_close(q_rot, q_ref, _magnitude(q, cos, sin) if bf16_math else None)
    _assert_close(k_rot, k_ref, _magnitude(k, cos, sin) if bf16_math else None)
    if table_dtype == torch.bfloat16:  # bf16 math really differs from fp32 math: the rule is not vacuous
        q32, _ = rope.apply_rotary(q, k, cos.float(), sin.float())
        assert not torch.equal(q_ref, q32)


@pytest.mark.parametrize("name", [v.name for v in _registry.variants(STAGE)])
def test_every_registered_variant_matches_torch_reference(name):
    """Every variant in the registry, forward and conjugate (backward), fp16 with fp16 and fp32 tables."""
    q = torch.randn(2, 9, 3, 80, device=DEVICE).half()
    k = torch.randn(2, 9, 1, 80, device=DEVICE).half()
    for table_dtype in (torch.float16, torch.float32):
        cos, sin = (t.to(table_dtype) for t in _tables((2, 9, 40)))
        for conjugate in (False, True):
            q_out, k_out = torch.empty_like(q), torch.empty_like(k)
            rotate_into(q, k, cos, sin, q_out, k_out, conjugate, variant=name)
            q_ref, k_ref = rope.apply_rotary(q, k, cos, -sin if conjugate else sin)
            _assert_close(q_out, q_ref)
            _assert_close(k_out, k_ref)


def test_inplace_writes_into_the_inputs():
    qkv = torch.randn(20, 3, 4, 64, device=DEVICE)
    before = qkv.clone()
    cos, sin = _tables((20, 32))
    q_ref, k_ref = apply_rotary(qkv[:, 0], qkv[:, 1], cos, sin)
    q_rot, k_rot = apply_rotary(qkv[:, 0], qkv[:, 1], cos, sin, inplace=True)
    assert q_rot.data_ptr() == qkv[:, 0].data_ptr() and k_rot.data_ptr() == qkv[:, 1].data_ptr()
    torch.testing.assert_close(qkv[:, 0], q_ref, rtol=0, atol=0)
    torch.testing.assert_close(qkv[:, 1], k_ref, rtol=0, atol=0)
    torch.testing.assert_close(qkv[:, 2], before[:, 2], rtol=0, atol=0)  # v untouched


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("lead", [(17,), (2, 9)])
def test_gradients_match_autograd(lead, inplace):
    """Backward = rotation by -theta, compared with autograd through the torch reference: autograd
    rounds g cos and g sin and then their sum, the same ops as the conjugate rotation: bit equality."""
    q0, k0 = torch.randn(*lead, 3, 80, device=DEVICE), torch.randn(*lead, 2, 80, device=DEVICE)
    cos, sin = _tables((*lead, 40))
    gq, gk = torch.randn_like(q0), torch.randn_like(k0)

    q, k = q0.clone().requires_grad_(), k0.clone().requires_grad_()
    # in place needs non-leaf inputs (autograd forbids rotating a leaf that requires grad in place)
    q_rot, k_rot = apply_rotary(q * 1, k * 1, cos, sin, inplace=inplace)
    dq, dk = torch.autograd.grad((q_rot * gq).sum() + (k_rot * gk).sum(), (q, k))

    q_r, k_r = q0.clone().requires_grad_(), k0.clone().requires_grad_()
    q_ref, k_ref = rope.apply_rotary(q_r, k_r, cos, sin)
    dq_ref, dk_ref = torch.autograd.grad((q_ref * gq).sum() + (k_ref * gk).sum(), (q_r, k_r))
    _assert_close(dq, dq_ref)
    _assert_close(dk, dk_ref)


def test_gradient_of_q_only():
    """Only q reaches the loss: k's incoming gradient is None and must be treated as zero."""
    q = torch.randn(6, 2, 64, device=DEVICE, requires_grad=True)
    k = torch.randn(6, 2, 64, device=DEVICE, requires_grad=True)
    cos, sin = _tables((6, 32))
    q_rot, _ = apply_rotary(q, k, cos, sin)
    dq, dk = torch.autograd.grad(q_rot.sum(), (q, k))
    assert torch.count_nonzero(dk) == 0
    _assert_close(dq, rope.apply_rotary(torch.ones_like(q), k, cos, -sin)[0])


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, device=DEVICE)


def _args(**over):
    args = dict(q=_randn(5, 2, 8), k=_randn(5, 1, 8), cos=_randn(5, 4), sin=_randn(5, 4))
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over, error, match",
    [  # the bad arguments are built inside the test, on the test device
        (lambda: dict(q=_randn(5, 8)), ValueError, r"expected \(N, H, Dh\) or \(B, T, H, Dh\)"),
        (lambda: dict(k=_randn(6, 1, 8)), ValueError, "must agree in every dimension but heads"),
        (lambda: dict(q=_randn(5, 2, 7), k=_randn(5, 1, 7)), ValueError, "expected an even head_dim"),
        (lambda: dict(cos=_randn(5, 8)), ValueError, "expected the half-width table"),
        (lambda: dict(sin=_randn(4, 4)), ValueError, "expected the half-width table"),
        (lambda: dict(q=_randn(5, 2, 16)[..., ::2]), ValueError, "contiguous last dimension"),
        (lambda: dict(cos=_randn(5, 8)[:, ::2]), ValueError, "contiguous last dimension"),
        (lambda: dict(k=_randn(5, 1, 8).half()), TypeError, "expected one dtype"),
        (
            lambda: dict(sin=_randn(5, 4).half()),
            TypeError,
            r"dtypes differ \(cos=torch.float32, sin=torch.float16\)",
        ),
        (lambda: dict(q=_randn(5, 2, 8).int()), TypeError, "expected one of float16"),
        (lambda: dict(cos=torch.randn(5, 4, device="meta")), ValueError, "different devices"),
    ],
)
def test_errors(over, error, match):
    with pytest.raises(error, match=match):
        apply_rotary(**_args(**over()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the compiled kernels run for real on this machine")
def test_compiles_for_sm90():
    """The interpreter never sees compile-time errors (non-constexpr globals, unsupported ops, shared
    memory); compile the launches ahead of time for an H100 target, in a process without the interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "qwenvl_min.kernels._aot", "rotary", "--arch", "90"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok sm_90") == len(_registry.aot_launches("rotary"))
