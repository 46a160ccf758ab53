"""The whole vision-language model: vision tower + Qwen2 / Qwen3 decoder + lm_head.

Shapes (letters as in docs/design.md, "Shape legend"): B, T, K, V, E, N, M.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import dispatch
from .cache import Cache, KVCache
from .config import Config
from .deepstack import DeepStackFeatures
from .outputs import ForwardOutput, causal_lm_loss
from .positions import get_rope_index
from .text import TextAttention, TextModel, TiedLMHead
from .vision import VisionAttention, VisionTower, check_vision_inputs, vision_layout
from .vision_inputs import VisionInputs, check_mm_token_type_ids, one_vision_value
from .vision_qwen3 import Qwen3VisionTower, VisionFeatures


@dataclass(frozen=True)
class Prepared:
    """What `QwenVL.prepare` hands the decoder."""

    embeds: Tensor  # (B, T, E) token embeddings with the vision features written over the pad tokens
    positions: Tensor  # (3, B, T)
    rope_deltas: Tensor | None  # (B, 1) when derived from the prompt; None when positions were given
    key_valid: Tensor | None  # (B, K) over past + new tokens, None when nothing is masked
    deepstack: DeepStackFeatures | None = None  # Qwen3-VL with vision inputs: what decoder layers add


class QwenVL(nn.Module):
    """Vision tower (`visual`) + decoder (`text`) + `lm_head` (a `TiedLMHead` on the embeddings when the
    config ties them). Qwen3-VL models have the Qwen3 tower (`vision_qwen3`, with DeepStack mergers), the
    Qwen3 decoder (and MoE MLPs for Qwen3-VL-MoE) and DeepStack injections in the first decoder layers.

    `kernels` chooses the attention / rotary functions of every block: "torch", "triton" or "auto"
    (kernels on CUDA, torch elsewhere); None reads QWENVL_MIN_KERNELS (see `qwenvl_min.model.dispatch`).
    """

    def __init__(self, config: Config, *, kernels: str | None = None) -> None:
        super().__init__()
        self.config = config
        kernels = dispatch.resolve_kernels(kernels)
        if config.vision.family == "qwen3_vl":
            self.visual: nn.Module = Qwen3VisionTower(config.vision, kernels)
        else:
            self.visual = VisionTower(config.vision, kernels)
        self.text = TextModel(config.text, kernels, deepstack_layers=len(config.vision.deepstack_indexes))
        text = config.text
        self.lm_head: nn.Module = (
            TiedLMHead(self.text.embed_tokens)
            if text.tie_word_embeddings
            else nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        )
        # Set by `from_pretrained`: the checkpoint directory, and its generation_config.json as a
        # `qwenvl_min.generate.GenerationSettings` (the defaults of generation; None: greedy defaults).
        self.checkpoint_dir: Path | None = None
        self.generation_settings: Any = None

    def set_kernels(self, kernels: str | None) -> None:
        """Switch every attention module to the defaults of another kernel choice (this replaces any
        `attend` function assigned by hand)."""
        choice = dispatch.resolve_kernels(kernels)
        for module in self.modules():
            if isinstance(module, (VisionAttention, TextAttention)):
                module.set_kernels(choice)

    # ---- construction: delegates to qwenvl_min.hf, which reads checkpoints (and imports this module) -------
    @classmethod
    def from_hf(cls, config: Any, state_dict: Mapping[str, Tensor], *, share: bool = False) -> QwenVL:
        """Build from an HF config (a config.json dict or a transformers config object) and an HF state dict
        in either key naming (strict: every key mapped or dropped on purpose); see `qwenvl_min.hf.from_hf`.

        The weights are copied (detached); share=True uses the given tensors themselves (no copy).
        """
        from .. import hf

        return hf.from_hf(config, state_dict, share=share)

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike[str],
        *,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device | None = None,
        torch_dtype: str | torch.dtype | None = None,
        device_map: Any = None,
        attn_implementation: str | None = None,
        **unsupported: Any,
    ) -> QwenVL:
        """A model in eval mode from a Hugging Face checkpoint directory (either key naming, single file or
        sharded, flat or nested config.json), a Hub id, or one of our converted directories; memory-mapped
        and strict. See `qwenvl_min.hf.from_pretrained`.

        device defaults to the CPU. transformers' torch_dtype (= dtype), device_map (one device, "auto"
        included) and attn_implementation are taken (`qwenvl_min.hf.load_options`); any other transformers
        keyword (`unsupported`) is a one-line error naming what to use instead (`qwenvl_min.hf.keywords`)."""
        from .. import hf

        hf.refuse("from_pretrained", unsupported, _keywords(cls.from_pretrained))
        return hf.from_pretrained(
            path_or_hub_id,
            dtype=dtype,
            device=device,
            torch_dtype=torch_dtype,
            device_map=device_map,
            attn_implementation=attn_implementation,
        )

    # ---- taps: delegates to qwenvl_min.interp, which hooks into the module tree (and imports this module) --
    def taps(
        self,
        read: Iterable[str] = (),
        replace: Mapping[str, Any] | None = None,
        keep: str = "last",
    ) -> Any:
        """Read / replace internal tensors by name for the forwards run inside `with model.taps(...) as t:`;
        `t.cache` holds what the last forward read, `t.calls` every forward's with keep="all" (see
        `qwenvl_min.interp.taps`). Works the same on a tensor-parallel model."""
        from ..interp import taps

        return taps.Taps(self, read, replace, keep)

    def tap_names(self) -> list[str]:
        """Every tap name of this model (see `qwenvl_min.interp.taps`)."""
        from ..interp import taps

        return taps.tap_names(self)

    # ---- transformers' calls: delegates to qwenvl_min.hf, which keeps their conventions -----------------
    # These methods (and `from_pretrained`) end in `**unsupported`: the transformers keywords they do not
    # take, refused at once with a line saying what to use instead (`qwenvl_min.hf.keywords`), never passed
    # on. `__call__` does the same for `forward`, whose signature stays exact.
    def generate(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_grid_thw: Tensor | None = None,
        pixel_values_videos: Tensor | None = None,
        video_grid_thw: Tensor | None = None,
        second_per_grid_ts: Tensor | list[float] | None = None,
        mm_token_type_ids: Tensor | None = None,
        generation_config: Any = None,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        use_cache: bool | None = None,
        **unsupported: Any,
    ) -> Tensor:
        """transformers' `model.generate(**batch, max_new_tokens=...)`: prompt + new ids (B, T + n), n <= the
        length asked for, greedy or sampled as transformers' keywords say, the defaults from the checkpoint's
        generation_config.json (`self.generation_settings`). See `qwenvl_min.hf.generation`; any other
        transformers keyword (`unsupported`) is a one-line error naming what to use instead.

        `qwenvl_min.generate.generate(model, ...)` is the same loop with our own keywords (seed, stop_token_ids,
        settings, compile, on_token), returning the new ids only."""
        from .. import hf

        hf.refuse("generate", unsupported, _keywords(self.generate))
        vision = one_vision_value(
            None, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw, second_per_grid_ts
        )
        requested = {
            "max_new_tokens": max_new_tokens,
            "max_length": max_length,
            "do_sample": do_sample,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "repetition_penalty": repetition_penalty,
            "eos_token_id": eos_token_id,
            "pad_token_id": pad_token_id,
            "use_cache": use_cache,
        }
        return hf.generate(
            self, input_ids, attention_mask, vision, mm_token_type_ids, generation_config, requested
        )

    def get_image_features(
        self,
        pixel_values: Tensor,
        image_grid_thw: Tensor,
        *,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        **unsupported: Any,
    ) -> Any:
        """transformers' `get_image_features`: `.pooler_output` a tuple of (M_i, E) merged features per image,
        `.last_hidden_state` the (N, D) pre-merge features in pixel_values row order (transformers: window
        order on Qwen2.5-VL); see `qwenvl_min.hf.features`. Other transformers keywords: a one-line error."""
        from .. import hf

        hf.refuse("get_image_features", unsupported, _keywords(self.get_image_features))
        return hf.vision_features(
            self, pixel_values, image_grid_thw, "pixel_values", output_hidden_states, return_dict
        )

    def get_video_features(
        self,
        pixel_values_videos: Tensor,
        video_grid_thw: Tensor,
        *,
        output_hidden_states: bool = False,
        return_dict: bool = True,
        **unsupported: Any,
    ) -> Any:
        """transformers' `get_video_features`: as `get_image_features`, per video."""
        from .. import hf

        hf.refuse("get_video_features", unsupported, _keywords(self.get_video_features))
        return hf.vision_features(
            self,
            pixel_values_videos,
            video_grid_thw,
            "pixel_values_videos",
            output_hidden_states,
            return_dict,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """`nn.Module.__call__` (hooks, then `forward`), after one check of the keyword names: a keyword
        `forward` does not take, such as transformers' `past_key_values`, is a one-line error naming what to
        use instead (`qwenvl_min.hf.keywords`) rather than Python's "unexpected keyword argument". This is
        where `model(**processor_output, ...)` arrives; the keywords themselves pass on unchanged."""
        unknown = kwargs.keys() - _FORWARD_KEYWORDS
        if unknown:
            from .. import hf

            hf.refuse("forward", unknown, _FORWARD_KEYWORDS)
        return super().__call__(*args, **kwargs)

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
        second_per_grid_ts: Tensor | list[float] | None = None,
        mm_token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        cache: Cache | None = None,
        positions: Tensor | None = None,
        logits_to_keep: int = 0,
        vision: VisionInputs | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        use_cache: bool | None = None,
        return_dict: bool = True,
    ) -> ForwardOutput | tuple:
        """Logits for a prompt; left padding goes through attention_mask (1 valid, 0 pad).

        Takes every key of transformers' Qwen2-VL / Qwen2.5-VL / Qwen3-VL processor output and of ours
        (`model(**batch)`); the five vision keys become one `VisionInputs`, or pass one as `vision=`.
        `mm_token_type_ids` is checked against input_ids, `second_per_grid_ts` on Qwen2-VL is checked and
        not used (see `qwenvl_min.model.vision_inputs`). `labels` (B, T) adds `.loss`, the mean next-token
        cross entropy (shifted inside, -100 ignored), as transformers computes it.

        With a non-empty `cache`, input_ids are the new tokens only, attention_mask covers past + new
        tokens, and `positions` (3, B, T) must be given (see `positions.generation_positions`).
        `logits_to_keep` > 0 applies the lm_head to the last that many positions only (0: all): a prefill
        needs one, and at the real vocab (152k) the full projection costs more than the rest of it.

        transformers' keywords, with its meanings (docs/hf.md):
        - output_hidden_states: `.hidden_states`, L + 1 tensors (B, T, E): the embeddings with the vision
          features inserted, then each decoder layer's output, the last one after the final norm (so
          hidden_states[i] is tap `text.layers.{i-1}` for 0 < i < L, and hidden_states[L] is `text.norm`);
        - output_attentions: `.attentions`, L tensors (B, H, T, K): each layer's softmax probabilities, in
          the activation dtype, computed exactly (the materializing attention runs instead of `attend`);
        - use_cache: True starts a `KVCache` when none is given (returned in `.cache`), False refuses one;
        - return_dict=False: the tuple `ForwardOutput.to_tuple()` (loss, logits, cache, hidden_states,
          attentions, the None ones left out).
        """
        for name, flag in (
            ("output_hidden_states", output_hidden_states),
            ("output_attentions", output_attentions),
            ("return_dict", return_dict),
        ):
            if not isinstance(flag, bool):
                raise ValueError(
                    f"{name} must be True or False, got {flag!r} (to pick layers, index .hidden_states or "
                    "read them with model.taps)"
                )
        if use_cache is not None and not isinstance(use_cache, bool):
            raise ValueError(f"use_cache must be True, False or None, got {use_cache!r}")
        if use_cache is False and cache is not None:
            raise ValueError("use_cache=False but a cache was given; pass one or the other")
        if use_cache and cache is None:
            cache = KVCache(self.config.text.num_layers)
        vision = one_vision_value(
            vision, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw, second_per_grid_ts
        )
        if labels is not None and logits_to_keep:
            raise ValueError(
                "labels need the logits of every position; leave logits_to_keep at 0 with labels"
            )
        prepared = self.prepare(
            input_ids,
            vision,
            attention_mask=attention_mask,
            mm_token_type_ids=mm_token_type_ids,
            cache=cache,
            positions=positions,
        )
        hidden_states: list[Tensor] | None = [] if output_hidden_states else None
        attentions: list[Tensor] | None = [] if output_attentions else None
        hidden = self.text(
            prepared.embeds,
            prepared.positions,
            prepared.key_valid,
            cache,
            prepared.deepstack,
            hidden_states=hidden_states,
            attentions=attentions,
        )  # (B, T, E)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None if labels is None else causal_lm_loss(logits, labels)
        out = ForwardOutput(
            logits,
            prepared.positions,
            prepared.rope_deltas,
            cache,
            loss,
            None if hidden_states is None else tuple(hidden_states),
            None if attentions is None else tuple(attentions),
        )
        return out if return_dict else out.to_tuple()

    def prepare(
        self,
        input_ids: Tensor,
        vision: VisionInputs,
        *,
        attention_mask: Tensor | None = None,
        mm_token_type_ids: Tensor | None = None,
        cache: Cache | None = None,
        positions: Tensor | None = None,
    ) -> Prepared:
        """The data-dependent part of `forward`, before the decoder: checks, token embeddings with the
        vision features inserted, positions (and, for Qwen3-VL, the DeepStack features and their slots).

        It reads device values back (checks, vision layout, positions), so it stays eager; what follows
        (`text`, `lm_head`) has no host sync and compiles (`qwenvl_min.generate.compiled`)."""
        cfg = self.config
        past = cache.length if isinstance(cache, KVCache) else 0
        self._check_token_inputs(input_ids, attention_mask, past)
        if mm_token_type_ids is not None:
            check_mm_token_type_ids(cfg, input_ids, mm_token_type_ids)
        seconds = vision.for_positions(cfg)
        embeds = self.text.embed_tokens(input_ids)  # (B, T, E)
        deepstack = None
        # decoding (a cache, no vision inputs): a generated pad id is a plain token, as in transformers
        if not (past and vision.empty):
            embeds, deepstack = self._insert_vision(input_ids, embeds, vision)
        deltas = None
        if positions is None:
            if past:
                raise ValueError(
                    "decoding with a non-empty cache needs explicit positions (see qwenvl_min.generate)"
                )
            new_mask = None if attention_mask is None else attention_mask[:, -input_ids.shape[1] :]
            positions, deltas = get_rope_index(
                cfg, input_ids, vision.image_grid_thw, vision.video_grid_thw, seconds, new_mask
            )
        key_valid = None if attention_mask is None or bool(attention_mask.all()) else attention_mask
        return Prepared(embeds, positions, deltas, key_valid, deepstack)

    def _check_token_inputs(self, input_ids: Tensor, attention_mask: Tensor | None, past: int) -> None:
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
        if input_ids.numel() == 0:  # else a reshape deep in the decoder fails
            raise ValueError(
                f"input_ids hold no tokens (shape {tuple(input_ids.shape)}); give at least one token per row"
            )
        vocab = self.config.text.vocab_size
        if bool(((input_ids < 0) | (input_ids >= vocab)).any()):  # else nn.Embedding's "index out of range"
            raise ValueError(
                f"input_ids must be token ids in [0, {vocab}) (vocab_size), got values in "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]"
            )
        if attention_mask is not None:
            expected = (input_ids.shape[0], past + input_ids.shape[1])
            if attention_mask.dim() != 2 or tuple(attention_mask.shape) != expected:
                raise ValueError(
                    f"attention_mask must have shape (batch, past + new tokens) = {expected}, "
                    f"got {tuple(attention_mask.shape)}"
                )
            self._check_masked_vision(input_ids, attention_mask[:, past:])

    def _check_masked_vision(self, input_ids: Tensor, mask: Tensor) -> None:
        """A vision pad token under attention_mask 0 gets no feature and no position (positions skip padded
        slots), which would surface as a grid-count mismatch: name the row instead."""
        cfg = self.config
        pads = (input_ids == cfg.image_token_id) | (input_ids == cfg.video_token_id)  # (B, T)
        hidden = pads & (mask == 0)
        if not bool(hidden.any()):
            return
        row = int(hidden.any(dim=1).nonzero()[0])
        count = int(hidden[row].sum())
        state = (
            "is all 0 (the row holds no token)"
            if not bool(mask[row].any())
            else f"is 0 at {count} of its vision pad tokens"
        )
        raise ValueError(
            f"attention_mask row {row} {state}, but input_ids row {row} holds {int(pads[row].sum())} image / "
            "video pad tokens: a masked-out pad token gets no vision feature and no position; set the mask to 1 "
            "over the row's tokens, or drop the row and its images / videos from the batch"
        )

    def _insert_vision(
        self, input_ids: Tensor, embeds: Tensor, vision: VisionInputs
    ) -> tuple[Tensor, DeepStackFeatures | None]:
        """Run the tower once over images then videos and write the merged features over the pad tokens;
        embeds (B, T, E) with them, and the DeepStack levels at the same slots (Qwen3-VL; else None)."""
        cfg = self.config
        parts = []
        for kind, pixels, grid, token in vision.kinds(cfg):
            slots = input_ids == token
            count = int(slots.sum())
            if pixels is None:
                if count:
                    raise ValueError(
                        f"input_ids hold {count} {'image' if token == cfg.image_token_id else 'video'} "
                        f"pad tokens (id {token}) but no {kind} were given"
                    )
                continue
            check_vision_inputs(cfg.vision, pixels, grid, kind)  # the one check of these inputs
            merged = int(grid.prod(dim=1).sum()) // cfg.vision.merge_size**2
            if count != merged:
                raise ValueError(
                    f"input_ids hold {count} pad tokens (id {token}) but {kind} with grids "
                    f"{grid.tolist()} give {merged} merged features; expand each placeholder to t*h*w/"
                    f"{cfg.vision.merge_size**2} tokens"
                )
            parts.append((pixels, grid, slots))
        if not parts:
            return embeds, None
        pixels = torch.cat([p for p, _, _ in parts])
        grids = torch.cat([g for _, g, _ in parts])
        layout = vision_layout(cfg.vision, grids, pixels.device)
        out = self.visual(pixels, grids, layout=layout)  # (M_images + M_videos, E), or VisionFeatures
        features, levels = (out.merged, out.deepstack) if isinstance(out, VisionFeatures) else (out, ())
        # images' pad tokens first, then the videos', each row-major over the flattened batch
        slots = torch.cat([s.reshape(-1).nonzero().squeeze(1) for _, _, s in parts])
        flat = embeds.reshape(-1, embeds.shape[-1]).index_copy(
            0, slots, features.to(embeds.dtype)
        )  # (B*T, E)
        deepstack = DeepStackFeatures(slots, levels) if levels else None
        return flat.view(embeds.shape), deepstack


def _keywords(function: Any) -> frozenset[str]:
    """The keyword names a function takes (for the spelling hints of `qwenvl_min.hf.keywords`)."""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = {p.name for p in inspect.signature(function).parameters.values() if p.kind in kinds}
    return frozenset(names - {"self"})


_FORWARD_KEYWORDS = _keywords(QwenVL.forward)
