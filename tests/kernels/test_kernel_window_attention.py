"""`qwenvl_min.kernels.window_attention` (Triton; interpreted on CPU) against our torch path
(`segment_attention_torch`), transformers' per-window attention loop, and fp64 references.

Tolerances:
- fp32 vs fp32 torch: same math, different summation order (tiles of 16-128 keys, online rescaling);
  the rounding error grows like L * eps * |v| ~ 300 * 6e-8 ~ 2e-5 at the longest segment: atol 2e-5,
  rtol 1e-4 for outputs; gradients sum over a segment twice more (dS then dQ/dK): atol/rtol 1e-4.
- fp16: the flash-attention rule. Against an fp64 reference on the same fp16 inputs the kernel's max
  error must be at most 2x the error of torch's own fp16 path, plus 1e-5 (for the case where torch is
  exact); outputs and gradients.
- bf16 compiled on a GPU: the flash-attention rule. Under the interpreter the kernel does fp32 math but
  casts fp32 -> bf16 by truncation (torch rounds to nearest), which alone can double torch's error; so
  there the rule gets a one-ulp allowance (2^-7 max|x|), and the output, which has no rounded
  intermediate, is also checked elementwise: within one bf16 ulp of the fp64 reference (+1e-5).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from qwenvl_min.kernels import _registry, window_attention
from qwenvl_min.kernels import _window_attention_triton as wa
from qwenvl_min.kernels._window_attention import FWD, attend_into
from qwenvl_min.model.attention import segment_attention_torch
from qwenvl_min.model.segments import Segments

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter (tests/conftest.py)
# empty, single token, smallest edge window, window +- 1, a frame
SEGMENT_LENGTHS = [0, 1, 4, 63, 64, 65, 300]


def _cu(lengths: list[int]) -> torch.Tensor:
    cu = [0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()]
    return torch.tensor(cu, dtype=torch.int32, device=DEVICE)


def _qkv(n: int, heads: int, head_dim: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    torch.manual_seed(n * 1000 + heads * 10 + head_dim)  # deterministic per shape
    return [torch.randn(n, heads, head_dim, device=DEVICE).to(dtype) for _ in range(3)]


def _torch_attention(q, k, v, lengths, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return segment_attention_torch(q, k, v, Segments.from_lengths(lengths), scale)


def _hf_per_window(q, k, v, lengths, scale):
    """transformers' vision attention without flash-attn: split by segment, one SDPA call each."""
    module = torch.nn.Module()
    module.is_causal = False
    lengths = [n for n in lengths if n > 0]  # transformers drops empty windows before this loop
    splits = [torch.split(x.transpose(0, 1).unsqueeze(0), lengths, dim=2) for x in (q, k, v)]
    outs = [
        sdpa_attention_forward(module, qs, ks, vs, None, scaling=scale, is_causal=False)[0]
        for qs, ks, vs in zip(*splits)
    ]
    return torch.cat(outs, dim=1)[0]  # (1, N, H, Dh) -> (N, H, Dh)


def _grads(fn, inputs, grad_out):
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*inputs)
    return out.detach(), torch.autograd.grad(out, inputs, grad_out)


@settings(max_examples=8, deadline=None)
@given(
    lengths=st.lists(st.sampled_from(SEGMENT_LENGTHS), min_size=1, max_size=4),
    heads=st.integers(1, 16),
    head_dim=st.sampled_from([64, 80, 128]),
)
def test_matches_torch_and_hf_fp32(lengths, heads, head_dim):
    n = sum(lengths)
    q, k, v = _qkv(n, heads, head_dim)
    out = window_attention(q, k, v, _cu(lengths))
    if n == 0:
        assert out.shape == (0, heads, head_dim)
        return
    scale = head_dim**-0.5
    torch.testing.assert_close(out, _torch_attention(q, k, v, lengths), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out, _hf_per_window(q, k, v, lengths, scale), atol=2e-5, rtol=1e-4)


@settings(max_examples=5, deadline=None)
@given(
    lengths=st.lists(st.sampled_from(SEGMENT_LENGTHS[:-1]), min_size=1, max_size=4).filter(
        lambda x: sum(x) > 0
    ),
    heads=st.integers(1, 4),
    head_dim=st.sampled_from([64, 80, 128]),
)
def test_gradients_match_autograd_fp32(lengths, heads, head_dim):
    q, k, v = _qkv(sum(lengths), heads, head_dim)
    grad_out = torch.randn_like(q)
    cu = _cu(lengths)
    out, grads = _grads(lambda q, k, v: window_attention(q, k, v, cu), (q, k, v), grad_out)
    out_ref, grads_ref = _grads(lambda q, k, v: _torch_attention(q, k, v, lengths), (q, k, v), grad_out)
    torch.testing.assert_close(out, out_ref, atol=2e-5, rtol=1e-4)
    for name, g, g_ref in zip("qkv", grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"d{name}: {m}")


