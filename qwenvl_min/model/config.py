"""Model configuration: frozen dataclasses, presets, and the only code that knows HF config spellings.

`Config.from_hf` accepts both published (flat: text fields at the top level, `rope_scaling`) and
transformers-5 saved (nested `text_config` / `vision_config`, `rope_parameters`) config.json dicts for
Qwen2-VL and Qwen2.5-VL, and the nested dicts of Qwen3-VL / Qwen3-VL-MoE (published with `rope_scaling`
and `rope_theta` inside `text_config`, saved by transformers 5 with `rope_parameters`). Fields that decide
shapes or numerics must be present: HF's *class defaults* differ from the released checkpoints (e.g.
Qwen2.5-VL vision hidden_size 3584 vs 1280, tokens_per_second 4 vs 2, rms_norm_eps 1e-5 vs 1e-6; Qwen3-VL
vision out_hidden_size 3584 and deepstack_visual_indexes [8, 16, 24], where the 2B / 4B use [5, 11, 17]),
so we never fill those in silently.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .rope import MROPE_AXES

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
VISION_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")  # Qwen3-VL-MoE has the Qwen3-VL tower
QWEN3 = ("qwen3_vl", "qwen3_vl_moe")  # the families with the Qwen3 decoder and DeepStack


def vision_family(model_type: str) -> str:
    """The vision tower family of a model type (Qwen3-VL-MoE's tower is Qwen3-VL's)."""
    return "qwen3_vl" if model_type in QWEN3 else model_type


class ConfigError(ValueError):
    """A config dict cannot describe a Qwen2-VL / Qwen2.5-VL / Qwen3-VL model."""


def _check_types(obj: object, where: str) -> None:
    """Every int field a whole number >= 1 (token ids >= 0), every float field finite and > 0, bools bools.

    Runs first in each dataclass's __post_init__, so a config from any source (HF dict, our own
    config.json, a hand-made dataclass) fails with a ConfigError naming the field, never with a
    ZeroDivisionError or TypeError deep inside the model."""
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if kind == "int":
            minimum = 0 if f.name.endswith("_token_id") or f.metadata.get("zero_ok") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{where} field {f.name!r} must be an integer >= {minimum}, got {value!r}")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{where} field {f.name!r} must be a finite number, got {value!r}")
            if value <= 0:
                raise ConfigError(f"{where} field {f.name!r} must be positive, got {value!r}")
        elif kind == "bool" and not isinstance(value, bool):
            raise ConfigError(f"{where} field {f.name!r} must be true or false, got {value!r}")
        elif kind == "tuple[int, ...]":
            if not isinstance(value, tuple) or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value
            ):
                raise ConfigError(f"{where} field {f.name!r} must be a list of integers >= 0, got {value!r}")


@dataclass(frozen=True)
class VisionConfig:
    # "qwen2_vl" (LayerNorm, QuickGELU MLP, full attention), "qwen2_5_vl" (RMSNorm, SwiGLU, windows) or
    # "qwen3_vl" (LayerNorm, GELU-tanh MLP, full attention, learned positions, DeepStack mergers)
    family: str
    depth: int
    width: int  # ViT width D
    num_heads: int
    mlp_hidden: int  # fc1 width (qwen2_vl) or SwiGLU width (qwen2_5_vl)
    out_width: int  # merger output = LLM width
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    in_channels: int = 3
    window_size: int = 112  # pixels; qwen2_5_vl only
    fullatt_block_indexes: tuple[int, ...] = ()  # qwen2_5_vl only
    tokens_per_second: float = 2.0  # qwen2_5_vl video time scale for M-RoPE
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    num_position_embeddings: int = 2304  # qwen3_vl: the learned position grid (48 x 48), a square
    deepstack_indexes: tuple[int, ...] = ()  # qwen3_vl: blocks whose outputs feed the DeepStack mergers

    def __post_init__(self) -> None:
        _check_types(self, "vision config")
        if self.family not in VISION_FAMILIES:
            raise ConfigError(f"vision family must be one of {VISION_FAMILIES}, got {self.family!r}")
        if self.width % self.num_heads or (self.width // self.num_heads) % 4:
            raise ConfigError(
                f"vision config: width {self.width} / heads {self.num_heads} must give a head_dim divisible by 4 "
                "(2D rotary splits it into row and column halves)"
            )
        unit = self.patch_size * self.merge_size
        if self.family == "qwen2_5_vl" and (self.window_size % unit or self.window_size < unit):
            raise ConfigError(
                f"vision config: window_size {self.window_size} px must be a positive multiple of {unit} px"
            )
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(f"vision config: fullatt_block_indexes {bad} are outside 0..{self.depth - 1}")
        if self.family != "qwen3_vl" and self.deepstack_indexes:
            raise ConfigError(f"vision config: deepstack_indexes are a Qwen3-VL feature, not {self.family}'s")
        bad = [i for i in self.deepstack_indexes if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(f"vision config: deepstack_indexes {bad} are outside 0..{self.depth - 1}")
        if len(set(self.deepstack_indexes)) != len(self.deepstack_indexes):
            raise ConfigError(
                f"vision config: deepstack_indexes {list(self.deepstack_indexes)} repeat a block"
            )
        if math.isqrt(self.num_position_embeddings) ** 2 != self.num_position_embeddings:
            raise ConfigError(
                f"vision config: num_position_embeddings {self.num_position_embeddings} must be a square "
                "(the learned positions are a side x side grid)"
            )

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Values per pixel_values row: C * T * P * P (1176 for the released models)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def window_merged(self) -> int:
        """Window side in merged tokens (112 px / 14 / 2 = 4)."""
        return self.window_size // (self.patch_size * self.merge_size)

    @property
    def position_grid_side(self) -> int:
        """Side of the learned position grid (qwen3_vl: 48)."""
        return math.isqrt(self.num_position_embeddings)

    def is_full_attention(self, block: int) -> bool:
        return self.family != "qwen2_5_vl" or block in self.fullatt_block_indexes


@dataclass(frozen=True)
class MoeConfig:
    """Qwen3-VL-MoE's sparse MLP: a softmax router picks `experts_per_token` of `num_experts` SwiGLU
    experts of width `expert_hidden` for each token (weights renormalised over the chosen ones), in the
    decoder layers listed in `sparse_layers`; the other layers keep the dense MLP."""

    num_experts: int
    experts_per_token: int
    expert_hidden: int  # moe_intermediate_size
    sparse_layers: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_types(self, "moe config")
        if self.experts_per_token > self.num_experts:
            raise ConfigError(
                f"moe config: experts_per_token {self.experts_per_token} > num_experts {self.num_experts}"
            )


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, ...]
    tie_word_embeddings: bool
    max_position_embeddings: int = 32768
    mrope_axes: str = "sections"  # which position axis drives each rotary frequency: rope.MROPE_AXES
    # the head dim when the checkpoint gives it (Qwen3: 128); 0: hidden_size // num_heads (Qwen2)
    explicit_head_dim: int = field(default=0, metadata={"zero_ok": True})
    attention_bias: bool = True  # q/k/v projections with biases (Qwen2); Qwen3 has none
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k before the rotary
    moe: MoeConfig | None = None  # Qwen3-VL-MoE: the sparse MLP and the layers that use it

    def __post_init__(self) -> None:
        _check_types(self, "text config")
        if not self.explicit_head_dim and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"text config: hidden_size {self.hidden_size} is not divisible by {self.num_heads} heads "
                "(or give explicit_head_dim)"
            )
        if self.mrope_axes not in MROPE_AXES:
            raise ConfigError(f"mrope_axes {self.mrope_axes!r} is not one of {sorted(MROPE_AXES)}")
        if self.moe is not None:
            if not isinstance(self.moe, MoeConfig):
                raise ConfigError(f"text config field 'moe' must be a MoeConfig or None, got {self.moe!r}")
            bad = [i for i in self.moe.sparse_layers if not 0 <= i < self.num_layers]
            if bad:
                raise ConfigError(f"moe config: sparse_layers {bad} are outside 0..{self.num_layers - 1}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"text config: heads {self.num_heads} are not a multiple of kv heads {self.num_kv_heads}"
            )
        if len(self.mrope_section) != 3 or sum(self.mrope_section) * 2 != self.head_dim:
            raise ConfigError(
                f"text config: mrope_section {list(self.mrope_section)} must have 3 parts summing to head_dim/2 = "
                f"{self.head_dim // 2}"
            )
        # the rotary setting as one string (not a field): what traced code reads (rope.mrope_table)
        sections = ",".join(str(s) for s in self.mrope_section)
        key = f"{self.head_dim}|{float(self.rope_theta)!r}|{sections}|{self.mrope_axes}"
        object.__setattr__(self, "rope_key", key)

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden_size // self.num_heads

    def is_sparse(self, layer: int) -> bool:
        """Whether decoder layer `layer` has the MoE MLP."""
        return self.moe is not None and layer in self.moe.sparse_layers


@dataclass(frozen=True)
class Config:
    model_type: str  # one of FAMILIES
    vision: VisionConfig
    text: TextConfig
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.vision, VisionConfig) or not isinstance(self.text, TextConfig):
            raise ConfigError("Config needs a VisionConfig and a TextConfig")
        _check_types(self, "config")
        if self.model_type not in FAMILIES:
            raise ConfigError(f"model_type must be one of {FAMILIES}, got {self.model_type!r}")
        if self.vision.family != vision_family(self.model_type):
            raise ConfigError(
                f"vision family {self.vision.family!r} does not match model_type {self.model_type!r}"
            )
        if (self.text.moe is not None) != (self.model_type == "qwen3_vl_moe"):
            raise ConfigError(
                f"a MoE text config (text.moe) goes with model_type 'qwen3_vl_moe' only, got {self.model_type!r}"
                f" with moe={self.text.moe!r}"
            )
        if len(self.vision.deepstack_indexes) > self.text.num_layers:
            raise ConfigError(
                f"{len(self.vision.deepstack_indexes)} DeepStack levels need as many decoder layers, the text "
                f"config has {self.text.num_layers}"
            )
        if self.vision.out_width != self.text.hidden_size:
            raise ConfigError(
                f"merger output width {self.vision.out_width} must equal the text hidden_size {self.text.hidden_size}"
            )
        # A special id at or above vocab_size is allowed (transformers' own test configs have a
        # vision_end id of 151653 with a vocabulary of 99): such a token can never be in input_ids, which
        # the forward checks against vocab_size, so the model simply never sees it.

    # ---- HF config.json ------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, config: Any) -> Config:
        """Build from a Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3-VL-MoE config.json dict, flat (published
        Qwen2 families) or nested (transformers 5, and every Qwen3-VL), or from a transformers config object
        (`Qwen2VLConfig`, ..., `Qwen3VLMoeConfig`: read through its `to_dict()`, so transformers is never
        imported here)."""
        if not isinstance(config, dict) and callable(getattr(config, "to_dict", None)):
            config = config.to_dict()
        if not isinstance(config, dict):
            raise ConfigError(
                f"expected a config.json dict or a transformers config object, got {type(config).__name__}"
            )
        model_type = config.get("model_type")
        if model_type not in FAMILIES:
            raise ConfigError(
                f"unsupported model_type {model_type!r}: qwenvl-min handles {FAMILIES} "
                "(Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE checkpoints)"
            )
        text_src = config["text_config"] if isinstance(config.get("text_config"), dict) else config
        vision_src = config.get("vision_config")
        if not isinstance(vision_src, dict):
            raise ConfigError("config has no vision_config dict")
        for key in ("rope_parameters", "rope_scaling"):
            _dict(text_src, key, "text config")
        if model_type in QWEN3:
            text = _qwen3_text_from_hf(model_type, text_src, config)
        else:
            text = _text_from_hf(text_src, config)
        vision = _vision_from_hf(model_type, vision_src)
        if isinstance(config.get("eos_token_id"), list):
            config = {**config, "eos_token_id": _first(config["eos_token_id"])}
        ids = {
            key: _int(config, key, "config", _first(text_src.get(key, default)), minimum=0)
            for key, default in (
                ("image_token_id", 151655),
                ("video_token_id", 151656),
                ("vision_start_token_id", 151652),
                ("vision_end_token_id", 151653),
                ("bos_token_id", 151643),
                ("eos_token_id", 151645),
            )
        }
        return cls(model_type=model_type, vision=vision, text=text, **ids)

    def to_hf(self) -> dict[str, Any]:
        """A transformers-5 (nested) config.json dict that `Qwen2VLConfig` / `Qwen2_5_VLConfig` /
        `Qwen3VLConfig` / `Qwen3VLMoeConfig` load."""
        if self.model_type in QWEN3:
            return _qwen3_to_hf(self)
        v, t = self.vision, self.text
        if t.mrope_axes != "sections":
            raise ConfigError(
                f"mrope_axes {t.mrope_axes!r} has no Qwen2-VL / Qwen2.5-VL config spelling (those models "
                "use contiguous sections); keep such a model in our own format"
            )
        if t.qk_norm or not t.attention_bias or t.explicit_head_dim not in (0, t.hidden_size // t.num_heads):
            raise ConfigError(
                "q/k norms, bias-free q/k/v projections or an explicit head_dim are Qwen3 decoder features "
                "with no Qwen2-VL / Qwen2.5-VL config spelling; keep such a model in our own format"
            )
        vision: dict[str, Any] = {
            "model_type": f"{self.model_type}_vision",
            "depth": v.depth,
            "num_heads": v.num_heads,
            "in_channels": v.in_channels,
            "patch_size": v.patch_size,
            "spatial_merge_size": v.merge_size,
            "temporal_patch_size": v.temporal_patch_size,
        }
        if self.model_type == "qwen2_vl":
            if v.mlp_hidden % v.width:
                raise ConfigError(
                    f"Qwen2-VL's config stores mlp_ratio as an int; {v.mlp_hidden}/{v.width} is not one"
                )
            vision.update(
                embed_dim=v.width,
                hidden_size=v.out_width,
                mlp_ratio=v.mlp_hidden // v.width,
                hidden_act="quick_gelu",
            )
        else:
            vision.update(
                hidden_size=v.width,
                intermediate_size=v.mlp_hidden,
                out_hidden_size=v.out_width,
                hidden_act="silu",
                window_size=v.window_size,
                fullatt_block_indexes=list(v.fullatt_block_indexes),
                tokens_per_second=_int_if_integral(v.tokens_per_second),
            )
        text = {
            "model_type": f"{self.model_type}_text",
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads,
            "num_key_value_heads": t.num_kv_heads,
            "hidden_act": "silu",
            "rms_norm_eps": t.rms_norm_eps,
            "max_position_embeddings": t.max_position_embeddings,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": t.rope_theta,
                "mrope_section": list(t.mrope_section),
            },
            "tie_word_embeddings": t.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }
        return {
            "model_type": self.model_type,
            "architectures": [
                "Qwen2VLForConditionalGeneration"
                if self.model_type == "qwen2_vl"
                else "Qwen2_5_VLForConditionalGeneration"
            ],
            "text_config": text,
            "vision_config": vision,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "tie_word_embeddings": t.tie_word_embeddings,
        }

    # ---- our own config.json (converted checkpoints) -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        try:
            vision = dict(data["vision"])
            vision["fullatt_block_indexes"] = _int_list(
                vision.get("fullatt_block_indexes", ()), "fullatt_block_indexes", "vision"
            )
            vision["deepstack_indexes"] = _int_list(
                vision.get("deepstack_indexes", ()), "deepstack_indexes", "vision"
            )
            text = dict(data["text"])
            text["mrope_section"] = _int_list(text["mrope_section"], "mrope_section", "text")
            if "mrope_layout" in text:  # the field's name in checkpoints converted before 0.2
                text["mrope_axes"] = text.pop("mrope_layout")
            if text.get("moe") is not None:
                moe = dict(text["moe"])
                moe["sparse_layers"] = _int_list(moe["sparse_layers"], "sparse_layers", "text.moe")
                text["moe"] = MoeConfig(**moe)
            rest = {k: v for k, v in data.items() if k not in ("vision", "text")}
            return cls(vision=VisionConfig(**vision), text=TextConfig(**text), **rest)
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(
                f"not a qwenvl-min config dict ({err}); was it written by our converter?"
            ) from err

    # ---- presets -------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> Config:
        """Architecture presets: the released sizes and tiny ones for tests and the demo."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name](), name=name)


