"""The KV cache: keys and values of every decoder layer, owned by the caller and passed to each forward.

One storage, two ways to write it (gpt-fast's fixed buffers, with an eager append on top):

- **append** (eager decoding): `update(layer, k, v)` puts a forward's T new tokens after the ones already
  held and returns the filled part, so attention runs over exactly the K tokens seen so far. Without a
  capacity the history grows by concatenation; with one, each layer's buffers of `capacity` slots are
  allocated at its first write and filled in place (decoding neither allocates nor copies the history).
- **at slots** (compiled decoding): `cache.at(slots)` is what one forward gets. Each layer writes its new
  tokens at the tensor `slots` in place and attends over all C slots, with the boolean `key_valid`
  (B, C) hiding the slots that hold no real token:

      query at slot s may see key slot j  <=>  j <= s and key_valid[b, j]      (and always itself)

  Every step then has the same shapes, buffers and Python values, so a step compiles once (and can be
  replayed as one CUDA graph: the buffers are marked as static addresses). Slots never written hold zeros:
  a masked key gets probability exactly 0 and 0 x (finite value) adds nothing, so the result equals
  attention over the written slots (up to summation order). `reset()` zeroes a reused cache, so nothing of
  one generate call, NaN included, reaches the next.

The append mode keeps eager decoding as fast as before the two were one type: attention over the filled
part costs less than over every slot with a mask (docs/compiled_generation.md).

Shapes (letters as in docs/design.md, "Shape legend"): B, T (new tokens), K, C, G, Dh.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class KVCache:
    """Per-layer keys / values (B, K or C, G, Dh) for the tokens seen so far (see the module docstring).

    `KVCache(num_layers)` grows by concatenation; `KVCache(num_layers, capacity=n)` holds at most n tokens
    in buffers allocated at the first write; `KVCache.preallocated(...)` allocates zeroed buffers and the
    key mask now, for slot writes (`at`).
    """

    def __init__(self, num_layers: int, capacity: int | None = None) -> None:
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers
        self.capacity = capacity
        self.lengths = [0] * num_layers  # tokens appended per layer (append mode)
        self.key_valid: Tensor | None = None  # (B, C) bool, slot mode: which slots hold real tokens

    @classmethod
    def preallocated(
        cls,
        num_layers: int,
        batch: int,
        capacity: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> KVCache:
        """Zeroed buffers (B, C, G, Dh) per layer and an all-valid key mask (B, C), allocated now."""
        cache = cls(num_layers, capacity)
        shape = (batch, capacity, kv_heads, head_dim)
        cache.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        cache.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        # key_valid[b, j]: slot j of row b holds a real token (False: left padding, or a stopped row)
        cache.key_valid = torch.ones(batch, capacity, dtype=torch.bool, device=device)
        if device.type == "cuda":  # CUDA graphs replay on fixed addresses: these never move
            for buffer in (*cache.keys, *cache.values, cache.key_valid):
                torch._dynamo.mark_static_address(buffer)
        return cache

    @property
    def length(self) -> int:
        """Tokens appended so far (append mode)."""
        return self.lengths[0]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k, v (B, T, G, Dh) to `layer`; returns that layer's history (B, K, G, Dh)."""
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
        """The mask of a forward appending `new` tokens (see `attention_mask_4d`)."""
        return attention_mask_4d(key_valid, new, self.length + new, device)

    def reset(self) -> None:
        """Forget everything written: zero keys / values, every slot valid again, nothing appended."""
        for buffer in (*self.keys, *self.values):
            if buffer is not None:
                buffer.zero_()
        if self.key_valid is not None:
            self.key_valid.fill_(True)
        self.lengths = [0] * len(self.lengths)

    def at(self, slots: Tensor) -> SlotWrite:
        """The cache as one forward of T new tokens uses it in slot mode: they go to `slots` (T,) int64."""
        if self.key_valid is None:
            raise ValueError("slot writes need buffers: build the cache with KVCache.preallocated(...)")
        return SlotWrite(self, slots)


@dataclass(frozen=True)
class SlotWrite:
    """One forward's view of a preallocated `KVCache`: the same two methods as the cache's append mode."""

    cache: KVCache
    slots: Tensor  # (T,) int64, the slots of the new tokens

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, T, G, Dh) at the slots, in place; returns the whole buffers (B, C, G, Dh)."""
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        keys.index_copy_(1, self.slots, k)
        values.index_copy_(1, self.slots, v)
        return keys, values

    def attention_mask(self, key_valid: Tensor | None, new: int, device: torch.device) -> Tensor:
        """Boolean (B or 1, 1, T, C) 'query may see key' over all slots (see the module docstring).

        A padded query may always see itself, so no softmax row is empty; the caller drops those rows."""
        # the capacity from a shape, not the Python int: under compile it stays a symbol (no guard on it)
        key_index = torch.arange(self.cache.key_valid.shape[1], device=device)[None, :]  # (1, C)
        query_slot = self.slots[:, None]  # (T, 1)
        allowed = key_index <= query_slot  # (T, C)
        if key_valid is not None:
            return (allowed & key_valid[:, None, None, :]) | (key_index == query_slot)  # (B, 1, T, C)
        return allowed[None, None]


# what a forward writes its keys / values to: both have `update(layer, k, v)` and `attention_mask(...)`
Cache = KVCache | SlotWrite


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
