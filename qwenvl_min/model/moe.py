"""The sparse MLP of Qwen3-VL-MoE: a softmax router chooses k experts per token, each expert is a SwiGLU.

Shapes (letters as in docs/design.md, "Shape legend"): B, T, E, X (experts), k (experts per token),
I (expert width); the experts see the tokens flattened, B·T rows, and B·T·k token-expert pairs.

For each token x (transformers 5.24's `Qwen3VLMoeTextSparseMoeBlock`, exactly):
    logits = router(x)                               (X,) in the activation dtype: the `router` tap
    p = softmax(logits) in fp32;  (w, e) = top-k of p;  w = w / sum(w), cast to the activation dtype
    y = sum_j w_j * down_e_j(silu(gate_e_j(x)) * up_e_j(x))
The weights are stored fused as transformers keeps them in memory: `gate_up_proj` (X, 2I, E), rows
[gate | up], and `down_proj` (X, E, I). (The published files store both transposed; the key table
transposes them on load, `weights_convert.mapping`.)

The experts run grouped: the B·T·k token-expert pairs are sorted by expert and each expert that has pairs
multiplies all of its rows at once (`grouped_swiglu`), so the cost is that of the chosen experts, with
one Python step per expert used, never per token. The weighted results go back to pair order and each
token sums its k rows (fp32 accumulation, one rounding), as transformers' grouped path does.

Under torch.compile the grouped loop (it reads the per-expert counts back to the host) runs as one opaque
custom op, `qwenvl_min::grouped_swiglu`, so compiled decoding keeps one graph. Under tensor parallelism
the experts are sharded on I (`parallel.plan`): each rank holds [gate_r | up_r] rows and the matching
down columns, computes a partial sum, and the plan all-reduces the experts' output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import TextConfig


def _local(weight: Tensor) -> Tensor:
    """This rank's shard of a tensor-parallel (DTensor) parameter; the tensor itself otherwise."""
    if not torch.distributed.is_available():  # builds without distributed support have no DTensor
        return weight
    from torch.distributed.tensor import DTensor

    return weight.to_local() if isinstance(weight, DTensor) else weight


def grouped_swiglu(rows: Tensor, counts: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
    """rows (B·T·k, E) sorted by expert, counts (X,) rows per expert -> (B·T·k, E): expert e's SwiGLU on
    its rows."""
    out = rows.new_empty(rows.shape[0], down.shape[1])
    start = 0
    for expert, count in enumerate(counts.tolist()):
        if count:
            end = start + count
            gate, up = F.linear(rows[start:end], gate_up[expert]).chunk(2, dim=-1)  # (c, 2I) -> 2 x (c, I)
            out[start:end] = F.linear(F.silu(gate) * up, down[expert])
            start = end
    return out


@torch.library.custom_op("qwenvl_min::grouped_swiglu", mutates_args=())
def _grouped_swiglu_op(rows: Tensor, counts: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
    return grouped_swiglu(rows, counts, gate_up, down)


@_grouped_swiglu_op.register_fake
def _(rows: Tensor, counts: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
    return rows.new_empty(rows.shape[0], down.shape[1])


class Experts(nn.Module):
    """X SwiGLU experts in two fused tensors; forward(x (B·T, E), experts (B·T, k), weights (B·T, k)) ->
    (B·T, E)."""

    def __init__(self, num_experts: int, width: int, expert_hidden: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * expert_hidden, width))
        self.down_proj = nn.Parameter(torch.empty(num_experts, width, expert_hidden))
        for weight, fan_in in ((self.gate_up_proj, width), (self.down_proj, expert_hidden)):
            bound = 1 / math.sqrt(fan_in)  # nn.Linear's default init, per expert
            nn.init.uniform_(weight, -bound, bound)

    def forward(self, x: Tensor, experts: Tensor, weights: Tensor) -> Tensor:
        tokens, k = experts.shape
        gate_up, down = _local(self.gate_up_proj), _local(self.down_proj)
        pair_expert = experts.reshape(-1)  # (B·T·k,)
        order = pair_expert.argsort(stable=True)  # pairs grouped by expert
        counts = torch.zeros(gate_up.shape[0], dtype=torch.int64, device=x.device)
        counts.scatter_add_(0, pair_expert, torch.ones_like(pair_expert))  # (X,) pairs per expert
        rows = x[order // k]  # (B·T·k, E), expert order
        swiglu = _grouped_swiglu_op if torch.compiler.is_compiling() else grouped_swiglu
        out = swiglu(rows, counts, gate_up, down) * weights.reshape(-1)[order, None]  # (B·T·k, E)
        out = torch.empty_like(out).index_copy(0, order, out)  # back to pair order: (token, j)
        return out.view(tokens, k, -1).sum(1)  # (B·T, k, E) -> (B·T, E)


class SparseMoE(nn.Module):
    """`router` (a bias-free Linear(E, X): its output is the router logits) and the `experts`."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        if config.moe is None:
            raise ValueError("SparseMoE needs a text config with moe settings")
        self.top_k = config.moe.experts_per_token
        self.router = nn.Linear(config.hidden_size, config.moe.num_experts, bias=False)
        self.experts = Experts(config.moe.num_experts, config.hidden_size, config.moe.expert_hidden)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.router(x)  # (B, T, E) -> (B, T, X)
        probs = logits.reshape(-1, logits.shape[-1]).softmax(dim=-1, dtype=torch.float32)  # (B·T, X)
        weights, experts = probs.topk(self.top_k, dim=-1)  # (B·T, k) each
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(logits.dtype)
        out = self.experts(x.reshape(-1, x.shape[-1]), experts, weights)  # (B·T, E)
        return out.view(x.shape)