def _first(value: Any) -> Any:
    """An id field given as a list (transformers allows several eos ids): the first one. The full stop
    set comes from generation_config.json (see `qwenvl_min.inputs.checkpoint_settings`)."""
    return value[0] if isinstance(value, list) and value else value


def _int_if_integral(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x  # HF's strict config types want an int here


_MISSING = object()


def _require(src: dict[str, Any], key: str, where: str) -> Any:
    if key not in src or src[key] is None:
        raise ConfigError(f"config field {key!r} is missing from {where}; it is needed to build the model")
    return src[key]


def _field(src: dict[str, Any], key: str, where: str, default: Any) -> Any:
    if default is _MISSING:
        return _require(src, key, where)
    value = src.get(key)
    return default if value is None else value


def _int(src: dict[str, Any], key: str, where: str, default: Any = _MISSING, minimum: int = 1) -> int:
    """A JSON integer field (4 or 4.0; never "4", true or 4.5), checked >= minimum."""
    value = _field(src, key, where, default)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"config field {key!r} in {where} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"config field {key!r} in {where} must be >= {minimum}, got {value}")
    return value


def _float(src: dict[str, Any], key: str, where: str, default: Any = _MISSING) -> float:
    """A JSON number field, finite and positive."""
    return _as_float(_field(src, key, where, default), key, where)


def _as_float(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"config field {key!r} in {where} must be a finite number, got {value!r}")
    if value <= 0:
        raise ConfigError(f"config field {key!r} in {where} must be positive, got {value!r}")
    return float(value)


def _int_list(value: Any, key: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"config field {key!r} in {where} must be a list of integers, got {value!r}")
    return tuple(_int({key: v}, key, where, minimum=0) for v in value)


def _dict(src: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = src.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"config field {key!r} in {where} must be an object, got {value!r}")
    return value


def _text_from_hf(src: dict[str, Any], root: dict[str, Any]) -> TextConfig:
    where = "text config"
    if src.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"text hidden_act {src['hidden_act']!r} is not supported (Qwen2 uses 'silu')")
    if src.get("use_sliding_window"):
        raise ConfigError(
            "use_sliding_window=true is not supported (no released Qwen2-VL checkpoint uses it)"
        )
    rope = _dict(src, "rope_parameters", where)
    scaling = _dict(src, "rope_scaling", where)
    kind = next(
        (d[k] for d in (rope, scaling) for k in ("rope_type", "type") if d.get(k) is not None), "default"
    )
    if kind not in ("default", "mrope"):
        raise ConfigError(
            f"rope type {kind!r} is not supported: qwenvl-min implements the plain M-RoPE of the released "
            "checkpoints (rope_type 'default' / 'mrope'), not scaled variants"
        )
    layer_types = src.get("layer_types") or []
    if src.get("sliding_window") and "sliding_attention" in layer_types:
        raise ConfigError(
            "layer_types with 'sliding_attention' (and a sliding_window) are not supported: qwenvl-min "
            "implements full causal attention in every layer, as the released checkpoints use"
        )
    if rope.get("mrope_interleaved") or scaling.get("mrope_interleaved"):
        raise ConfigError(
            "mrope_interleaved is not supported: Qwen2-VL / Qwen2.5-VL use contiguous mrope sections"
        )
    if src.get("attention_dropout", 0.0) not in (0, 0.0, None):
        raise ConfigError(
            f"text attention_dropout {src['attention_dropout']!r} is not supported: qwenvl-min has no dropout "
            "(released checkpoints use 0.0); set it to 0.0"
        )
    theta = rope.get("rope_theta", src.get("rope_theta"))
    section = rope.get("mrope_section", scaling.get("mrope_section"))
    if theta is None:
        raise ConfigError(
            f"config field 'rope_theta' is missing from the {where} (rope_parameters or top level)"
        )
    if section is None:
        raise ConfigError(
            f"config field 'mrope_section' is missing from the {where} (rope_parameters/rope_scaling)"
        )
    heads = _int(src, "num_attention_heads", where)
    hidden = _int(src, "hidden_size", where)
    if src.get("head_dim") is not None and src["head_dim"] * heads != hidden:
        raise ConfigError(
            f"text head_dim {src['head_dim']!r} is not hidden_size / num_attention_heads = {hidden}/{heads}: "
            "Qwen2 derives the head size from the width"
        )
    tie = root.get("tie_word_embeddings", src.get("tie_word_embeddings", False))
    if not tie and src.get("tie_word_embeddings"):
        tie = True  # pre-v5 configs kept the flag on the text config
    if not isinstance(tie, bool):
        raise ConfigError(f"config field 'tie_word_embeddings' must be true or false, got {tie!r}")
    return TextConfig(
        vocab_size=_int(src, "vocab_size", where),
        hidden_size=_int(src, "hidden_size", where),
        intermediate_size=_int(src, "intermediate_size", where),
        num_layers=_int(src, "num_hidden_layers", where),
        num_heads=heads,
        num_kv_heads=_int(src, "num_key_value_heads", where, heads),
        rms_norm_eps=_float(src, "rms_norm_eps", where),
        rope_theta=_as_float(theta, "rope_theta", where),
        mrope_section=_int_list(section, "mrope_section", where),
        tie_word_embeddings=tie,
        max_position_embeddings=_int(src, "max_position_embeddings", where, 32768),
    )


