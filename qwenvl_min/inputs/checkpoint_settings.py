"""A checkpoint's own settings: processor budgets, generation defaults, chat template — read from its files.

Which file wins follows transformers' loaders, so our defaults equal what `AutoProcessor.from_pretrained`
and `model.generate` use for the same directory:
- images: `processor_config.json` ["image_processor"] (transformers-5 saves), else
  `preprocessor_config.json`, else the class defaults (`qwenvl_min.inputs.preprocess`);
- videos: `processor_config.json` ["video_processor"], else `video_preprocessor_config.json`, else
  `preprocessor_config.json` (published Qwen2.5-VL checkpoints have no video file, so their *image*
  budget, max_pixels 12845056, applies to every frame), else the class defaults;
- pixel budget: `size` {"shortest_edge", "longest_edge"} overridden by legacy `min_pixels` / `max_pixels`;
- generation: `generation_config.json` (eos_token_id may be a list: every id stops; do_sample false is
  greedy; transformers' own defaults for missing fields);
- chat template: `chat_template.jinja`, else `chat_template.json`, else `processor_config.json`'s
  "chat_template", else `tokenizer_config.json`'s.
Settings our pipeline does not implement (another resample filter, other normalization constants, no
rescale, a per-frame pixel cap) are refused with the file and field named, never ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .preprocess import (
    IMAGE_MAX_PIXELS,
    IMAGE_MEAN,
    IMAGE_MIN_PIXELS,
    IMAGE_STD,
    MERGE_SIZE,
    PATCH_SIZE,
    TEMPORAL_PATCH_SIZE,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
)

PROCESSOR_FILE = "processor_config.json"
IMAGE_FILE = "preprocessor_config.json"
VIDEO_FILE = "video_preprocessor_config.json"
GENERATION_FILE = "generation_config.json"
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, the only filter our processor (and the models' training) uses


class SettingsError(ValueError):
    """A checkpoint's processor / generation / template file asks for something we cannot do."""


@dataclass(frozen=True)
class VisionSettings:
    """Image or video processor settings (the keyword arguments of `preprocess_image` / `preprocess_video`)."""

    min_pixels: int
    max_pixels: int
    patch_size: int = PATCH_SIZE
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE
    merge_size: int = MERGE_SIZE
    sample_fps: float | None = None  # videos only: frames kept per second when the file says do_sample_frames
    num_frames: int | None = None  # videos only: a fixed frame count when do_sample_frames
    min_frames: int = 4
    max_frames: int = 768
    source: str = "defaults"  # the file these came from


@dataclass(frozen=True)
class GenerationSettings:
    """`generation_config.json` as our `generate` arguments (temperature 0 = greedy)."""

    stop_token_ids: tuple[int, ...] | None = None
    pad_token_id: int | None = None
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    source: str = "defaults"


def _json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SettingsError(f"{path} is not valid JSON ({err}); copy it again from the checkpoint") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path} should hold a JSON object")
    return data


def _section(directory: Path, key: str, files: tuple[str, ...]) -> tuple[dict[str, Any] | None, str]:
    nested = _json(directory / PROCESSOR_FILE)
    if nested is not None and isinstance(nested.get(key), dict):
        return nested[key], f"{directory / PROCESSOR_FILE} [{key}]"
    for name in files:
        data = _json(directory / name)
        if data is not None:
            return data, str(directory / name)
    return None, "defaults"


def _number(data: dict[str, Any], key: str, where: str, default: Any, integer: bool = True) -> Any:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, float) and integer and value.is_integer():
        value = int(value)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value <= 0:
        raise SettingsError(
            f"{where}: {key} must be a positive {'integer' if integer else 'number'}, got {value!r}"
        )
    return value


def _check_pipeline(data: dict[str, Any], where: str) -> None:
    """The fixed parts of our pipeline: bicubic resize, 1/255 rescale, CLIP mean/std, RGB."""
    for key in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
        if data.get(key) is False:
            raise SettingsError(f"{where}: {key}=false is not supported (the models were trained with it on)")
    if data.get("resample") not in (None, BICUBIC):
        raise SettingsError(f"{where}: resample {data['resample']!r} is not supported; ours is bicubic (3)")
    factor = data.get("rescale_factor")
    if factor is not None and not math.isclose(factor, 1 / 255, rel_tol=1e-6):
        raise SettingsError(f"{where}: rescale_factor {factor!r} is not supported; ours is 1/255")
    for key, ours in (("image_mean", IMAGE_MEAN), ("image_std", IMAGE_STD)):
        value = data.get(key)
        if value is not None and (
            not isinstance(value, list)
            or len(value) != 3
            or not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(value, ours))
        ):
            raise SettingsError(f"{where}: {key} {value!r} is not supported; ours is the CLIP {list(ours)}")
    if data.get("cap_pixels_per_frame") is not None:
        raise SettingsError(f"{where}: cap_pixels_per_frame is not supported; lower max_pixels instead")


