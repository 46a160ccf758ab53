"""What a forward of the model returns, and the causal-LM loss it computes from `labels`.

Shapes (letters as in docs/design.md, "Shape legend"): B, T, V.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .cache import KVCache

IGNORE_INDEX = -100  # labels at this value do not count (HF / PyTorch convention)


@dataclass
class ForwardOutput:
    logits: Tensor  # (B, T, V), or (B, logits_to_keep, V)
    positions: Tensor  # (3, B, T) the M-RoPE positions used
    rope_deltas: Tensor | None  # (B, 1) when positions were derived from the prompt (see positions.py)
    cache: KVCache | None  # the cache passed in (or made by use_cache=True), now holding these tokens too
    loss: Tensor | None = None  # () mean next-token cross entropy when `labels` were given
    # output_hidden_states: L + 1 tensors (B, T, E): the embeddings with the vision features inserted, then
    # each decoder layer's output, the last one after the final norm (as transformers returns them)
    hidden_states: tuple[Tensor, ...] | None = None
    # output_attentions: L tensors (B, H, T, K), each layer's softmax probabilities in the activation dtype
    attentions: tuple[Tensor, ...] | None = None

    def to_tuple(self) -> tuple:
        """transformers' `return_dict=False` form: (loss, logits, cache, hidden_states, attentions), the
        fields that are None left out, so `out[0]` is the loss with labels and the logits without."""
        fields = (self.loss, self.logits, self.cache, self.hidden_states, self.attentions)
        return tuple(value for value in fields if value is not None)


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross entropy in fp32: position t predicts labels[t + 1] (the shift happens here, as
    in transformers); labels equal to -100 do not count. All labels ignored gives NaN, as in torch/HF."""
    if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be an integer tensor shaped like input_ids, got {type(labels).__name__}"
        )
    if tuple(labels.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"labels must have the shape of input_ids {tuple(logits.shape[:2])}, got {tuple(labels.shape)}"
        )
    vocab = logits.shape[-1]
    labels = labels.to(logits.device, torch.int64)
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        raise ValueError(
            f"labels must be token ids in [0, {vocab}) or -100 (ignored), got e.g. {int(labels[bad][0])}"
        )
    shifted = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]  # (B, T): the token after each position
    return F.cross_entropy(logits.float().reshape(-1, vocab), shifted.reshape(-1), ignore_index=IGNORE_INDEX)