def _qwen3_text_from_hf(model_type: str, src: dict[str, Any], root: dict[str, Any]) -> TextConfig:
    """The Qwen3 decoder (dense or MoE) of a Qwen3-VL text_config, as transformers 5.24 reads it."""
    where = "text config"
    if src.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"text hidden_act {src['hidden_act']!r} is not supported (Qwen3 uses 'silu')")
    if src.get("attention_bias"):
        raise ConfigError(
            "text attention_bias=true is not supported: the Qwen3 decoder of the released checkpoints has no "
            "projection biases"
        )
    if src.get("attention_dropout", 0.0) not in (0, 0.0, None):
        raise ConfigError(
            f"text attention_dropout {src['attention_dropout']!r} is not supported: qwenvl-min has no dropout "
            "(released checkpoints use 0.0); set it to 0.0"
        )
    if src.get("use_sliding_window"):
        raise ConfigError(
            "sliding-window attention is not supported (no released Qwen3-VL checkpoint uses it)"
        )
    rope = {**_dict(src, "rope_scaling", where), **_dict(src, "rope_parameters", where)}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "mrope"):
        raise ConfigError(
            f"rope type {kind!r} is not supported: qwenvl-min implements the plain interleaved M-RoPE of the "
            "released Qwen3-VL checkpoints (rope_type 'default'), not scaled variants"
        )
    theta = rope.get("rope_theta", src.get("rope_theta"))
    if theta is None:
        raise ConfigError(
            f"config field 'rope_theta' is missing from the {where} (rope_parameters or rope_theta)"
        )
    section = rope.get("mrope_section")
    if section is None:
        raise ConfigError(f"config field 'mrope_section' is missing from the {where} (rope_parameters)")
    heads = _int(src, "num_attention_heads", where)
    hidden = _int(src, "hidden_size", where)
    if model_type == "qwen3_vl_moe":
        # transformers' MoE text config derives a missing head_dim from the width
        head_dim = _int(src, "head_dim", where, hidden // heads)
    else:
        head_dim = _int(src, "head_dim", where)  # the class default (128) is a value, not a rule
    # 5.24 reads the tie flag of the top-level config only (a text-level flag is ignored)
    tie = root.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise ConfigError(f"config field 'tie_word_embeddings' must be true or false, got {tie!r}")
    layers = _int(src, "num_hidden_layers", where)
    return TextConfig(
        vocab_size=_int(src, "vocab_size", where),
        hidden_size=hidden,
        intermediate_size=_int(src, "intermediate_size", where),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=_int(src, "num_key_value_heads", where, heads),
        rms_norm_eps=_float(src, "rms_norm_eps", where),
        rope_theta=_as_float(theta, "rope_theta", where),
        mrope_section=_int_list(section, "mrope_section", where),
        tie_word_embeddings=tie,
        max_position_embeddings=_int(src, "max_position_embeddings", where, 128000),
        mrope_axes="interleaved",  # 5.24 always interleaves (it never reads mrope_interleaved)
        explicit_head_dim=head_dim,
        attention_bias=False,
        qk_norm=True,
        moe=_moe_from_hf(src, layers) if model_type == "qwen3_vl_moe" else None,
    )


def _moe_from_hf(src: dict[str, Any], layers: int) -> MoeConfig:
    where = "text config"
    if src.get("norm_topk_prob") is False:
        raise ConfigError(
            "norm_topk_prob=false is not supported: transformers 5.24 always renormalises the chosen experts' "
            "weights (as the released checkpoints, which set true, expect)"
        )
    if src.get("output_router_logits"):
        raise ConfigError(
            "output_router_logits=true (the router's auxiliary load-balancing loss) is not supported; the "
            "router logits are readable as taps (text.layers.{i}.mlp.router); set it to false"
        )
    experts = _int(src, "num_experts", where, src.get("num_local_experts", _MISSING))
    step = _int(src, "decoder_sparse_step", where, 1)
    dense_only = _int_list(src.get("mlp_only_layers") or [], "mlp_only_layers", where)
    return MoeConfig(
        num_experts=experts,
        experts_per_token=_int(src, "num_experts_per_tok", where),
        expert_hidden=_int(src, "moe_intermediate_size", where),
        sparse_layers=tuple(i for i in range(layers) if i not in dense_only and (i + 1) % step == 0),
    )


def _qwen3_to_hf(config: Config) -> dict[str, Any]:
    """The transformers-5 nested config.json of a Qwen3-VL / Qwen3-VL-MoE config."""
    v, t = config.vision, config.text
    if t.mrope_axes != "interleaved" or not t.qk_norm or t.attention_bias:
        raise ConfigError(
            "a Qwen3-VL config.json spells interleaved M-RoPE, q/k norms and bias-free projections only; "
            f"this config has mrope_axes={t.mrope_axes!r}, qk_norm={t.qk_norm}, attention_bias="
            f"{t.attention_bias}: keep such a model in our own format"
        )
    vision = {
        "model_type": f"{config.model_type}_vision",
        "depth": v.depth,
        "hidden_size": v.width,
        "hidden_act": "gelu_pytorch_tanh",
        "intermediate_size": v.mlp_hidden,
        "num_heads": v.num_heads,
        "in_channels": v.in_channels,
        "patch_size": v.patch_size,
        "spatial_merge_size": v.merge_size,
        "temporal_patch_size": v.temporal_patch_size,
        "out_hidden_size": v.out_width,
        "num_position_embeddings": v.num_position_embeddings,
        "deepstack_visual_indexes": list(v.deepstack_indexes),
        "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
    }
    text: dict[str, Any] = {
        "model_type": f"{config.model_type}_text",
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_layers,
        "num_attention_heads": t.num_heads,
        "num_key_value_heads": t.num_kv_heads,
        "head_dim": t.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": t.rms_norm_eps,
        "max_position_embeddings": t.max_position_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": t.rope_theta,
            "mrope_section": list(t.mrope_section),
            "mrope_interleaved": True,
        },
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
    }
    if t.moe is not None:
        m = t.moe
        text.update(
            num_experts=m.num_experts,
            num_experts_per_tok=m.experts_per_token,
            moe_intermediate_size=m.expert_hidden,
            decoder_sparse_step=1,
            mlp_only_layers=[i for i in range(t.num_layers) if i not in m.sparse_layers],
            output_router_logits=False,
        )
    return {
        "model_type": config.model_type,
        "architectures": [
            "Qwen3VLMoeForConditionalGeneration" if t.moe else "Qwen3VLForConditionalGeneration"
        ],
        "text_config": text,
        "vision_config": vision,
        "image_token_id": config.image_token_id,
        "video_token_id": config.video_token_id,
        "vision_start_token_id": config.vision_start_token_id,
        "vision_end_token_id": config.vision_end_token_id,
        "tie_word_embeddings": t.tie_word_embeddings,
    }


