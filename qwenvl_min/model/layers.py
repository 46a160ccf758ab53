"""Small building blocks shared by the vision tower and the decoder: norms and MLPs.

Shapes (letters as in docs/design.md, "Shape legend"): ... any leading dims, D (the width of the layer: ViT or LLM), F.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """y = w * cast(x / sqrt(mean(x^2) + eps)): statistics in fp32, and the normalized value is cast back
    to the input dtype *before* the weight multiply (the order the checkpoints were trained with; it is
    what makes bf16 results bit-identical to the reference)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # F.rms_norm without a weight is exactly upcast -> x * rsqrt(mean(x^2) + eps) -> cast back, in one
        # call (tests/model/test_layers.py checks it bit for bit against the reference in fp32, bf16 and fp16);
        # the weight multiply stays outside, after the cast.
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32 and x.device.type == "cpu":
            # fp32: the cast is the identity and torch's CPU kernel multiplies (x * rstd) * w, the same two
            # products in the same order, so the weight goes inside the call and saves a pass over x and a
            # fresh buffer (tested bit for bit in tests/model/test_layers.py; other devices keep the two calls)
            return F.rms_norm(x, (x.shape[-1],), self.weight, eps=self.eps)
        return self.weight * F.rms_norm(x, (x.shape[-1],), eps=self.eps)


def quick_gelu(x: Tensor) -> Tensor:
    """x * sigmoid(1.702 x): the sigmoid approximation of GELU used by Qwen2-VL's (CLIP-style) ViT."""
    if torch.is_grad_enabled():
        return x * torch.sigmoid(1.702 * x)
    # Inference: one buffer instead of three. At 896 px the vision MLP's hidden activations are 84 MB
    # each, above glibc's mmap threshold, so every fresh buffer costs an mmap and a page-fault pass.
    # Same operations in the same order (x * s == s * x), so the result is bit-identical.
    return torch.sigmoid_(1.702 * x).mul_(x)


class QuickGeluMLP(nn.Module):
    """Qwen2-VL vision MLP: fc2(quick_gelu(fc1(x))), D -> F -> D, with biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class GeluTanhMLP(nn.Module):
    """Qwen3-VL vision MLP: fc2(gelu_tanh(fc1(x))), D -> F -> D, with biases; gelu_tanh is GELU's tanh
    approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (transformers' "gelu_pytorch_tanh")."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))
        # inference: the activation in place, in fc1's buffer (see quick_gelu); the same kernel, the same bits
        return self.fc2(torch.ops.aten.gelu_(self.fc1(x), approximate="tanh"))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); biased in the Qwen2.5-VL ViT, bias-free in the Qwen2 decoder."""

    def __init__(self, dim: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        # inference: reuse the gate buffer (see quick_gelu for why large fresh buffers are costly)
        return self.down_proj(F.silu(self.gate_proj(x), inplace=True).mul_(self.up_proj(x)))
