"""A checkpoint's own input settings: processor budgets and chat template, read from its files (its
generation defaults: `qwenvl_min.generate.settings`).

Which file wins follows transformers' loaders, so our defaults equal what `AutoProcessor.from_pretrained`
uses for the same directory:
- images: `processor_config.json` ["image_processor"] (transformers-5 saves), else
  `preprocessor_config.json`, else the class defaults (`qwenvl_min.inputs.preprocess`);
- videos: `processor_config.json` ["video_processor"], else `video_preprocessor_config.json`, else
  `preprocessor_config.json` (published Qwen2.5-VL checkpoints have no video file, so their *image*
  budget, max_pixels 12845056, applies to every frame), else the class defaults;
- pixel budget: `size` {"shortest_edge", "longest_edge"} overridden by legacy `min_pixels` / `max_pixels`;
- chat template: `chat_template.jinja`, else `chat_template.json`, else `processor_config.json`'s
  "chat_template", else `tokenizer_config.json`'s.
- the processor family (`processor_family`): "qwen3" for Qwen3-VL checkpoints (config.json's model_type,
  or a Qwen3VL processor class named in the processor files), else "qwen2". It decides the defaults of
  missing fields (Qwen3-VL: patch 16, mean / std 0.5, the published budgets, 2 frames per second sampled
  unless do_sample_frames is false) and the video rules (`qwenvl_min.inputs.video_qwen3`).
Settings our pipeline does not implement (another resample filter, normalization constants other than the
family's, no rescale; a per-frame pixel cap outside Qwen3-VL) are refused with the file and field named,
never ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils.settings_files import SettingsError, positive_number, read_json_object
from . import video_qwen3
from .preprocess import (
    IMAGE_MAX_PIXELS,
    IMAGE_MIN_PIXELS,
    MERGE_SIZE,
    NORMALIZATION,
    PATCH_SIZE,
    TEMPORAL_PATCH_SIZE,
    VIDEO_MAX_PIXELS,
    VIDEO_MIN_PIXELS,
    Normalization,
)

PROCESSOR_FILE = "processor_config.json"
IMAGE_FILE = "preprocessor_config.json"
VIDEO_FILE = "video_preprocessor_config.json"
BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, the only filter our processor (and the models' training) uses
PROCESSOR_FAMILIES = ("qwen2", "qwen3")
QWEN3_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")


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
    family: str = "qwen2"  # whose processor rules: "qwen2" (Qwen2-VL / Qwen2.5-VL) or "qwen3" (Qwen3-VL)
    cap_pixels_per_frame: bool = False  # videos, qwen3 only: qwen-vl-utils' per-frame cap (video_qwen3)

    def __post_init__(self) -> None:
        if self.family not in PROCESSOR_FAMILIES:
            raise ValueError(f"processor family must be one of {PROCESSOR_FAMILIES}, got {self.family!r}")

    @property
    def normalization(self) -> tuple[Normalization, Normalization]:
        """(image_mean, image_std) of this family's processor."""
        return NORMALIZATION[self.family]


def family_settings(family: str, video: bool) -> VisionSettings:
    """The settings of a family when its checkpoint ships no processor file: Qwen2-VL's class defaults, or
    the published Qwen3-VL files' values."""
    if family == "qwen3":
        if video:
            return VisionSettings(
                video_qwen3.VIDEO_MIN_PIXELS,
                video_qwen3.VIDEO_MAX_PIXELS,
                patch_size=video_qwen3.PATCH_SIZE,
                sample_fps=video_qwen3.SAMPLE_FPS,
                family=family,
            )
        return VisionSettings(
            video_qwen3.IMAGE_MIN_PIXELS,
            video_qwen3.IMAGE_MAX_PIXELS,
            patch_size=video_qwen3.PATCH_SIZE,
            family=family,
        )
    if video:
        return VisionSettings(VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS, family=family)
    return VisionSettings(IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS, family=family)


def processor_family(directory: str | Path) -> str:
    """ "qwen3" for a Qwen3-VL checkpoint (config.json's model_type, in HF's or our own config.json, or a
    Qwen3VL processor class in its processor files), else "qwen2"."""
    directory = Path(directory)
    config = read_json_object(directory / "config.json") or {}
    if config.get("model_type") in QWEN3_MODEL_TYPES:
        return "qwen3"
    for name in (PROCESSOR_FILE, IMAGE_FILE, VIDEO_FILE):
        data = read_json_object(directory / name) or {}
        sections = [data, *(v for v in data.values() if isinstance(v, dict))]
        for section in sections:
            for key in ("processor_class", "image_processor_type", "video_processor_type"):
                if str(section.get(key, "")).startswith("Qwen3VL"):
                    return "qwen3"
    return "qwen2"


