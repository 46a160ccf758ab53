"""Building blocks bit for bit against transformers in bf16: the operation order (cast before the weight
multiply in RMSNorm, activation-dtype M-RoPE tables, fp32 vision rotary) is what makes bf16 results
identical, and a tolerance-based parity test cannot see a few-ulp difference there."""

from __future__ import annotations

import pytest
import torch
from hf_models import rope_config
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.activations import ACT2FN
from transformers.models.qwen2_vl import modeling_qwen2_vl as hf

from qwenvl_min.model.layers import RMSNorm, quick_gelu
from qwenvl_min.model.rope import apply_rotary, inverse_frequencies, mrope_table, vision_rotary_table


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rmsnorm_bit_exact(dtype):
    torch.manual_seed(0)
    ours, theirs = RMSNorm(96, 1e-6), hf.Qwen2VLRMSNorm(96, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_(1, 0.3)
        theirs.weight.copy_(ours.weight)
    x = (torch.randn(7, 96) * 3).to(dtype)
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    assert torch.equal(ours(x), theirs(x))
    # the order matters: multiplying by the weight before the cast differs in low precision
    if dtype != torch.float32:
        xf = x.float()
        wrong = (ours.weight.float() * xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
        assert not torch.equal(wrong, theirs(x))


def test_quick_gelu_bit_exact():
    x = torch.randn(1000) * 4
    assert torch.equal(quick_gelu(x), ACT2FN["quick_gelu"](x))


def test_inverse_frequencies_bit_exact():
    for dim, theta in ((128, 1e6), (40, 1e4), (16, 1e6)):
        expected = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        assert torch.equal(inverse_frequencies(dim, theta), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_mrope_bit_exact(dtype):
    """Our (B, T, D/2) tables + rotate-half equal HF's rotary module + apply_rotary_pos_emb exactly."""
    from transformers import Qwen2VLConfig

    section = [16, 24, 24]
    cfg = Qwen2VLConfig(
        text_config={
            "hidden_size": 256,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
        },
    ).text_config
    rotary = hf.Qwen2VLRotaryEmbedding(cfg)
    torch.manual_seed(0)
    positions = torch.randint(0, 3000, (3, 2, 9))
    q = torch.randn(2, 2, 9, 128).to(dtype)  # HF layout (B, H, T, D)
    k = torch.randn(2, 1, 9, 128).to(dtype)
    cos_hf, sin_hf = rotary(q, positions)
    q_hf, k_hf = hf.apply_rotary_pos_emb(q, k, cos_hf, sin_hf)
    cos, sin = mrope_table(positions, rope_config(128, 1e6, section), dtype)
    assert torch.equal(torch.cat((cos, cos), -1), cos_hf)
    q_ours, k_ours = apply_rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)  # ours: (B, T, H, D)
    assert torch.equal(q_ours.transpose(1, 2), q_hf)
    assert torch.equal(k_ours.transpose(1, 2), k_hf)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_vision_rotary_bit_exact(dtype):
    """Vision tables in input order and fp32 application equal HF's, cast back to the input dtype."""
    grid = torch.tensor([[1, 6, 8], [2, 4, 4]])
    cos, sin = vision_rotary_table(grid, 80, 1e4, 2)
    from transformers import Qwen2VLVisionConfig
    from transformers.vision_utils import get_vision_position_ids

    rotary = hf.Qwen2VLVisionRotaryEmbedding(Qwen2VLVisionConfig(embed_dim=1280, num_heads=16))
    cos_hf, sin_hf = rotary(torch.zeros(1), get_vision_position_ids(grid, 2))  # (N, 80), input order
    assert torch.equal(torch.cat((cos, cos), -1), cos_hf) and torch.equal(torch.cat((sin, sin), -1), sin_hf)
    torch.manual_seed(0)
    q = torch.randn(int(grid.prod(1).sum()), 16, 80).to(dtype)
    k = torch.randn_like(q)
    q_hf, k_hf = hf.apply_rotary_pos_emb_vision(q, k, cos_hf, sin_hf)
    q_ours, k_ours = apply_rotary(q, k, cos, sin)
    assert torch.equal(q_ours, q_hf) and torch.equal(k_ours, k_hf)


@pytest.mark.parametrize("kind", ["swiglu", "gelu_tanh"])
def test_inference_mlps_are_bit_identical_to_the_autograd_path(kind):
    """The in-place inference branches of quick_gelu, SwiGLU and the GELU-tanh MLP (Qwen3-VL) compute
    exactly what the plain ones do; the GELU-tanh one is transformers' gelu_pytorch_tanh."""
    from qwenvl_min.model.layers import GeluTanhMLP, SwiGLU

    torch.manual_seed(0)
    x = torch.randn(33, 64) * 3
    mlp = SwiGLU(64, 96, bias=True) if kind == "swiglu" else GeluTanhMLP(64, 96)
    with torch.no_grad():
        assert torch.equal(quick_gelu(x), x * torch.sigmoid(1.702 * x))
        fast = mlp(x)
        if kind == "gelu_tanh":
            assert torch.equal(fast, mlp.fc2(ACT2FN["gelu_pytorch_tanh"](mlp.fc1(x))))
    with torch.enable_grad():
        reference = mlp(x)
        reference.sum().backward()  # the autograd path still differentiates
    assert torch.equal(fast, reference.detach())
    first = mlp.gate_proj if kind == "swiglu" else mlp.fc1
    assert first.weight.grad is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rmsnorm_fused_weight_path_is_the_two_call_formula(dtype):
    """fp32 on CPU puts the weight inside F.rms_norm; every dtype must give w * rms_norm(x) bit for bit."""
    torch.manual_seed(1)
    norm = RMSNorm(1280, 1e-6).to(dtype)
    with torch.no_grad():
        norm.weight.normal_(1, 0.3)
    x = (torch.randn(257, 1280) * 3).to(dtype)
    expected = norm.weight * torch.nn.functional.rms_norm(x, (1280,), eps=1e-6)
    assert torch.equal(norm(x), expected)


@given(
    tokens=st.integers(1, 40),
    heads=st.integers(1, 4),
    half=st.sampled_from([2, 8, 20, 40]),
    dtypes=st.sampled_from(
        [
            (torch.float32, torch.float32),
            (torch.bfloat16, torch.float32),
            (torch.bfloat16, torch.bfloat16),
            (torch.float16, torch.float32),
            (torch.float16, torch.float16),
        ]
    ),
    batch=st.booleans(),
    strided=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
@settings(max_examples=40, deadline=None)
def test_inference_rotary_is_bit_identical_to_the_autograd_path(
    tokens, heads, half, dtypes, batch, strided, seed
):
    """Without autograd apply_rotary works half by half into one buffer; it must equal the literal
    x * cat(cos, cos) + rotate_half(x) * cat(sin, sin) (the autograd path), for every dtype mix, for
    (N, H, Dh) and (B, T, H, Dh) layouts, and for q/k that are strided views of a fused projection."""
    x_dtype, table_dtype = dtypes
    g = torch.Generator().manual_seed(seed)
    lead = (2, tokens) if batch else (tokens,)
    if strided:  # q and k as slices of one (..., 3, H, Dh) tensor, as the vision attention has them
        qkv = (torch.randn(*lead, 3, heads, 2 * half, generator=g) * 3).to(x_dtype)
        q, k = qkv.select(-3, 0), qkv.select(-3, 1)
    else:
        q = (torch.randn(*lead, heads, 2 * half, generator=g) * 3).to(x_dtype)
        k = (torch.randn(*lead, heads, 2 * half, generator=g) * 3).to(x_dtype)
    angles = torch.rand(*lead, half, generator=g) * 100
    cos, sin = angles.cos().to(table_dtype), angles.sin().to(table_dtype)
    with torch.no_grad():
        fast_q, fast_k = apply_rotary(q, k, cos, sin)
    with torch.enable_grad():
        ref_q, ref_k = apply_rotary(q, k, cos, sin)
    assert fast_q.dtype == ref_q.dtype == x_dtype
    assert torch.equal(fast_q, ref_q) and torch.equal(fast_k, ref_k)
