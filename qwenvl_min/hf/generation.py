"""transformers' `model.generate(**batch, max_new_tokens=...)`: its keywords and GenerationConfig fields as
one `GenerationSettings`, decoded by `qwenvl_min.generate.generate`; returns prompt + new ids (B, T + n),
as transformers does (`qwenvl_min.generate.generate` returns the new ids only).

Settings are layered as transformers 5.24 layers them: the call's keywords over the fields `generation_config`
sets (a GenerationConfig: its fields that are not None; or a dict of them) over the model's defaults
(`model.generation_settings`, the checkpoint's generation_config.json) over transformers' global defaults.

- do_sample decides greedy or sampling; temperature / top_k / top_p apply only when sampling (as in
  transformers, they are ignored otherwise). Sampling on top of greedy defaults starts from transformers'
  defaults temperature 1, top_k 50, top_p 1; top_k 0 switches that filter off.
- eos_token_id: an id or a list of ids, each one stops its row. Finished rows are filled with pad_token_id,
  else (as in transformers) the first stop id.
- Length: max_new_tokens, else max_length (which counts the prompt), else the defaults' max_new_tokens. With
  none of them set transformers would stop at 20 tokens in total, less than a prompt with an image holds:
  that is an error here.
- use_cache: either value gives the same tokens (decoding always reads the KV cache).

A GenerationConfig field with no counterpart here is refused when it is set to anything but transformers'
neutral default (num_beams=4 is an error, num_beams=1 is fine); metadata fields are ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..generate.loop import generate as generate_new_tokens
from ..generate.settings import GenerationSettings, model_defaults
from ..model.qwenvl import QwenVL
from ..model.vision_inputs import VisionInputs
from .keywords import GENERATE, UnsupportedKeyword

TAKEN = (
    "max_new_tokens",
    "max_length",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "eos_token_id",
    "pad_token_id",
    "use_cache",
)
# GenerationConfig fields that say nothing about decoding a decoder-only model
METADATA = (
    "transformers_version",
    "_from_model_config",
    "_commit_hash",
    "bos_token_id",
    "decoder_start_token_id",
)
# transformers 5.24's global defaults of the fields we do not implement: at these values they do nothing
NEUTRAL: dict[str, Any] = {
    "min_length": 0,
    "num_beams": 1,
    "num_beam_groups": 1,
    "early_stopping": False,
    "length_penalty": 1.0,
    "diversity_penalty": 0.0,
    "num_return_sequences": 1,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "encoder_repetition_penalty": 1.0,
    "remove_invalid_values": False,
    "renormalize_logits": False,
    "output_scores": False,
    "output_logits": False,
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict_in_generate": False,
    "num_assistant_tokens": 20,
    "num_assistant_tokens_schedule": "constant",
    "assistant_confidence_threshold": 0.4,
    "assistant_lookbehind": 10,
    "target_lookbehind": 10,
}
# transformers' defaults for sampling when neither the call nor the model's defaults set them
SAMPLING_DEFAULTS = (1.0, 50, 1.0)  # temperature, top_k, top_p


def generate(
    model: QwenVL,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    vision: VisionInputs,
    mm_token_type_ids: Tensor | None,
    generation_config: Any,
    requested: Mapping[str, Any],
) -> Tensor:
    """`QwenVL.generate`: prompt + new ids (B, T + n). `requested` maps the call's generation keywords (names
    in TAKEN) to their values, None for the ones not given."""
    fields = config_fields(generation_config)
    fields.update({name: value for name, value in requested.items() if value is not None})
    use_cache = fields.pop("use_cache", True)
    if not isinstance(use_cache, bool):
        raise ValueError(f"use_cache must be True or False, got {use_cache!r}")
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be an integer tensor of shape (batch, tokens)")
    settings = settings_for(model_defaults(model), fields, input_ids.shape[1], model.config.eos_token_id)
    new = generate_new_tokens(
        model,
        input_ids,
        attention_mask=attention_mask,
        vision=vision,
        mm_token_type_ids=mm_token_type_ids,
        settings=settings,
    )  # (B, n)
    return torch.cat([input_ids.to(new.device), new], dim=1)


def config_fields(generation_config: Any) -> dict[str, Any]:
    """The fields a transformers GenerationConfig (or a dict of its fields) sets, checked against what we
    implement: metadata and neutral values dropped, anything else not in TAKEN refused."""
    if generation_config is None:
        return {}
    if isinstance(generation_config, GenerationSettings):
        raise TypeError(
            "generation_config takes a transformers GenerationConfig (or a dict of its fields); pass a "
            "GenerationSettings to qwenvl_min.generate.generate(model, ..., settings=...) instead"
        )
    if isinstance(generation_config, Mapping):
        given = dict(generation_config)
    elif callable(getattr(generation_config, "to_dict", None)):
        given = generation_config.to_dict()
    else:
        raise TypeError(
            "generation_config must be a transformers GenerationConfig or a dict of its fields, got "
            f"{type(generation_config).__name__}"
        )
    fields = {}
    for name, value in given.items():
        if value is None or name in METADATA or (name in NEUTRAL and value == NEUTRAL[name]):
            continue
        if name not in TAKEN:
            why = GENERATE.get(name, "not implemented")
            raise UnsupportedKeyword(
                f"generation_config sets {name}={value!r}, which QwenVL.generate does not take ({why})"
            )
        fields[name] = value
    return fields


def settings_for(
    base: GenerationSettings, fields: Mapping[str, Any], prompt_length: int, config_eos: int
) -> GenerationSettings:
    """`base` (the model's defaults) with transformers' generation `fields` put over it (see the module
    docstring); the values are checked by the decoding loop."""
    sampling_before = base.temperature > 0
    do_sample = fields.get("do_sample", sampling_before)
    if not isinstance(do_sample, bool):
        raise ValueError(f"do_sample must be True or False, got {do_sample!r}")
    if do_sample:
        before = (base.temperature, base.top_k, base.top_p) if sampling_before else SAMPLING_DEFAULTS
        temperature = fields.get("temperature", before[0])
        top_k = fields.get("top_k", before[1])
        top_p = fields.get("top_p", before[2])
        if temperature == 0:
            raise ValueError("do_sample=True needs temperature > 0; for greedy decoding pass do_sample=False")
        top_k = None if top_k == 0 else top_k  # transformers: top_k 0 switches the filter off
    else:
        temperature, top_k, top_p = 0.0, None, None
    stops = base.stop_token_ids
    if "eos_token_id" in fields:
        stops = _token_ids(fields["eos_token_id"])
    pad = fields.get("pad_token_id", base.pad_token_id)
    if pad is None:  # transformers fills finished rows with the first stop id
        pad = stops[0] if stops else config_eos
    penalty = fields.get("repetition_penalty", base.repetition_penalty)
    return dataclasses.replace(
        base,
        max_new_tokens=_new_tokens(fields, base, prompt_length),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=None if penalty == 1 else penalty,
        stop_token_ids=stops,
        pad_token_id=pad,
    )


def _new_tokens(fields: Mapping[str, Any], base: GenerationSettings, prompt_length: int) -> int:
    if "max_new_tokens" in fields:
        return fields["max_new_tokens"]
    if "max_length" in fields:
        max_length = fields["max_length"]
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= prompt_length:
            raise ValueError(
                f"max_length={max_length!r} leaves no room for new tokens after the prompt's {prompt_length} "
                "tokens (max_length counts the prompt, as in transformers); pass max_new_tokens=N"
            )
        return max_length - prompt_length
    if base.max_new_tokens is not None:
        return base.max_new_tokens
    raise ValueError(
        "model.generate needs max_new_tokens=N (or max_length=N, prompt included); transformers' default "
        "max_length=20 counts the prompt and is shorter than a prompt with an image"
    )


def _token_ids(value: object) -> tuple[int, ...]:
    ids = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(ids, (list, tuple)) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids
    ):
        raise ValueError(f"eos_token_id must be a token id or a list of ids, got {value!r}")
    return tuple(ids)