# one of each: single token, smallest edge window, window -1 / exact / +1, multi-tile segment; 2 heads, Dh 80
MIXED = [1, 4, 63, 64, 65, 130]


def _errors_vs_fp64(dtype: torch.dtype, head_dim: int = 80):
    """Max errors of the kernel and of torch's same-dtype path against an fp64 reference, for the
    output and for dq, dk, dv."""
    q, k, v = _qkv(sum(MIXED), 2, head_dim, dtype)
    grad_out = torch.randn_like(q)
    cu = _cu(MIXED)
    exact = _grads(
        lambda q, k, v: _torch_attention(q, k, v, MIXED),
        (q.double(), k.double(), v.double()),
        grad_out.double(),
    )
    kernel = _grads(lambda q, k, v: window_attention(q, k, v, cu), (q, k, v), grad_out)
    same_dtype_torch = _grads(lambda q, k, v: _torch_attention(q, k, v, MIXED), (q, k, v), grad_out)

    def flat(result):
        out, grads = result
        return [out, *grads]

    return flat(kernel), flat(same_dtype_torch), flat(exact)


def test_flash_error_rule_fp16():
    for name, ours, theirs, exact in zip(("out", "dq", "dk", "dv"), *_errors_vs_fp64(torch.float16)):
        err_ours = (ours.double() - exact).abs().max().item()
        err_torch = (theirs.double() - exact).abs().max().item()
        assert err_ours <= 2 * err_torch + 1e-5, (name, err_ours, err_torch)


def test_bf16_flash_rule_with_one_ulp_allowance():
    for name, ours, theirs, exact in zip(("out", "dq", "dk", "dv"), *_errors_vs_fp64(torch.bfloat16)):
        err = (ours.double() - exact).abs()
        err_torch = (theirs.double() - exact).abs().max().item()
        if not wa.INTERPRETED:
            assert err.max().item() <= 2 * err_torch + 1e-5, (name, err.max().item(), err_torch)
            continue
        # interpreter: a truncating cast can add one ulp (<= 2^-7 |x|) to the round-to-nearest error
        ulp = 2**-7 * exact.abs()
        assert err.max().item() <= 2 * err_torch + ulp.max().item(), (name, err.max().item(), err_torch)
        if name == "out":  # the output has no rounded intermediate: within one ulp elementwise
            assert bool((err <= ulp + 1e-5).all()), (name, (err - ulp).max().item())


@pytest.mark.parametrize("name", [v.name for v in _registry.variants(FWD)])
def test_every_registered_forward_variant_matches_torch(name):
    """Every forward variant in the registry, on MIXED segments (fp32 tolerances as above)."""
    q, k, v = _qkv(sum(MIXED), 2, 80)
    out = torch.empty_like(q)
    lse = torch.empty(2, sum(MIXED))
    attend_into(q, k, v, _cu(MIXED), max(MIXED), 80**-0.5, out, lse, variant=name)
    torch.testing.assert_close(out, _torch_attention(q, k, v, MIXED), atol=2e-5, rtol=1e-4)


def test_lse_is_the_log_sum_exp_of_scaled_scores():
    lengths = [3, 0, 70, 1]
    q, k, v = _qkv(sum(lengths), 2, 64)
    scale = 0.3
    out, lse = window_attention(q, k, v, _cu(lengths), scale=scale, return_lse=True)
    assert lse.shape == (2, sum(lengths)) and lse.dtype == torch.float32
    start = 0
    for n in lengths:
        if n:
            scores = torch.einsum("qhd,khd->hqk", q[start : start + n], k[start : start + n]) * scale
            torch.testing.assert_close(lse[:, start : start + n], scores.logsumexp(-1), atol=1e-5, rtol=1e-5)
        start += n


def test_single_token_and_empty_segments():
    """A lone token attends only to itself: its output is exactly its v, its lse exactly its score."""
    lengths = [0, 1, 1, 0, 0, 1, 0]
    q, k, v = _qkv(3, 4, 80)
    out, lse = window_attention(q, k, v, _cu(lengths), return_lse=True)
    torch.testing.assert_close(out, v, rtol=0, atol=0)
    torch.testing.assert_close(lse, ((q * k).sum(-1) * 80**-0.5).T, atol=1e-6, rtol=1e-6)
    empty = window_attention(*_qkv(0, 2, 64), torch.zeros(3, dtype=torch.int32, device=DEVICE))
    assert empty.shape == (0, 2, 64)


