"""A KV cache of fixed shape for compiled generation: every forward sees the same tensors and shapes.

`KVCache` (text.py) returns the filled part of its buffers, so the key count K grows by one per decode
step: a compiled step would see a new shape every step. Here the buffers hold `capacity` slots from the
start and are written in place at slots given as a tensor, attention always runs over all C slots, and a
boolean mask hides the slots not written yet:

    query at slot s may see key slot j  <=>  j <= s and key_valid[b, j]      (and always itself)

so a decode step has the same shapes and the same Python values at every step: it compiles once, and
the buffers are the same storage at every step (what CUDA graphs need; they are marked as static
addresses for that).

Slots never written hold zeros: a masked key gets probability exactly 0, and 0 * (finite value) adds
nothing, so the result equals attention over the written slots only (up to summation order). A buffer
reused by a later generate call is zeroed first (`reset`): nothing of the previous call, NaN included,
can reach the next one.

Shape legend: B batch, T new tokens, C capacity (slots), G kv heads, Dh head dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class StaticKVCache:
    """Per-layer keys / values (B, C, G, Dh) and the key mask (B, C), allocated once, zero-filled."""

    def __init__(
        self,
        num_layers: int,
        batch: int,
        capacity: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (batch, capacity, kv_heads, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        # key_valid[b, j]: slot j of row b holds a real token (False: left padding, or a stopped row)
        self.key_valid = torch.ones(batch, capacity, dtype=torch.bool, device=device)
        self.batch, self.capacity = batch, capacity
        if device.type == "cuda":  # CUDA graphs replay on fixed addresses: these never move
            for buffer in (*self.keys, *self.values, self.key_valid):
                torch._dynamo.mark_static_address(buffer)

    def reset(self) -> None:
        """Forget everything written: zero keys / values, every slot valid again."""
        for buffer in (*self.keys, *self.values):
            buffer.zero_()
        self.key_valid.fill_(True)

    def at(self, slots: Tensor) -> StaticCacheWrite:
        """The cache as one forward uses it: its T new tokens go to `slots` (T,) int64."""
        return StaticCacheWrite(self, slots)


@dataclass(frozen=True)
class StaticCacheWrite:
    """What `TextModel` calls for one forward over a `StaticKVCache`: the same two methods as `KVCache`."""

    cache: StaticKVCache
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
            allowed = (allowed & key_valid[:, None, None, :]) | (key_index == query_slot)  # (B, 1, T, C)
            return allowed
        return allowed[None, None]