def _vision_from_hf(model_type: str, src: dict[str, Any]) -> VisionConfig:
    where = "vision_config"
    common = dict(
        depth=_int(src, "depth", where),
        num_heads=_int(src, "num_heads", where),
        patch_size=_int(src, "patch_size", where, 14),
        temporal_patch_size=_int(src, "temporal_patch_size", where, 2),
        merge_size=_int(src, "spatial_merge_size", where, 2),
        in_channels=_int(src, "in_channels", where, src.get("in_chans", 3)),
        rope_theta=_float(_dict(src, "rope_parameters", where), "rope_theta", where, 10000.0),
    )
    if model_type in QWEN3:
        if src.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
            raise ConfigError(
                f"Qwen3-VL vision hidden_act {src['hidden_act']!r} is not supported (gelu_pytorch_tanh)"
            )
        return VisionConfig(
            family="qwen3_vl",
            width=_int(src, "hidden_size", where),  # Qwen3-VL: hidden_size = ViT width
            mlp_hidden=_int(src, "intermediate_size", where),
            out_width=_int(src, "out_hidden_size", where),
            num_position_embeddings=_int(src, "num_position_embeddings", where),
            deepstack_indexes=_int_list(
                _require(src, "deepstack_visual_indexes", where), "deepstack_visual_indexes", where
            ),
            **{**common, "patch_size": _int(src, "patch_size", where, 16)},
        )
    if model_type == "qwen2_vl":
        if src.get("hidden_act", "quick_gelu") != "quick_gelu":
            raise ConfigError(
                f"Qwen2-VL vision hidden_act {src['hidden_act']!r} is not supported (quick_gelu)"
            )
        width = _int(src, "embed_dim", where)
        return VisionConfig(
            family=model_type,
            width=width,
            mlp_hidden=int(width * _float(src, "mlp_ratio", where, 4)),
            out_width=_int(src, "hidden_size", where),  # Qwen2-VL: hidden_size = merger output
            **common,
        )
    if src.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"Qwen2.5-VL vision hidden_act {src['hidden_act']!r} is not supported (silu)")
    return VisionConfig(
        family=model_type,
        width=_int(src, "hidden_size", where),  # Qwen2.5-VL: hidden_size = ViT width
        mlp_hidden=_int(src, "intermediate_size", where),
        out_width=_int(src, "out_hidden_size", where),
        window_size=_int(src, "window_size", where),
        fullatt_block_indexes=_existing_blocks(
            _int_list(_require(src, "fullatt_block_indexes", where), "fullatt_block_indexes", where),
            _int(src, "depth", where),
        ),
        tokens_per_second=_float(src, "tokens_per_second", where),
        **common,
    )


