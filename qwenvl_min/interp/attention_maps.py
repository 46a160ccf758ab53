"""Where answer tokens look on an image, and what a vision block attends to, from exact attention maps.

Both come from one teacher-forced forward over prompt + answer, with taps on the attention probabilities
of the asked-for modules only (`<path>.attn.probs`: those modules run the exact fp32 materializing
attention for this forward; every other module keeps its fast path). Each map is reduced as soon as its
layer has run, so memory holds one layer's (heads, T, K) probabilities at a time, never all layers'.

Text to image, for answer token j:
- the query is the position whose logits picked token j: the last prompt position for j = 0, answer
  token j - 1 after that (what the model looked at when it chose the token);
- per layer, the softmax probabilities of that query over all keys, averaged over the H query heads
  (GQA: query head i reads kv head i // (H / G); averaging over query heads weighs each kv head by the
  query heads that read it, equally in Qwen's configs);
- averaged over the chosen layers. The row sums to 1 over all keys. Its values on the image's pad
  tokens are the token's attention on each merged 2x2-patch token, *not* renormalised over the image:
  their sum is the token's share of attention on the image (the rest goes to text tokens), and maps of
  different tokens and layers stay comparable.

Vision block b: attention received by each patch, the block's probabilities averaged over heads and
over the query patches of the image. Every query row sums to 1 over its segment (the frame in a
full-attention block, its window otherwise), so the received values sum to 1 over the image's patches.

Shapes (letters as in docs/design.md, "Shape legend"): H, T (prompt + answer), n (chosen answer tokens),
M (the image's merged tokens), N, h x w (its patch grid); "layers" counts the chosen decoder layers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..model.attention import SegmentMaps
from ..model.qwenvl import QwenVL
from .taps import Replacement, TapError, apply_replacement


@dataclass(frozen=True)
class AnswerAttention:
    """Reduced attention of chosen answer tokens; see the module docstring for the averaging."""

    layers: tuple[int, ...]  # decoder layers averaged
    queries: tuple[int, ...]  # (n,) sequence position of each chosen token's query
    rows: Tensor  # (n, T) fp32: mean over layers and query heads of each query's probabilities
    per_layer: Tensor  # (layers, n, T) fp32: the same, layer by layer (mean over heads only)
    image_positions: Tensor  # (M,) int64: sequence positions of the image's pad tokens, in feature order
    vision_block: int | None
    received: Tensor | None  # (N,) fp32 attention received per patch (pixel_values row order), or None

    @property
    def image(self) -> Tensor:
        """(n, M) each token's attention on each merged image token (not renormalised)."""
        return self.rows[:, self.image_positions]

    @property
    def image_share(self) -> Tensor:
        """(n,) each token's share of attention on the image (sum over its pad tokens)."""
        return self.image.sum(-1)

    @property
    def image_share_per_layer(self) -> Tensor:
        """(layers, n) the share layer by layer."""
        return self.per_layer[:, :, self.image_positions].sum(-1)


def default_vision_block(model: QwenVL) -> int:
    """The last full-attention block (Qwen2.5-VL's fullatt_block_indexes; every Qwen2-VL block)."""
    v = model.config.vision
    return max(v.fullatt_block_indexes) if v.fullatt_block_indexes else v.depth - 1