def _section(directory: Path, key: str, files: tuple[str, ...]) -> tuple[dict[str, Any] | None, str]:
    nested = read_json_object(directory / PROCESSOR_FILE)
    if nested is not None and isinstance(nested.get(key), dict):
        return nested[key], f"{directory / PROCESSOR_FILE} [{key}]"
    for name in files:
        data = read_json_object(directory / name)
        if data is not None:
            return data, str(directory / name)
    return None, "defaults"


def _check_pipeline(data: dict[str, Any], where: str, family: str) -> None:
    """The fixed parts of our pipeline: bicubic resize, 1/255 rescale, the family's mean/std, RGB."""
    for key in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
        if data.get(key) is False:
            raise SettingsError(f"{where}: {key}=false is not supported (the models were trained with it on)")
    if data.get("resample") not in (None, BICUBIC):
        raise SettingsError(f"{where}: resample {data['resample']!r} is not supported; ours is bicubic (3)")
    factor = data.get("rescale_factor")
    if factor is not None and not math.isclose(factor, 1 / 255, rel_tol=1e-6):
        raise SettingsError(f"{where}: rescale_factor {factor!r} is not supported; ours is 1/255")
    named = "the CLIP" if family == "qwen2" else "Qwen3-VL's"
    for key, ours in zip(("image_mean", "image_std"), NORMALIZATION[family]):
        value = data.get(key)
        if value is not None and (
            not isinstance(value, list)
            or len(value) != 3
            or not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(value, ours))
        ):
            raise SettingsError(f"{where}: {key} {value!r} is not supported; ours is {named} {list(ours)}")
    cap = data.get("cap_pixels_per_frame")
    if cap is not None and (family != "qwen3" or not isinstance(cap, bool)):
        raise SettingsError(f"{where}: cap_pixels_per_frame is not supported; lower max_pixels instead")


def _vision(data: dict[str, Any] | None, where: str, video: bool, family: str) -> VisionSettings:
    default = family_settings(family, video)
    if data is None:
        return default
    _check_pipeline(data, where, family)
    size = data.get("size") if isinstance(data.get("size"), dict) else {}
    lo, hi = default.min_pixels, default.max_pixels
    lo = positive_number(size, "shortest_edge", where, positive_number(size, "min_pixels", where, lo))
    hi = positive_number(size, "longest_edge", where, positive_number(size, "max_pixels", where, hi))
    sampling: dict[str, Any] = {}
    # Qwen3-VL's video processor samples unless told not to (2 per second by default); Qwen2-VL's only when told
    if video and data.get("do_sample_frames", family == "qwen3"):
        fps_default = default.sample_fps if "num_frames" not in data else None
        sampling = dict(
            sample_fps=positive_number(data, "fps", where, fps_default, integer=False),
            num_frames=positive_number(data, "num_frames", where, None),
        )
        if sampling["sample_fps"] is None and sampling["num_frames"] is None:
            raise SettingsError(f"{where}: do_sample_frames is true but neither fps nor num_frames is set")
    elif video:
        sampling = dict(sample_fps=None)
    return VisionSettings(
        min_pixels=positive_number(data, "min_pixels", where, lo),
        max_pixels=positive_number(data, "max_pixels", where, hi),
        patch_size=positive_number(data, "patch_size", where, default.patch_size),
        temporal_patch_size=positive_number(data, "temporal_patch_size", where, TEMPORAL_PATCH_SIZE),
        merge_size=positive_number(data, "merge_size", where, MERGE_SIZE),
        min_frames=positive_number(data, "min_frames", where, 4),
        max_frames=positive_number(data, "max_frames", where, 768),
        source=where,
        family=family,
        cap_pixels_per_frame=bool(data.get("cap_pixels_per_frame")),
        **sampling,
    )


def image_settings(directory: str | Path, family: str | None = None) -> VisionSettings:
    """The image processor settings of a checkpoint directory (the family's defaults when it has none;
    family None: `processor_family(directory)`)."""
    family = processor_family(directory) if family is None else family
    data, where = _section(Path(directory), "image_processor", (IMAGE_FILE,))
    return _vision(data, where, video=False, family=family)


def video_settings(directory: str | Path, family: str | None = None) -> VisionSettings:
    """The video processor settings (falling back to the image processor's file, as transformers does)."""
    family = processor_family(directory) if family is None else family
    data, where = _section(Path(directory), "video_processor", (VIDEO_FILE, IMAGE_FILE))
    return _vision(data, where, video=True, family=family)


def chat_template(directory: str | Path) -> str | None:
    """The checkpoint's chat template source, or None when it ships none."""
    directory = Path(directory)
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", PROCESSOR_FILE, "tokenizer_config.json"):
        data = read_json_object(directory / name)
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
    data = read_json_object(Path(directory) / "tokenizer_config.json") or {}
    out = {}
    for key, value in data.items():
        if key.endswith("_token") and isinstance(value, str):
            out[key] = value
        elif key.endswith("_token") and isinstance(value, dict) and isinstance(value.get("content"), str):
            out[key] = value["content"]
    return out
