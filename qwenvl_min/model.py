"""The whole vision-language model: vision tower + Qwen2 decoder + lm_head.

Shape legend: B batch, T tokens, V vocab, E LLM width, N patch rows, M merged vision tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Config
from .positions import get_rope_index
from .taps import Replacement, Taps, tap_names
from .text import KVCache, TextModel
from .vision import VisionTower, check_vision_inputs


@dataclass
class ForwardOutput:
    logits: Tensor  # (B, T, V)
    positions: Tensor  # (3, B, T) the M-RoPE positions used
    rope_deltas: Tensor | None  # (B, 1) when positions were derived from the prompt (see positions.py)


class QwenVL(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.visual = VisionTower(config.vision)
        self.text = TextModel(config.text)
        tied = config.text.tie_word_embeddings
        self.lm_head = (
            None if tied else nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        )

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, config: dict[str, Any], state_dict: Mapping[str, Tensor]) -> QwenVL:
        """Build from an HF config.json dict and an HF state dict in either key layout (strict)."""
        from .weights_convert import hf_state_dict_to_ours

        cfg = Config.from_hf(config)
        ours = hf_state_dict_to_ours(cfg, state_dict)
        with torch.device("meta"):
            model = cls(cfg)
        model.load_state_dict(ours, strict=True, assign=True)
        return model.eval()

    def taps(self, read: Iterable[str] = (), replace: Mapping[str, Replacement] | None = None) -> Taps:
        """A tap set for one `run`/`forward` call; after the call, `taps.cache` holds what was read."""
        return Taps(self.config, read, replace)

    def tap_names(self) -> list[str]:
        return tap_names(self.config)

    # ---- forward --------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_grid_thw: Tensor | None = None,
        pixel_values_videos: Tensor | None = None,
        video_grid_thw: Tensor | None = None,
        second_per_grid_ts: Tensor | None = None,
        taps: Taps | None = None,
    ) -> Tensor:
        """Logits (B, T, V) for a prompt. Left padding goes through attention_mask (1 valid, 0 pad)."""
        return self.run(
            input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            second_per_grid_ts=second_per_grid_ts,
            taps=taps,
        ).logits

    def run(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_grid_thw: Tensor | None = None,
        pixel_values_videos: Tensor | None = None,
        video_grid_thw: Tensor | None = None,
        second_per_grid_ts: Tensor | None = None,
        taps: Taps | None = None,
        cache: KVCache | None = None,
        positions: Tensor | None = None,
        last_only: bool = False,
    ) -> ForwardOutput:
        """The full forward. With a non-empty `cache`, input_ids are the new tokens only, attention_mask
        covers past + new tokens, and `positions` (3, B, T) must be given (see
        `positions.generation_positions`). `last_only` applies the lm_head to the last position only
        (logits (B, 1, V)): a prefill needs no more, and at the real vocab (152k) the full projection
        costs more than the rest of it."""
        cfg = self.config
        self._check_token_inputs(input_ids, attention_mask, cache)
        if cfg.model_type == "qwen2_vl" and second_per_grid_ts is not None:
            raise ValueError(
                "second_per_grid_ts only applies to Qwen2.5-VL; Qwen2-VL videos step one position per frame"
            )
        embeds = self.text.embed_tokens(input_ids)  # (B, T, E)
        embeds = self._insert_vision(
            input_ids, embeds, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw, taps
        )
        deltas = None
        past = 0 if cache is None else cache.length
        if positions is None:
            if past:
                raise ValueError(
                    "decoding with a non-empty cache needs explicit positions (see qwenvl_min.generate)"
                )
            new_mask = None if attention_mask is None else attention_mask[:, -input_ids.shape[1] :]
            positions, deltas = get_rope_index(
                cfg, input_ids, image_grid_thw, video_grid_thw, second_per_grid_ts, new_mask
            )
        key_valid = None if attention_mask is None or bool(attention_mask.all()) else attention_mask
        hidden = self.text(embeds, positions, key_valid, cache, taps)
        if last_only:
            hidden = hidden[:, -1:]
        weight = self.text.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return ForwardOutput(F.linear(hidden, weight), positions, deltas)

    def _check_token_inputs(
        self, input_ids: Tensor, attention_mask: Tensor | None, cache: KVCache | None
    ) -> None:
        if (
            not isinstance(input_ids, Tensor)
            or input_ids.dim() != 2
            or input_ids.dtype.is_floating_point
            or input_ids.dtype.is_complex
            or input_ids.dtype == torch.bool
        ):
            got = (
                f"{input_ids.dtype} {tuple(input_ids.shape)}"
                if isinstance(input_ids, Tensor)
                else type(input_ids)
            )
            raise ValueError(f"input_ids must be an integer tensor of shape (batch, tokens), got {got}")
        vocab = self.config.text.vocab_size
        if bool(((input_ids < 0) | (input_ids >= vocab)).any()):  # else nn.Embedding's "index out of range"
            raise ValueError(
                f"input_ids must be token ids in [0, {vocab}) (vocab_size), got values in "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]"
            )
        if attention_mask is not None:
            past = 0 if cache is None else cache.length
            expected = (input_ids.shape[0], past + input_ids.shape[1])
            if attention_mask.dim() != 2 or tuple(attention_mask.shape) != expected:
                raise ValueError(
                    f"attention_mask must have shape (batch, past + new tokens) = {expected}, "
                    f"got {tuple(attention_mask.shape)}"
                )

    def _insert_vision(
        self,
        input_ids: Tensor,
        embeds: Tensor,
        pixel_values: Tensor | None,
        image_grid_thw: Tensor | None,
        pixel_values_videos: Tensor | None,
        video_grid_thw: Tensor | None,
        taps: Taps | None,
    ) -> Tensor:
        """Run the tower once over images then videos and write the merged features over the pad tokens."""
        cfg = self.config
        parts = []
        for kind, pixels, grid, token in (
            ("pixel_values", pixel_values, image_grid_thw, cfg.image_token_id),
            ("pixel_values_videos", pixel_values_videos, video_grid_thw, cfg.video_token_id),
        ):
            grid_name = "image_grid_thw" if kind == "pixel_values" else "video_grid_thw"
            if (pixels is None) != (grid is None):
                given, missing = (kind, grid_name) if grid is None else (grid_name, kind)
                raise ValueError(f"{given} was given without {missing}; pass both or neither")
            slots = input_ids == token
            if pixels is None:
                if slots.any():
                    raise ValueError(
                        f"input_ids hold {int(slots.sum())} {'image' if token == cfg.image_token_id else 'video'} "
                        f"pad tokens (id {token}) but no {kind} were given"
                    )
                continue
            check_vision_inputs(cfg.vision, pixels, grid, kind)
            merged = int(grid.prod(dim=1).sum()) // cfg.vision.merge_size**2
            if int(slots.sum()) != merged:
                raise ValueError(
                    f"input_ids hold {int(slots.sum())} pad tokens (id {token}) but {kind} with grids "
                    f"{grid.tolist()} give {merged} merged features; expand each placeholder to t*h*w/"
                    f"{cfg.vision.merge_size**2} tokens"
                )
            parts.append((pixels, grid, slots))
        if not parts:
            return embeds
        pixels = torch.cat([p.to(self.visual.patch_embed.weight.dtype) for p, _, _ in parts])
        grids = torch.cat([g for _, g, _ in parts])
        features = self.visual.run(pixels, grids, taps).to(embeds.dtype)  # (M_images + M_videos, E)
        embeds = embeds.clone()
        start = 0
        for _, _, slots in parts:
            count = int(slots.sum())
            embeds[slots] = features[start : start + count]  # row-major over the flattened batch
            start += count
        return embeds

    @staticmethod
    def new_cache(config: Config) -> KVCache:
        return KVCache(config.text.num_layers)