def _existing_blocks(indexes: tuple[int, ...], depth: int) -> tuple[int, ...]:
    """transformers reads fullatt_block_indexes as "these blocks attend to the whole frame": an index at or
    above depth names no block (its own test configs keep the released [7, 15, 23, 31] with depth 2). We
    read it the same way: the blocks that exist."""
    return tuple(i for i in indexes if i < depth)


def _released(
    family: str,
    layers: int,
    hidden: int,
    mlp: int,
    heads: int,
    kv: int,
    vocab: int,
    tied: bool,
    vision_mlp: int,
) -> Config:
    vision = VisionConfig(
        family=family,
        depth=32,
        width=1280,
        num_heads=16,
        mlp_hidden=vision_mlp,
        out_width=hidden,
        fullatt_block_indexes=(7, 15, 23, 31) if family == "qwen2_5_vl" else (),
    )
    text = TextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        rms_norm_eps=1e-6,
        rope_theta=1e6,
        mrope_section=(16, 24, 24),
        tie_word_embeddings=tied,
        max_position_embeddings=32768 if family == "qwen2_vl" else 128000,
    )
    return Config(model_type=family, vision=vision, text=text)


# Tiny models keep every structural feature of the real ones (GQA, full-attention blocks at
# non-trivial indexes, several windows per frame, a non-uniform mrope_section) at test-friendly widths.
_TINY_IDS = dict(
    bos_token_id=250,
    eos_token_id=251,
    vision_start_token_id=252,
    vision_end_token_id=253,
    image_token_id=254,
    video_token_id=255,
)


