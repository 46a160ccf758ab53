"""The sparse MoE MLP: grouped experts equal a per-token fp64 reference (hypothesis over token counts,
experts and k), bf16 is bit-identical to transformers 5.24's block, and the experts run as one custom op
under torch.compile."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen3VLMoeConfig
from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeTextSparseMoeBlock

from qwenvl_min import Config
from qwenvl_min.model.config import MoeConfig
from qwenvl_min.model.moe import SparseMoE


def moe_config(experts: int, k: int, width: int = 16, expert_hidden: int = 8):
    text = Config.preset("tiny-qwen3-vl-moe").text
    return dataclasses.replace(
        text,
        hidden_size=width,
        num_heads=2,
        num_kv_heads=2,
        explicit_head_dim=8,
        mrope_section=(2, 1, 1),
        moe=MoeConfig(experts, k, expert_hidden, sparse_layers=(0,)),
    )


def reference(moe: SparseMoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token, expert by expert, in fp64 (the routing probabilities in fp32, as the definition in
    `qwenvl_min.model.moe` says)."""
    gate_up, down = moe.experts.gate_up_proj.double(), moe.experts.down_proj.double()
    out = torch.zeros(x.shape, dtype=torch.float64)
    for s, token in enumerate(x.reshape(-1, x.shape[-1]).double()):
        probs = (moe.router.weight.double() @ token).float().softmax(-1)
        weights, chosen = probs.topk(moe.top_k)
        for w, e in zip((weights / weights.sum()).double(), chosen.tolist()):
            gate, up = (gate_up[e] @ token).chunk(2)
            out.view(-1, x.shape[-1])[s] += w * (down[e] @ (F.silu(gate) * up))
    return out


@settings(max_examples=25, deadline=None)
@given(tokens=st.integers(1, 12), experts=st.integers(1, 7), data=st.data())
def test_grouped_experts_equal_the_per_token_definition(tokens, experts, data) -> None:
    k = data.draw(st.integers(1, experts))
    torch.manual_seed(tokens * 31 + experts)
    moe = SparseMoE(moe_config(experts, k)).double()
    x = torch.randn(1, tokens, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(moe(x), reference(moe, x), rtol=0, atol=1e-12)


def _hf_block(config) -> Qwen3VLMoeTextSparseMoeBlock:
    hf_config = Qwen3VLMoeConfig(**Config.preset("tiny-qwen3-vl-moe").to_hf()).text_config
    hf_config._experts_implementation = "grouped_mm"  # transformers' default
    hf_config.hidden_size, hf_config.moe_intermediate_size = config.hidden_size, config.moe.expert_hidden
    hf_config.num_experts, hf_config.num_experts_per_tok = (
        config.moe.num_experts,
        config.moe.experts_per_token,
    )
    return Qwen3VLMoeTextSparseMoeBlock(hf_config)


@torch.no_grad()
def test_bf16_is_bit_identical_to_transformers() -> None:
    """Router logits and softmax as transformers computes them, the same grouped matmuls, the k results
    weighted in bf16 and summed with fp32 accumulation: the same bits."""
    config = moe_config(6, 2, width=64, expert_hidden=48)
    torch.manual_seed(0)
    ours = SparseMoE(config)
    hf = _hf_block(config)
    hf.gate.weight.copy_(ours.router.weight)
    hf.experts.gate_up_proj.copy_(ours.experts.gate_up_proj)
    hf.experts.down_proj.copy_(ours.experts.down_proj)
    ours, hf = ours.to(torch.bfloat16), hf.to(torch.bfloat16)
    x = torch.randn(2, 37, 64).to(torch.bfloat16)
    assert torch.equal(ours(x), hf(x))
    x32 = x.float()
    assert torch.equal(ours.float()(x32), hf.float()(x32))


def test_experts_are_one_custom_op_under_compile() -> None:
    """The grouped loop reads counts back to the host: compiled, it is the opaque op
    qwenvl_min::grouped_swiglu (no graph break, fullgraph works) and gives the eager values."""
    torch.manual_seed(1)
    moe = SparseMoE(moe_config(5, 2)).eval()
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        eager = moe(x)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(moe)(x)
        compiled = torch.compile(moe, fullgraph=True, backend="aot_eager")(x)
    assert explained.graph_break_count == 0
    assert any("grouped_swiglu" in str(node.target) for g in explained.graphs for node in g.graph.nodes)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-6)
