"""transformers' `get_image_features` / `get_video_features`: the vision tower's outputs as transformers 5.24
returns them, read from our module tree with forward hooks (no second path through the tower).

transformers returns a `BaseModelOutputWithPooling` whose `pooler_output` is a tuple of merged features, one
(M_i, E) tensor per image / video (what replaces its pad tokens), and whose `last_hidden_state` is the
(N, D) pre-merge patch features. One difference: transformers keeps Qwen2.5-VL's per-patch states in window
order, ours are in pixel_values row order (the order of every tensor in our tower; transformers' window
order is `view(-1, 4, D)[window_index]` of ours, `transformers.vision_utils.get_vision_window_index`).
Qwen2-VL has no windows: the two agree. Qwen3-VL's (`BaseModelOutputWithDeepstackFeatures`) adds
`deepstack_features`: per DeepStack level, a tuple of (M_i, E) per item, split as `pooler_output` is.

Shapes (letters as in docs/design.md, "Shape legend"): N, D, M, E.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..model.qwenvl import QwenVL
from ..model.vision_qwen3 import VisionFeatures as TowerFeatures


@dataclass(frozen=True)
class VisionFeatures:
    """transformers' `BaseModelOutputWithPooling` of the vision tower, in row order."""

    last_hidden_state: Tensor  # (N, D) the merger's input: patch features after the last block, row order
    pooler_output: tuple[Tensor, ...]  # per image / video, (M_i, E) its merged features
    # output_hidden_states: depth + 1 tensors (N, D), the first block's input (the patch embeddings, plus
    # Qwen3-VL's learned positions) then each block's output (row order); the last equals
    # last_hidden_state (the tower has no final norm)
    hidden_states: tuple[Tensor, ...] | None = None
    # Qwen3-VL: per DeepStack level, per image / video, (M_i, E); None for the families without DeepStack
    deepstack_features: tuple[tuple[Tensor, ...], ...] | None = None

    def to_tuple(self) -> tuple:
        """transformers' `return_dict=False` form: the fields that are not None, in order."""
        fields = (self.last_hidden_state, self.pooler_output, self.hidden_states, self.deepstack_features)
        return tuple(value for value in fields if value is not None)


def vision_features(
    model: QwenVL,
    pixel_values: Tensor,
    grid_thw: Tensor,
    what: str,
    output_hidden_states: bool = False,
    return_dict: bool = True,
) -> VisionFeatures | tuple:
    """One forward of `model.visual` over the rows `pixel_values` (named `what` in errors) of the items of
    `grid_thw`; the hooks read the merger's input and, with output_hidden_states, the first block's input
    (the patch embeddings, plus Qwen3-VL's learned positions) and every block's output."""
    for name, flag in (("output_hidden_states", output_hidden_states), ("return_dict", return_dict)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be True or False, got {flag!r}")
    tower = model.visual
    layout = tower.layout(pixel_values, grid_thw, what)  # checks the rows against the grid
    pre_merge: list[Tensor] = []
    states: list[Tensor] = []

    def keep_input(module: nn.Module, args: tuple[Any, ...]) -> None:
        pre_merge.append(args[0])

    def keep_block_input(module: nn.Module, args: tuple[Any, ...]) -> None:
        states.append(args[0])

    def keep_output(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        states.append(output)

    handles = [tower.merger.register_forward_pre_hook(keep_input)]
    if output_hidden_states:
        handles.append(tower.blocks[0].register_forward_pre_hook(keep_block_input))
        handles += [block.register_forward_hook(keep_output) for block in tower.blocks]
    try:
        out = tower(pixel_values, grid_thw, layout=layout)  # (M, E), or Qwen3-VL's (merged, deepstack)
    finally:
        for handle in handles:
            handle.remove()
    merged, levels = (out.merged, out.deepstack) if isinstance(out, TowerFeatures) else (out, None)
    sizes = (grid_thw.prod(dim=-1) // tower.config.merge_size**2).tolist()
    features = VisionFeatures(
        last_hidden_state=pre_merge[-1],
        pooler_output=tuple(torch.split(merged, sizes)),  # items in grid order
        hidden_states=tuple(states) if output_hidden_states else None,
        deepstack_features=None
        if levels is None
        else tuple(tuple(torch.split(level, sizes)) for level in levels),
    )
    return features if return_dict else features.to_tuple()