def _tiny(family: str, tied: bool) -> Config:
    vision = VisionConfig(
        family=family,
        depth=4,
        width=64,
        num_heads=4,
        mlp_hidden=256 if family == "qwen2_vl" else 96,
        out_width=64,
        fullatt_block_indexes=(1, 3) if family == "qwen2_5_vl" else (),
    )
    text = TextConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        rms_norm_eps=1e-6,
        rope_theta=1e6,
        mrope_section=(2, 3, 3),
        tie_word_embeddings=tied,
    )
    return Config(model_type=family, vision=vision, text=text, **_TINY_IDS)


def _qwen3(
    layers: int,
    hidden: int,
    mlp: int,
    heads: int,
    kv: int,
    tied: bool,
    small_tower: bool,
    moe: tuple[int, int, int] | None = None,
) -> Config:
    """A released Qwen3-VL size: the 2B / 4B towers are 24 x 1024 wide with DeepStack from blocks (5, 11,
    17), the larger ones 27 x 1152 with (8, 16, 24). moe = (experts, per token, expert width), every layer
    sparse."""
    depth, width, vision_mlp, deepstack = (
        (24, 1024, 4096, (5, 11, 17)) if small_tower else (27, 1152, 4304, (8, 16, 24))
    )
    vision = VisionConfig(
        family="qwen3_vl",
        depth=depth,
        width=width,
        num_heads=16,
        mlp_hidden=vision_mlp,
        out_width=hidden,
        patch_size=16,
        num_position_embeddings=2304,
        deepstack_indexes=deepstack,
    )
    text = TextConfig(
        vocab_size=151936,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        rms_norm_eps=1e-6,
        rope_theta=5e6,
        mrope_section=(24, 20, 20),
        tie_word_embeddings=tied,
        max_position_embeddings=262144,
        mrope_axes="interleaved",
        explicit_head_dim=128,
        attention_bias=False,
        qk_norm=True,
        moe=None if moe is None else MoeConfig(*moe, sparse_layers=tuple(range(layers))),
    )
    return Config(model_type="qwen3_vl_moe" if moe else "qwen3_vl", vision=vision, text=text)


