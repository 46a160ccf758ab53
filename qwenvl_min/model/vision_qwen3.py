"""Vision tower of Qwen3-VL (and Qwen3-VL-MoE): patch embedding with a bias, learned positions resampled to
each image, ViT blocks with 2D rotary and full attention per frame, the 2x2 patch merger, and the
DeepStack mergers.

Shapes (letters as in docs/design.md, "Shape legend"): N, D, M, E.

What differs from the Qwen2-VL tower (`vision`), whose blocks, attention and merger this one reuses:
  * patches of 16 x 16 pixels (a row holds 3 x 2 x 16 x 16 = 1536 values) and a patch embedding with a bias;
  * a learned side x side position table (48 x 48 in the released models) resampled bilinearly
    (align_corners) to every item's (h, w) patches and added after the patch embedding; the taps and
    weights come from the layout (`geometry.learned_grid_taps`), the table rows are summed with fp32
    weights and cast once (transformers 5.24's order, docs/design.md "Qwen3-VL");
  * blocks: LayerNorm with bias, a GELU-tanh MLP, full attention within each frame (no windows);
  * DeepStack: the outputs of the blocks in `deepstack_indexes` each go through their own merger
    (`deepstack_mergers.{k}`, LayerNorm over the concatenated 4D row) to the LLM width. The decoder adds
    level k to the hidden states at the visual tokens after its layer k (`deepstack`).
The forward returns both: `VisionFeatures(merged (M, E), deepstack (levels x (M, E)))`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from . import dispatch
from .config import VisionConfig
from .vision import (
    PatchMerger,
    VisionBlock,
    VisionLayout,
    check_vision_inputs,
    layout_outside_graph,
    vision_layout,
)


class VisionFeatures(NamedTuple):
    """What the Qwen3-VL tower returns, rows one per pad token (images then videos, as the tower ran them)."""

    merged: Tensor  # (M, E): the main merger's output, written over the pad tokens' embeddings
    deepstack: tuple[Tensor, ...]  # one (M, E) per DeepStack level, added after decoder layer k


class LearnedPositions(nn.Module):
    """The learned position table (side * side, D) read at 4 bilinear taps per row: (N, D) in the table's
    dtype. The 4 products and their sum run in fp32 (the weights are fp32) and are rounded once."""

    def __init__(self, num_positions: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_positions, width))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, taps: Tensor, weights: Tensor) -> Tensor:
        rows = self.weight[taps]  # (N, 4) -> (N, 4, D)
        return (rows * weights[:, :, None]).sum(1).to(self.weight.dtype)


class Qwen3VisionTower(nn.Module):
    def __init__(self, config: VisionConfig, kernels: str | None = None) -> None:
        super().__init__()
        if config.family != "qwen3_vl":
            raise ValueError(f"Qwen3VisionTower needs a qwen3_vl vision config, got {config.family!r}")
        self.config = config
        kernels = dispatch.resolve_kernels(kernels)
        # Conv3d with kernel == stride over a (C, T, P, P) patch == a Linear on the flat row
        self.patch_embed = nn.Linear(config.patch_dim, config.width)
        self.pos_embed = LearnedPositions(config.num_position_embeddings, config.width)
        self.blocks = nn.ModuleList(VisionBlock(config, i, kernels) for i in range(config.depth))
        self.merger = PatchMerger(config)
        self.deepstack_mergers = nn.ModuleList(
            PatchMerger(config, after_concat=True) for _ in config.deepstack_indexes
        )

    def layout(self, pixel_values: Tensor, grid_thw: Tensor, what: str = "pixel_values") -> VisionLayout:
        """Check pixel rows against their grid (the one validation pass) and compute the layout."""
        check_vision_inputs(self.config, pixel_values, grid_thw, what)
        return vision_layout(self.config, grid_thw, pixel_values.device)

    def forward(
        self, pixel_values: Tensor, grid_thw: Tensor, layout: VisionLayout | None = None
    ) -> VisionFeatures:
        """Merged and DeepStack features (M, E each) from pixel_values (N, patch_dim); `layout` as in
        `vision.VisionTower.forward`."""
        if layout is None:
            layout = layout_outside_graph(self, pixel_values, grid_thw)
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # (N, D)
        x = x + self.pos_embed(layout.position_taps, layout.position_weights).to(x.dtype)
        levels = {block: level for level, block in enumerate(self.config.deepstack_indexes)}
        deepstack = []
        for i, block in enumerate(self.blocks):
            x = block(x, layout)
            if i in levels:
                deepstack.append(self.deepstack_mergers[levels[i]](x))
        return VisionFeatures(self.merger(x), tuple(deepstack))
