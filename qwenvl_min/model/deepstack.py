"""DeepStack (Qwen3-VL): vision features from intermediate tower blocks added to the decoder's hidden
states at the visual tokens, after its first layers.

Data flow: the tower's DeepStack mergers give one (M, E) level per entry of `deepstack_indexes`
(`vision_qwen3`); `QwenVL.prepare` pairs them with the flat positions of the image / video pad tokens
(`DeepStackFeatures`); decoder layer k ends with `deepstack` (a `DeepStackInjection`), which adds level k
at those positions. Only the prefill carries features (decode steps have no vision inputs), so the module
returns its input unchanged there. The module makes both sides readable as taps:
`text.layers.{k}.deepstack.input` is the layer's output before the addition, `text.layers.{k}` (and
`text.layers.{k}.deepstack`) after it; the features themselves are `visual.deepstack_mergers.{k}`.

Shapes (letters as in docs/design.md, "Shape legend"): B, T, E, M (here: visual pad tokens of the batch).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class DeepStackFeatures:
    """The DeepStack levels of one prefill and where they go."""

    slots: Tensor  # (M,) int64: flat index into (B * T) of each visual pad token, in feature-row order
    levels: tuple[Tensor, ...]  # per level k, (M, E): added after decoder layer k

    def level(self, layer: int) -> tuple[Tensor, Tensor] | None:
        """(slots, features) for decoder layer `layer`, or None when it receives none."""
        return (self.slots, self.levels[layer]) if layer < len(self.levels) else None


class DeepStackInjection(nn.Module):
    """hidden (B, T, E) + features (M, E) at the flat positions `slots` (in the hidden dtype: the sum is
    rounded there, as transformers adds them); no features: hidden unchanged."""

    def forward(self, hidden: Tensor, level: tuple[Tensor, Tensor] | None) -> Tensor:
        if level is None:
            return hidden
        slots, features = level
        flat = hidden.reshape(-1, hidden.shape[-1])  # (B, T, E) -> (B*T, E)
        return flat.index_add(0, slots, features.to(hidden.dtype)).view(hidden.shape)