def _tiny_qwen3(moe: bool) -> Config:
    """Every structural feature of Qwen3-VL at test widths: an explicit head_dim that is not width / heads
    (24 vs 16), GQA, an interleaved mrope_section whose height / width sections run out before the time
    one (6, 3, 3), an odd learned position grid (7 x 7), two DeepStack levels from non-adjacent blocks;
    the MoE variant with a dense layer between sparse ones (mlp_only_layers [1]) and an expert width whose
    gate_up / down shapes cannot be mistaken for their transposes."""
    vision = VisionConfig(
        family="qwen3_vl",
        depth=4,
        width=64,
        num_heads=4,
        mlp_hidden=96,
        out_width=64,
        patch_size=16,
        num_position_embeddings=49,
        deepstack_indexes=(0, 2),
    )
    text = TextConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        rms_norm_eps=1e-6,
        rope_theta=5e6,
        mrope_section=(6, 3, 3),
        tie_word_embeddings=False,
        mrope_axes="interleaved",
        explicit_head_dim=24,
        attention_bias=False,
        qk_norm=True,
        moe=MoeConfig(6, 2, 48, sparse_layers=(0, 2)) if moe else None,
    )
    return Config(model_type="qwen3_vl_moe" if moe else "qwen3_vl", vision=vision, text=text, **_TINY_IDS)


