"""Taps: read and replace internal tensors of one forward, by stable names, without editing the model.

Names (list them with `tap_names(config)`; `{i}` is a block / layer index):

| name                          | tensor                                                   |
|-------------------------------|----------------------------------------------------------|
| vision.patch_embed            | (N, D) patch embeddings, input row order                 |
| vision.blocks.{i}             | (N, D) output of vision block i, input row order         |
| vision.blocks.{i}.attn.probs  | `SegmentMaps`: fp32 attention maps of block i, per segment |
| vision.pre_merge              | (N, D) features entering the merger, input row order     |
| vision.post_merge             | (M, LLM width) merged features, one row per pad token    |
| text.embed                    | (B, T, H) token embeddings with vision features inserted |
| text.layers.{i}               | (B, T, H) output of decoder layer i                      |
| text.layers.{i}.attn.probs    | (B, heads, T, T_kv) fp32 attention probabilities         |
| text.norm                     | (B, T, H) final norm output (what the lm_head sees)      |

Vision tensors cover the images' rows first, then the videos', each in grid order (one tower pass).
"Input row order" is the order of `pixel_values` rows even for Qwen2.5-VL, whose tower internally runs in
window order. A replacement is a tensor of the same shape or a function `f(tensor) -> tensor`; it flows
into the rest of the forward. Attention maps are computed (by an exact, materializing path) only for the
layers named; with no taps the forward pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import Config

Replacement = Tensor | Callable[[object], object]


def tap_names(config: Config) -> list[str]:
    """Every tap name of a model with this config, in forward order."""
    v, t = config.vision, config.text
    names = ["vision.patch_embed"]
    for i in range(v.depth):
        names += [f"vision.blocks.{i}.attn.probs", f"vision.blocks.{i}"]
    names += ["vision.pre_merge", "vision.post_merge", "text.embed"]
    for i in range(t.num_layers):
        names += [f"text.layers.{i}.attn.probs", f"text.layers.{i}"]
    return names + ["text.norm"]


@dataclass
class SegmentMaps:
    """Vision attention maps of one block, grouped like the attention itself (segments of equal length).

    probs[g]: (S_g, heads, L_g, L_g) fp32 softmax probabilities of the g-th group's segments (rows are
    queries); token_index[g]: (S_g, L_g) the pixel_values row of each query/key in those segments.
    """

    probs: list[Tensor]
    token_index: list[Tensor]

    def dense(self, num_tokens: int) -> Tensor:
        """(heads, N, N) map in input row order, zero across segments. O(N^2) memory: small inputs only."""
        heads = self.probs[0].shape[1]
        out = torch.zeros(heads, num_tokens, num_tokens, dtype=torch.float32, device=self.probs[0].device)
        for probs, index in zip(self.probs, self.token_index):
            rows = index[:, :, None].expand(-1, -1, index.shape[1])  # (S_g, L, L)
            cols = index[:, None, :].expand(-1, index.shape[1], -1)
            out[:, rows, cols] = probs.permute(1, 0, 2, 3)  # (heads, S_g, L, L)
        return out


class Taps:
    """What one forward reads and replaces. Create one per call; `cache` holds what was read."""

    def __init__(
        self, config: Config, read: Iterable[str] = (), replace: Mapping[str, Replacement] | None = None
    ) -> None:
        self.read = set(read)
        self.replace = dict(replace or {})
        valid = set(tap_names(config))
        unknown = sorted((self.read | set(self.replace)) - valid)
        if unknown:
            raise KeyError(
                f"unknown tap names {unknown}; names look like 'vision.blocks.3' or 'text.layers.0.attn.probs' "
                "(qwenvl_min.tap_names(config) lists all of them)"
            )
        self.cache: dict[str, object] = {}

    def active(self, name: str) -> bool:
        return name in self.read or name in self.replace

    def __call__(self, name: str, value: object) -> object:
        """Record and/or replace the value flowing through tap `name`; returns what flows on."""
        if name in self.replace:
            value = _replacement(name, value, self.replace[name])
        if name in self.read:
            self.cache[name] = value
        return value


def _replacement(name: str, value: object, replacement: Replacement) -> object:
    new = replacement(value) if callable(replacement) else replacement
    if isinstance(value, Tensor):
        if not isinstance(new, Tensor) or new.shape != value.shape:
            got = tuple(new.shape) if isinstance(new, Tensor) else type(new).__name__
            raise ValueError(
                f"replacement for tap {name!r} must be a tensor of shape {tuple(value.shape)}, got {got}"
            )
        return new.to(dtype=value.dtype, device=value.device)
    if isinstance(value, SegmentMaps):
        if not isinstance(new, SegmentMaps) or [p.shape for p in new.probs] != [p.shape for p in value.probs]:
            raise ValueError(f"replacement for tap {name!r} must be a SegmentMaps with the same group shapes")
    return new