def _vision(data: dict[str, Any] | None, where: str, lo: int, hi: int, video: bool) -> VisionSettings:
    if data is None:
        return VisionSettings(min_pixels=lo, max_pixels=hi)
    _check_pipeline(data, where)
    size = data.get("size") if isinstance(data.get("size"), dict) else {}
    lo = _number(size, "shortest_edge", where, _number(size, "min_pixels", where, lo))
    hi = _number(size, "longest_edge", where, _number(size, "max_pixels", where, hi))
    sampling: dict[str, Any] = {}
    if video and data.get("do_sample_frames"):
        sampling = dict(
            sample_fps=_number(data, "fps", where, None, integer=False),
            num_frames=_number(data, "num_frames", where, None),
        )
        if sampling["sample_fps"] is None and sampling["num_frames"] is None:
            raise SettingsError(f"{where}: do_sample_frames is true but neither fps nor num_frames is set")
    return VisionSettings(
        min_pixels=_number(data, "min_pixels", where, lo),
        max_pixels=_number(data, "max_pixels", where, hi),
        patch_size=_number(data, "patch_size", where, PATCH_SIZE),
        temporal_patch_size=_number(data, "temporal_patch_size", where, TEMPORAL_PATCH_SIZE),
        merge_size=_number(data, "merge_size", where, MERGE_SIZE),
        min_frames=_number(data, "min_frames", where, 4),
        max_frames=_number(data, "max_frames", where, 768),
        source=where,
        **sampling,
    )


def image_settings(directory: str | Path) -> VisionSettings:
    """The image processor settings of a checkpoint directory (class defaults when it has none)."""
    data, where = _section(Path(directory), "image_processor", (IMAGE_FILE,))
    return _vision(data, where, IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS, video=False)


def video_settings(directory: str | Path) -> VisionSettings:
    """The video processor settings (falling back to the image processor's file, as transformers does)."""
    data, where = _section(Path(directory), "video_processor", (VIDEO_FILE, IMAGE_FILE))
    return _vision(data, where, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS, video=True)


def generation_settings(directory: str | Path) -> GenerationSettings:
    """`generation_config.json` of a checkpoint directory; the greedy defaults when it has none."""
    path = Path(directory) / GENERATION_FILE
    data = _json(path)
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
    penalty = _number(data, "repetition_penalty", where, None, integer=False)
    sampling: dict[str, Any] = {}
    if data.get("do_sample"):
        # transformers' defaults when a sampling field is missing: temperature 1, top_k 50, top_p 1
        sampling = dict(
            temperature=float(_number(data, "temperature", where, 1.0, integer=False)),
            top_k=None if data.get("top_k", 50) == 0 else _number(data, "top_k", where, 50),  # 0: off
            top_p=float(_number(data, "top_p", where, 1.0, integer=False)),
        )
    return GenerationSettings(
        stop_token_ids=None if eos_ids is None else tuple(eos_ids),
        pad_token_id=pad,
        repetition_penalty=None if penalty == 1 else penalty,
        source=where,
        **sampling,
    )


def chat_template(directory: str | Path) -> str | None:
    """The checkpoint's chat template source, or None when it ships none."""
    directory = Path(directory)
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", PROCESSOR_FILE, "tokenizer_config.json"):
        data = _json(directory / name)
        template = None if data is None else data.get("chat_template")
        if isinstance(template, str):
            return template
        if template is not None:
            raise SettingsError(
                f"{directory / name}: chat_template must be one template string; named template lists are "
                "not supported"
            )
    return None


def special_tokens(directory: str | Path) -> dict[str, str]:
    """bos_token, eos_token, pad_token, ... as strings, from tokenizer_config.json (templates may use them)."""
    data = _json(Path(directory) / "tokenizer_config.json") or {}
    out = {}
    for key, value in data.items():
        if key.endswith("_token") and isinstance(value, str):
            out[key] = value
        elif key.endswith("_token") and isinstance(value, dict) and isinstance(value.get("content"), str):
            out[key] = value["content"]
    return out