PRESETS = {
    "qwen2-vl-2b": lambda: _released("qwen2_vl", 28, 1536, 8960, 12, 2, 151936, True, 5120),
    "qwen2-vl-7b": lambda: _released("qwen2_vl", 28, 3584, 18944, 28, 4, 152064, False, 5120),
    "qwen2-vl-72b": lambda: _released("qwen2_vl", 80, 8192, 29568, 64, 8, 152064, False, 5120),
    "qwen2.5-vl-3b": lambda: _released("qwen2_5_vl", 36, 2048, 11008, 16, 2, 151936, True, 3420),
    "qwen2.5-vl-7b": lambda: _released("qwen2_5_vl", 28, 3584, 18944, 28, 4, 152064, False, 3420),
    "qwen2.5-vl-72b": lambda: _released("qwen2_5_vl", 80, 8192, 29568, 64, 8, 152064, False, 3456),
    "tiny-qwen2-vl": lambda: _tiny("qwen2_vl", tied=True),
    "tiny-qwen2.5-vl": lambda: _tiny("qwen2_5_vl", tied=False),
    "qwen3-vl-2b": lambda: _qwen3(28, 2048, 6144, 16, 8, tied=True, small_tower=True),
    "qwen3-vl-4b": lambda: _qwen3(36, 2560, 9728, 32, 8, tied=True, small_tower=True),
    "qwen3-vl-8b": lambda: _qwen3(36, 4096, 12288, 32, 8, tied=False, small_tower=False),
    "qwen3-vl-32b": lambda: _qwen3(64, 5120, 25600, 64, 8, tied=False, small_tower=False),
    "qwen3-vl-30b-a3b": lambda: _qwen3(48, 2048, 6144, 32, 4, False, False, moe=(128, 8, 768)),
    "tiny-qwen3-vl": lambda: _tiny_qwen3(moe=False),
    "tiny-qwen3-vl-moe": lambda: _tiny_qwen3(moe=True),
}
