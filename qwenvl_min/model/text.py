"""Qwen2 / Qwen3 decoder with M-RoPE: embeddings, pre-norm layers (GQA attention, SwiGLU or sparse MoE
MLP), final RMSNorm.

The Qwen3 decoder (Qwen3-VL) differs by config switches: no q/k/v biases, an explicit head dim, and an
RMSNorm over each head of q and k before the rotary (`TextConfig.qk_norm`); Qwen3-VL-MoE layers listed in
`moe.sparse_layers` have a `moe.SparseMoE` MLP; the first layers of a Qwen3-VL model end with a
`deepstack.DeepStackInjection`.

Shapes (letters as in docs/design.md, "Shape legend"): B, T (new tokens), K (past + new), E, H, G, Dh, R.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import dispatch
from .attention import TextAttend, causal_attention, causal_attention_from_maps, causal_attention_maps
from .cache import Cache, attention_mask_4d
from .config import TextConfig
from .deepstack import DeepStackFeatures, DeepStackInjection
from .layers import RMSNorm, SwiGLU
from .moe import SparseMoE
from .rope import mrope_table


class TiedLMHead(nn.Module):
    """The lm_head of a model whose output projection is its input embedding (`tie_word_embeddings`):
    hidden (..., E) @ embedding (V, E)^T -> logits (..., V), with no parameter of its own.

    It reads the embedding module's weight at call time, so a cast, a move, a loaded state dict or a
    tensor-parallel plan applied to the embedding applies to the head too, and the state dict holds the
    weight once (under `text.embed_tokens.weight`, as published checkpoints do). The embedding is kept
    outside this module's children for that reason.

    Under tensor parallelism the embedding is a vocab-sharded DTensor (`qwenvl_min.parallel.plan`): the
    local rows give this rank's slice of the logits and the slices are gathered, so every rank returns the
    full (..., V) logits, as the untied (column-parallel) lm_head does.
    """

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        object.__setattr__(self, "embedding", embedding)  # not a child: its weight is saved once

    def extra_repr(self) -> str:
        return "tied to the input embedding (text.embed_tokens)"

    def forward(self, hidden: Tensor) -> Tensor:
        weight = self.embedding.weight  # (V, E)
        if not torch.distributed.is_available():  # builds without distributed support have no DTensor
            return F.linear(hidden, weight)
        from torch.distributed.tensor import DTensor, Replicate

        if not isinstance(weight, DTensor):
            return F.linear(hidden, weight)
        logits = F.linear(DTensor.from_local(hidden, weight.device_mesh, [Replicate()]), weight)
        return logits.redistribute(placements=[Replicate()]).to_local()


class TextAttention(nn.Module):
    """q/k/v projections (-> per-head q/k RMSNorm, Qwen3) -> M-RoPE -> KV cache -> `attend` -> o_proj.

    `attend(q, k, v, mask, scale)` (contract in `qwenvl_min.model.attention`) is a plain attribute: assign
    another function to change this layer's attention; parameters and keys are unaffected.

    Given an `attentions` list (the model's `output_attentions=True`), the call runs the exact
    materializing attention instead of `attend` and appends its probabilities (see `_attend_keeping_probs`).
    """

    def __init__(self, config: TextConfig, layer_index: int, kernels: str = "auto") -> None:
        super().__init__()
        # the config's head counts; under tensor parallelism the projections hold only this rank's heads,
        # so forward takes the counts from the projection widths (view(..., -1, head_dim))
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
        )
        self.layer_index = layer_index  # which KVCache slot this layer writes
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, config.num_heads * config.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim, bias=bias)
        self.o_proj = nn.Linear(config.num_heads * config.head_dim, config.hidden_size, bias=False)
        # Qwen3: one RMSNorm (weight of size Dh) shared by every head of q, another for k
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.set_kernels(kernels)

    def cached_kv_heads(self) -> int:
        """The kv heads this layer writes to a KV cache: all G in one process; under tensor parallelism
        this rank's share. Its query heads H_r (the local rows of q_proj / Dh) read G * H_r / H kv heads,
        and at least one (when the TP degree is a multiple of G each rank keeps the one its heads use)."""
        weight = self.q_proj.weight
        rows = weight.to_local().shape[0] if hasattr(weight, "to_local") else weight.shape[0]
        local_heads = rows // self.head_dim
        return max(1, self.num_kv_heads * local_heads // self.num_heads)

    def set_kernels(self, choice: str) -> None:
        """Reset `attend` and `rotary` to the defaults of a resolved kernel choice (see `dispatch`)."""
        self.attend: TextAttend = causal_attention  # no text attention kernel: SDPA on every device
        self.rotary = dispatch.rotary(choice)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        mask: Tensor | None,
        cache: Cache | None,
        *,
        attentions: list[Tensor] | None = None,
    ) -> Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, -1, self.head_dim)  # (B, T, H, Dh)
        k = self.k_proj(x).view(b, t, -1, self.head_dim)  # (B, T, G, Dh)
        v = self.v_proj(x).view(b, t, -1, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(q, k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)  # (B, K, G, Dh)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T or K, Dh)
        if attentions is None:
            out = self.attend(q, k, v, mask, self.head_dim**-0.5)  # (B, H, T, Dh)
        else:
            out = self._attend_keeping_probs(q, k, v, mask, attentions)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))  # (B, H, T, Dh) -> (B, T, H*Dh)

    def _attend_keeping_probs(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, attentions: list[Tensor]
    ) -> Tensor:
        """The default attention computed exactly: softmax(q k^T * scale) (B, H, T, K) in fp32, rounded to
        the activation dtype, appended to `attentions` (what transformers' eager attention returns), and the
        output (B, H, T, Dh) computed from those probabilities (as eager attention computes it).

        Only the default `attend` can be reproduced this way: another function (assigned by hand, or a
        `.probs` tap's) is refused, as is a tensor-parallel layer, whose q holds this rank's heads only."""
        where = f"text.layers.{self.layer_index}.attn"
        if self.attend is not causal_attention:
            raise ValueError(
                f"output_attentions computes {where}'s attention exactly, in place of its attend function, "
                "but that function was replaced (by hand or by a '.probs' tap); read the maps with "
                f"model.taps(read=['{where}.probs']) instead, or reset it with model.set_kernels(...)"
            )
        if q.shape[1] != self.num_heads:
            raise ValueError(
                f"output_attentions on a tensor-parallel model would give {where}'s local heads only; read "
                f"model.taps(read=['{where}.probs']), which gathers every head"
            )
        probs = causal_attention_maps(q, k, mask, self.head_dim**-0.5).to(v.dtype)  # (B, H, T, K)
        attentions.append(probs)
        return causal_attention_from_maps(v, probs)


class DecoderLayer(nn.Module):
    """Pre-norm attention and MLP with residuals; a layer that receives DeepStack features (Qwen3-VL's
    first `deepstack_layers`) ends with `deepstack`, which adds them at the visual tokens."""

    def __init__(
        self, config: TextConfig, index: int, kernels: str = "auto", deepstack: bool = False
    ) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = TextAttention(config, index, kernels)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.is_sparse(index):
            self.mlp: nn.Module = SparseMoE(config)
        else:
            self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, bias=False)
        self.deepstack = DeepStackInjection() if deepstack else None

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        mask: Tensor | None,
        cache: Cache | None,
        deepstack: tuple[Tensor, Tensor] | None = None,
        *,
        hidden_states: list[Tensor] | None = None,
        attentions: list[Tensor] | None = None,
    ) -> Tensor:
        """`deepstack`: (slots, features) to add after the MLP (see `deepstack.DeepStackFeatures.level`).

        `hidden_states` receives the layer's output before DeepStack features are added (what transformers
        records for Qwen3-VL: its hook sits on the decoder layer, the addition follows it); the value
        returned, and the `text.layers.{i}` tap, include them."""
        x = x + self.attn(self.attn_norm(x), rope, mask, cache, attentions=attentions)
        x = x + self.mlp(self.mlp_norm(x))
        if hidden_states is not None:
            hidden_states.append(x)
        if self.deepstack is not None:
            x = self.deepstack(x, deepstack)
        elif deepstack is not None:
            raise ValueError("this decoder layer takes no DeepStack features (the model has fewer levels)")
        return x


class TextModel(nn.Module):
    """Embeddings, decoder layers, final norm. `deepstack_layers`: how many first layers take DeepStack
    features (Qwen3-VL: one per DeepStack level of the tower; 0 for Qwen2-VL / Qwen2.5-VL)."""

    def __init__(self, config: TextConfig, kernels: str | None = None, deepstack_layers: int = 0) -> None:
        super().__init__()
        self.config = config
        kernels = dispatch.resolve_kernels(kernels)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i, kernels, deepstack=i < deepstack_layers) for i in range(config.num_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        embeds: Tensor,
        positions: Tensor,
        key_valid: Tensor | None = None,
        cache: Cache | None = None,
        deepstack: DeepStackFeatures | None = None,
        *,
        hidden_states: list[Tensor] | None = None,
        attentions: list[Tensor] | None = None,
    ) -> Tensor:
        """embeds (B, T, E), positions (3, B, T), key_valid (B, K) over past + new tokens -> normed (B, T, E).

        With a `SlotWrite` (`KVCache.at`) K is the cache's capacity C and key_valid covers all C slots.
        `deepstack`: the DeepStack levels of a Qwen3-VL prefill (level k goes to layer k).

        Lists given as `hidden_states` / `attentions` (the model's output_hidden_states / output_attentions)
        receive what transformers returns for them: `hidden_states` the L + 1 tensors (B, T, E) embeds,
        then each layer's output (before its DeepStack addition) with the last replaced by the final
        norm's; `attentions` each layer's probabilities (B, H, T, K) (see `TextAttention`). Nothing is
        kept or computed when they are None."""
        t = embeds.shape[1]
        rope = mrope_table(positions, self.config, embeds.dtype)  # cos, sin (B, T, R)
        if cache is None:
            mask = attention_mask_4d(key_valid, t, t, embeds.device)
        else:
            mask = cache.attention_mask(key_valid, t, embeds.device)
        x = embeds
        if hidden_states is not None:
            hidden_states.append(x)
        for i, layer in enumerate(self.layers):
            level = None if deepstack is None else deepstack.level(i)
            x = layer(x, rope, mask, cache, level, hidden_states=hidden_states, attentions=attentions)
        x = self.norm(x)
        if hidden_states is not None:
            hidden_states[-1] = x  # transformers' last entry is after the final norm, not the last layer's
        return x