def answer_attention(
    model: QwenVL,
    sequence: Tensor,
    vision: Mapping[str, Tensor],
    queries: Sequence[int],
    layers: Sequence[int],
    vision_block: int | None = None,
    replace: Mapping[str, Replacement] | None = None,
) -> AnswerAttention:
    """One forward of `sequence` (1, T) (prompt + answer ids, one image in `vision`) reducing the probabilities
    of decoder `layers` at the `queries` positions, and of `vision_block` (None: no vision map).

    `replace` passes other taps' replacements through (applied before reducing when a name is one of the
    maps'), e.g. a hand-built attention map to check where a map lands.
    """
    cfg = model.config
    if sequence.dim() != 2 or sequence.shape[0] != 1:
        raise ValueError(f"answer_attention takes one sequence of shape (1, T), got {tuple(sequence.shape)}")
    grid = vision.get("image_grid_thw")
    if grid is None or grid.shape[0] != 1 or int(grid[0, 0]) != 1:
        raise ValueError("answer_attention maps onto one image: give exactly one image (grid t = 1)")
    image_positions = (sequence[0] == cfg.image_token_id).nonzero().flatten().cpu()
    expected = int(grid[0].prod()) // cfg.vision.merge_size**2
    if image_positions.numel() != expected:
        raise ValueError(
            f"the sequence holds {image_positions.numel()} image pad tokens, the image needs {expected}"
        )
    length = sequence.shape[1]
    if not queries or min(queries) < 0 or max(queries) >= length:
        raise ValueError(f"query positions must lie in 0..{length - 1}, got {list(queries)}")
    count = cfg.text.num_layers
    if not layers or min(layers) < 0 or max(layers) >= count:
        raise ValueError(f"decoder layers must lie in 0..{count - 1}, got {list(layers)}")
    if vision_block is not None and not 0 <= vision_block < cfg.vision.depth:
        raise ValueError(f"the vision block must lie in 0..{cfg.vision.depth - 1}, got {vision_block}")

    query_index = torch.tensor(list(queries))
    per_layer: dict[int, Tensor] = {}
    received: list[Tensor] = []
    given = dict(replace or {})
    reducers: dict[str, Callable[[Any], Any]] = {}
    for layer in layers:
        name = f"text.layers.{layer}.attn.probs"

        def reduce_text(probs: Tensor, layer: int = layer, name: str = name) -> Tensor:
            if name in given:
                probs = apply_replacement(name, probs, given[name])
            # probs (1, H, T, T) -> the chosen query rows, mean over query heads -> (n, T)
            per_layer[layer] = probs[0, :, query_index.to(probs.device)].float().mean(0).cpu()
            return probs

        reducers[name] = reduce_text
    if vision_block is not None:
        name = f"visual.blocks.{vision_block}.attn.probs"
        rows = int(grid[0].prod())

        def reduce_vision(maps: SegmentMaps, name: str = name) -> SegmentMaps:
            if name in given:
                maps = apply_replacement(name, maps, given[name])
            received.append(_received(maps, rows))
            return maps

        reducers[name] = reduce_vision
    device = model.text.embed_tokens.weight.device
    try:
        taps = model.taps(replace=given | reducers)
    except TapError as err:
        raise ValueError(err.args[0]) from None
    with torch.inference_mode(), taps:
        model(sequence.to(device), **{k: v.to(device) for k, v in vision.items()})
    stacked = torch.stack([per_layer[layer] for layer in layers])  # (layers, n, T)
    return AnswerAttention(
        layers=tuple(layers),
        queries=tuple(int(q) for q in queries),
        rows=stacked.mean(0),
        per_layer=stacked,
        image_positions=image_positions,
        vision_block=vision_block,
        received=received[0] if received else None,
    )


def _received(maps: SegmentMaps, rows: int) -> Tensor:
    """(N,) mean over heads and query rows of the attention each row receives."""
    out = torch.zeros(rows, dtype=torch.float64)
    for probs, index in zip(maps.probs, maps.token_index):
        # probs (S_g, H, L, L): mean over heads, sum over queries -> (S_g, L) received by each key
        mass = probs.double().mean(1).sum(1).cpu()
        out.index_add_(0, index.reshape(-1).cpu(), mass.reshape(-1))
    return (out / rows).float()


def merged_to_patch_grid(values: Tensor, grid_hw: tuple[int, int], merge_size: int = 2) -> np.ndarray:
    """Per merged token values (M,) in feature order (row-major over the (h/m, w/m) merged grid) -> (h, w)
    over the patch grid, each merged token covering its m x m patches."""
    h, w = grid_hw
    merged = values.detach().double().cpu().numpy().reshape(h // merge_size, w // merge_size)
    return merged.repeat(merge_size, axis=0).repeat(merge_size, axis=1)