def test_strided_views_of_fused_qkv_and_max_seqlen_bound():
    """q, k, v as views of one (N, 3, H, Dh) buffer (the vision tower's fused projection), gradients
    flowing back into the buffer; a max_seqlen above the longest segment changes nothing."""
    lengths = [64, 20, 64]
    qkv = torch.randn(sum(lengths), 3, 4, 80, device=DEVICE, requires_grad=True)
    cu = _cu(lengths)
    out = window_attention(*qkv.unbind(1), cu)
    out_bound = window_attention(*qkv.unbind(1), cu, max_seqlen=500, validate=False)
    # other tiles (128 query rows); a GPU may then order a dot's inner sum differently: fp32 rounding only
    torch.testing.assert_close(out, out_bound, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(out.square().sum(), qkv)
    dense = qkv.detach().clone().requires_grad_()
    ref = _torch_attention(*dense.unbind(1), lengths)
    (grad_ref,) = torch.autograd.grad(ref.square().sum(), dense)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(grad, grad_ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("head_dim", [16, 40, 72, 256])
def test_other_head_dims(head_dim):
    """Powers of two, a tail with masked columns (40 = 32 + 8 of 16, 72 = 64 + 8 of 16), the widest."""
    lengths = [5, 33]
    q, k, v = _qkv(sum(lengths), 2, head_dim)
    grad_out = torch.randn_like(q)
    out, grads = _grads(lambda q, k, v: window_attention(q, k, v, _cu(lengths)), (q, k, v), grad_out)
    out_ref, grads_ref = _grads(lambda q, k, v: _torch_attention(q, k, v, lengths), (q, k, v), grad_out)
    torch.testing.assert_close(out, out_ref, atol=2e-5, rtol=1e-4)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)


def test_split_head_dim_never_pads_80_to_128():
    assert wa.split_head_dim(80) == (64, 16)
    assert wa.split_head_dim(96) == (64, 32)
    assert wa.split_head_dim(64) == (64, 0)
    assert wa.split_head_dim(128) == (128, 0)
    assert wa.split_head_dim(256) == (256, 0)
    assert wa.split_head_dim(72) == (64, 16)
    assert wa.split_head_dim(8) == (16, 0)


def _args(**over):
    q, k, v = _qkv(6, 2, 16)
    args = dict(q=q, k=k, v=v, cu_seqlens=_cu([2, 4]))
    args.update(over)
    return args


def _int32(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize(
    "over, error, match",
    [  # the bad arguments are built inside the test, on the test device
        (
            lambda: dict(q=_qkv(6, 2, 32)[0][:, 0]),
            ValueError,
            r"expected three \(N, H, Dh\) tensors of one shape",
        ),
        (lambda: dict(k=_qkv(6, 3, 16)[0]), ValueError, "tensors of one shape"),
        (lambda: dict(q=_qkv(6, 2, 32)[0][..., ::2]), ValueError, "contiguous last dimension"),
        (lambda: dict(q=_qkv(6, 2, 16)[0].half()), TypeError, "expected one dtype"),
        (lambda: dict(cu_seqlens=_cu([2, 4]).long()), TypeError, "expected a 1-Dh int32 tensor"),
        (lambda: dict(cu_seqlens=_int32(1, 2, 6)), ValueError, "starts at 1; expected 0"),
        (lambda: dict(cu_seqlens=_int32(0, 4, 2, 6)), ValueError, "decreases at index 1"),
        (lambda: dict(cu_seqlens=_int32(0, 2, 5)), ValueError, "ends at 5; expected the token count 6"),
        (lambda: dict(max_seqlen=3), ValueError, r"max_seqlen 3 is smaller than the longest segment \(4\)"),
        (lambda: dict(max_seqlen=-1), ValueError, "expected a non-negative int"),
        (lambda: dict(cu_seqlens=_cu([2, 4]).to("meta")), ValueError, "different devices"),
    ],
)
def test_errors(over, error, match):
    with pytest.raises(error, match=match):
        window_attention(**_args(**over()))


def test_head_dim_too_large():
    with pytest.raises(ValueError, match="head_dim 320 is not supported; expected 1 <= head_dim <= 256"):
        window_attention(*_qkv(4, 1, 320), _cu([4]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the compiled kernels run for real on this machine")
def test_compiles_for_sm90():
    """The interpreter never sees compile-time errors (non-constexpr globals, unsupported ops, shared
    memory); compile every tile configuration family ahead of time for an H100 target."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "qwenvl_min.kernels._aot", "window_attention", "--arch", "90"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ok sm_90") == len(_registry.aot_launches("window_attention"))
