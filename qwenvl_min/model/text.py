"""Qwen2 decoder with M-RoPE: embeddings, pre-norm layers (GQA attention, SwiGLU MLP), final RMSNorm.

Shape legend: B batch, T new tokens, K = past + new tokens (keys), E width, H query heads,
G kv heads (H a multiple of G), Dh head dim (128 in released models), R = Dh/2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import dispatch
from .attention import TextAttend, causal_attention
from .config import TextConfig
from .layers import RMSNorm, SwiGLU
from .rope import mrope_table
from .static_cache import StaticCacheWrite


def tied_logits(hidden: Tensor, embedding: Tensor) -> Tensor:
    """hidden (..., E) @ embedding (V, E)^T: the lm_head of a model whose head is tied to the embeddings.

    Under tensor parallelism the embedding is a vocab-sharded DTensor (`qwenvl_min.parallel.plan`): the
    local rows give this rank's slice of the logits and the slices are gathered, so every rank returns the
    full (..., V) logits, as the untied (column-parallel) lm_head does.
    """
    if not torch.distributed.is_available():  # builds without distributed support have no DTensor
        return F.linear(hidden, embedding)
    from torch.distributed.tensor import DTensor, Replicate

    if not isinstance(embedding, DTensor):
        return F.linear(hidden, embedding)
    logits = F.linear(DTensor.from_local(hidden, embedding.device_mesh, [Replicate()]), embedding)
    return logits.redistribute(placements=[Replicate()]).to_local()


class KVCache:
    """Keys and values of every layer for the tokens seen so far, owned and passed by the caller.

    Stored as (B, K, G, Dh) per layer; `update` appends the new tokens and returns the full history.
    With `capacity` (the most tokens the cache will hold, e.g. prompt + max new tokens), each layer's
    buffers are allocated once, at the first update, and filled in place: decoding then neither allocates
    nor copies the history every step, and `update` returns views of the filled part.
    """

    def __init__(self, num_layers: int, capacity: int | None = None) -> None:
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers
        self.capacity = capacity
        self.lengths = [0] * num_layers

    @property
    def length(self) -> int:
        return self.lengths[0]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        start, end = self.lengths[layer], self.lengths[layer] + k.shape[1]
        if self.capacity is not None and end > self.capacity:
            raise ValueError(f"KV cache capacity {self.capacity} exceeded: {end} tokens")
        self.lengths[layer] = end
        if self.capacity is None:
            if self.keys[layer] is not None:
                k = torch.cat((self.keys[layer], k), dim=1)
                v = torch.cat((self.values[layer], v), dim=1)
            self.keys[layer], self.values[layer] = k, v
            return k, v
        if self.keys[layer] is None:
            shape = (k.shape[0], self.capacity, *k.shape[2:])
            self.keys[layer] = k.new_empty(shape)
            self.values[layer] = v.new_empty(shape)
        self.keys[layer][:, start:end] = k
        self.values[layer][:, start:end] = v
        return self.keys[layer][:, :end], self.values[layer][:, :end]

    def attention_mask(self, key_valid: Tensor | None, new: int, device: torch.device) -> Tensor | None:
        """The mask of a forward adding `new` tokens to this cache (see `attention_mask_4d`)."""
        return attention_mask_4d(key_valid, new, self.length + new, device)


def attention_mask_4d(key_valid: Tensor | None, new: int, total: int, device: torch.device) -> Tensor | None:
    """Boolean (B, 1, T, K) mask 'query may attend key' for causal attention over past + new tokens,
    or None when no mask is needed: plain causal attention (no padding, no past), or a single new token
    without padding (it may see every key).

    Query i sits at sequence index total - new + i. Padded queries would see no key at all (a NaN row in
    softmax), so every query may always see itself; those rows are discarded by the caller anyway.
    """
    if key_valid is None and (total == new or new == 1):
        return None
    query_index = torch.arange(total - new, total, device=device)[:, None]  # (T, 1)
    key_index = torch.arange(total, device=device)[None, :]  # (1, K)
    allowed = key_index <= query_index  # (T, K)
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, None, :].bool()  # (B, 1, T, K)
        allowed = allowed | (key_index == query_index)
    else:
        allowed = allowed[None, None]
    return allowed


# what a forward writes its keys / values to: both have `update(layer, k, v)` and `attention_mask(...)`
Cache = KVCache | StaticCacheWrite


class TextAttention(nn.Module):
    """q/k/v projections -> M-RoPE -> KV cache -> `attend` -> o_proj.

    `attend(q, k, v, mask, scale)` (contract in `qwenvl_min.model.attention`) is a plain attribute: assign
    another function to change this layer's attention; parameters and keys are unaffected.
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
        self.q_proj = nn.Linear(config.hidden_size, config.num_heads * config.head_dim)
        self.k_proj = nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim)
        self.v_proj = nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim)
        self.o_proj = nn.Linear(config.num_heads * config.head_dim, config.hidden_size, bias=False)
        self.set_kernels(kernels)

    def set_kernels(self, choice: str) -> None:
        """Reset `attend` and `rotary` to the defaults of a resolved kernel choice (see `dispatch`)."""
        self.attend: TextAttend = causal_attention  # no text attention kernel: SDPA on every device
        self.rotary = dispatch.rotary(choice)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None, cache: Cache | None
    ) -> Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, -1, self.head_dim)  # (B, T, H, Dh)
        k = self.k_proj(x).view(b, t, -1, self.head_dim)  # (B, T, G, Dh)
        v = self.v_proj(x).view(b, t, -1, self.head_dim)
        q, k = self.rotary(q, k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)  # (B, K, G, Dh)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T or K, Dh)
        out = self.attend(q, k, v, mask, self.head_dim**-0.5)  # (B, H, T, Dh)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))  # (B, H, T, Dh) -> (B, T, H*Dh)


class DecoderLayer(nn.Module):
    def __init__(self, config: TextConfig, index: int, kernels: str = "auto") -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = TextAttention(config, index, kernels)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, bias=False)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None, cache: Cache | None
    ) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rope, mask, cache)
        return x + self.mlp(self.mlp_norm(x))


class TextModel(nn.Module):
    def __init__(self, config: TextConfig, kernels: str | None = None) -> None:
        super().__init__()
        self.config = config
        kernels = dispatch.resolve_kernels(kernels)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i, kernels) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        embeds: Tensor,
        positions: Tensor,
        key_valid: Tensor | None = None,
        cache: Cache | None = None,
    ) -> Tensor:
        """embeds (B, T, E), positions (3, B, T), key_valid (B, K) over past + new tokens -> normed (B, T, E).

        With a `StaticCacheWrite` K is the cache's capacity C and key_valid covers all C slots."""
        t = embeds.shape[1]
        rope = mrope_table(positions, self.config, embeds.dtype)  # cos, sin (B, T, R)
        if cache is None:
            mask = attention_mask_4d(key_valid, t, t, embeds.device)
        else:
            mask = cache.attention_mask(key_valid, t, embeds.device)
        x = embeds
        for layer in self.layers:
            x = layer(x, rope, mask, cache)
        return self.norm(x)
