"""Generation settings as one value: a checkpoint's `generation_config.json` defaults, and a call's overrides.

`GenerationSettings` is what the decoding loop reads; `generate` / `stream` build it once from the model's
defaults (`model.generation_settings`, set by `from_pretrained`) and the keyword arguments of the call.

Reading `generation_config.json` follows transformers: eos_token_id may be a list (every id stops);
do_sample false is greedy (its top_k / top_p do not apply); a missing sampling field takes transformers'
own default (temperature 1, top_k 50, top_p 1); beam search is refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils.settings_files import SettingsError, positive_number, read_json_object

GENERATION_FILE = "generation_config.json"


@dataclass(frozen=True)
class GenerationSettings:
    """How to pick and when to stop. None = not set (the model's default, then the built-in one)."""

    max_new_tokens: int | None = None
    temperature: float = 0.0  # 0: greedy (argmax)
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None  # None or 1: no penalty
    stop_token_ids: tuple[int, ...] | None = None  # None: the config's eos
    pad_token_id: int | None = None  # None: the config's bos (Qwen's <|endoftext|>)
    seed: int | None = None  # None: the global RNG
    source: str = "defaults"  # the file these came from

    def with_overrides(
        self,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        stop_token_ids: tuple[int, ...] | list[int] | None = None,
        pad_token_id: int | None = None,
        seed: int | None = None,
    ) -> GenerationSettings:
        """These settings with every argument that is not None put in. temperature=0 (greedy) given here
        also drops these settings' top_k / top_p (transformers ignores them without do_sample); top_k /
        top_p given with it stay, and are refused by the sampling checks."""
        given: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
            "repetition_penalty": repetition_penalty,
            "stop_token_ids": None if stop_token_ids is None else tuple(stop_token_ids),
            "pad_token_id": pad_token_id,
            "seed": seed,
        }
        changes = {key: value for key, value in given.items() if value is not None}
        merged = dataclasses.replace(self, **changes)
        if temperature == 0:
            merged = dataclasses.replace(merged, top_k=top_k, top_p=top_p)
        return merged


def model_defaults(model: Any) -> GenerationSettings:
    """The model's generation defaults (from its checkpoint), or the built-in greedy ones."""
    settings = getattr(model, "generation_settings", None)
    return settings if isinstance(settings, GenerationSettings) else GenerationSettings()


def generation_settings(directory: str | Path) -> GenerationSettings:
    """`generation_config.json` of a checkpoint directory; the greedy defaults when it has none."""
    path = Path(directory) / GENERATION_FILE
    data = read_json_object(path)
    if data is None:
        return GenerationSettings()
    where = str(path)
    eos = data.get("eos_token_id")
    eos_ids = [eos] if isinstance(eos, int) and not isinstance(eos, bool) else eos
    if eos_ids is not None and (
        not isinstance(eos_ids, list) or not all(isinstance(i, int) and i >= 0 for i in eos_ids)
    ):
        raise SettingsError(f"{where}: eos_token_id must be an id or a list of ids, got {eos!r}")
    pad = data.get("pad_token_id")
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 0):
        raise SettingsError(f"{where}: pad_token_id must be a token id, got {pad!r}")
    for key in ("num_beams", "num_beam_groups"):
        if data.get(key) not in (None, 1):
            raise SettingsError(f"{where}: {key}={data[key]!r} (beam search) is not supported; set it to 1")
    penalty = positive_number(data, "repetition_penalty", where, None, integer=False)
    sampling: dict[str, Any] = {}
    if data.get("do_sample"):
        # transformers' defaults when a sampling field is missing: temperature 1, top_k 50, top_p 1
        sampling = dict(
            temperature=float(positive_number(data, "temperature", where, 1.0, integer=False)),
            top_k=None if data.get("top_k", 50) == 0 else positive_number(data, "top_k", where, 50),  # 0: off
            top_p=float(positive_number(data, "top_p", where, 1.0, integer=False)),
        )
    return GenerationSettings(
        stop_token_ids=None if eos_ids is None else tuple(eos_ids),
        pad_token_id=pad,
        repetition_penalty=None if penalty == 1 else penalty,
        source=where,
        **sampling,
    )
