"""Two-way mapping between Hugging Face Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3-VL-MoE state dicts and ours.

Pure functions on names and tensors, used by `QwenVL.from_hf` and by the file converter, so a model built
in memory and a converted checkpoint always agree.

HF keys come in two namings: the published Qwen2-VL / Qwen2.5-VL checkpoints use `visual.*`, `model.*`,
`lm_head.*`; transformers 5 in memory (and the published Qwen3-VL checkpoints) use `model.visual.*`,
`model.language_model.*`, `lm_head.*`. Both are first brought to one ("canonical") form, `visual.*` /
`model.*`, then renamed by `KEY_TABLE` (the one key table; export inverts it and writes each family's
published naming). Rows name the families they belong to where the HF spellings differ (Qwen3-VL's
`linear_fc1` is our `fc1`, as Qwen2-VL's `fc1` and Qwen2.5-VL's merger `mlp.0` are). Our own keys and
shapes are the model's: `expected_shapes` builds it on the meta device.

Dropped on purpose: rotary `inv_freq` / `original_inv_freq` buffers (recomputed from the config), and a
tied `lm_head.weight` (it must then equal the embeddings). The patch-embedding Conv3d has kernel = stride,
so it is exactly a Linear on the flattened (C, T, P, P) patch; the reshape is bit-exact. Qwen3-VL-MoE's
fused experts: the published files store `gate_up_proj` (n, E, 2I) and `down_proj` (n, I, E), the
transpose of transformers' in-memory (and our) (n, 2I, E) / (n, E, I); a stored tensor whose shape is the
transpose of ours is transposed on load (transformers 5.24's rule, which cannot tell the two apart when
E == 2I or E == I), and export writes the in-memory layout that transformers' own save_pretrained writes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from ..model.config import FAMILIES, QWEN3, Config
from ..model.qwenvl import QwenVL

QWEN2 = ("qwen2_vl", "qwen2_5_vl")
MOE = ("qwen3_vl_moe",)

# THE key table: (canonical HF template, our template, the families whose checkpoints spell it so);
# None = dropped on purpose. Placeholders: {i} a layer / level index, {p} weight|bias, {leaf} the rest of
# a key that both sides spell alike. The first matching row wins; export inverts the family's rows.
KEY_TABLE: tuple[tuple[str, str | None, tuple[str, ...]], ...] = (
    ("visual.patch_embed.proj.weight", "visual.patch_embed.weight", FAMILIES),
    ("visual.patch_embed.proj.bias", "visual.patch_embed.bias", QWEN3),
    ("visual.pos_embed.weight", "visual.pos_embed.weight", QWEN3),
    ("visual.blocks.{i}.mlp.linear_fc1.{p}", "visual.blocks.{i}.mlp.fc1.{p}", QWEN3),
    ("visual.blocks.{i}.mlp.linear_fc2.{p}", "visual.blocks.{i}.mlp.fc2.{p}", QWEN3),
    ("visual.blocks.{i}.{leaf}", "visual.blocks.{i}.{leaf}", FAMILIES),
    ("visual.merger.ln_q.{p}", "visual.merger.norm.{p}", QWEN2),
    ("visual.merger.mlp.0.{p}", "visual.merger.fc1.{p}", QWEN2),
    ("visual.merger.mlp.2.{p}", "visual.merger.fc2.{p}", QWEN2),
    ("visual.merger.norm.{p}", "visual.merger.norm.{p}", QWEN3),
    ("visual.merger.linear_fc1.{p}", "visual.merger.fc1.{p}", QWEN3),
    ("visual.merger.linear_fc2.{p}", "visual.merger.fc2.{p}", QWEN3),
    ("visual.deepstack_merger_list.{i}.norm.{p}", "visual.deepstack_mergers.{i}.norm.{p}", QWEN3),
    ("visual.deepstack_merger_list.{i}.linear_fc1.{p}", "visual.deepstack_mergers.{i}.fc1.{p}", QWEN3),
    ("visual.deepstack_merger_list.{i}.linear_fc2.{p}", "visual.deepstack_mergers.{i}.fc2.{p}", QWEN3),
    ("model.embed_tokens.weight", "text.embed_tokens.weight", FAMILIES),
    ("model.layers.{i}.self_attn.{leaf}", "text.layers.{i}.attn.{leaf}", FAMILIES),
    ("model.layers.{i}.input_layernorm.weight", "text.layers.{i}.attn_norm.weight", FAMILIES),
    ("model.layers.{i}.post_attention_layernorm.weight", "text.layers.{i}.mlp_norm.weight", FAMILIES),
    ("model.layers.{i}.mlp.gate.weight", "text.layers.{i}.mlp.router.weight", MOE),
    ("model.layers.{i}.mlp.{leaf}", "text.layers.{i}.mlp.{leaf}", FAMILIES),
    ("model.norm.weight", "text.norm.weight", FAMILIES),
    ("lm_head.weight", "lm_head.weight", FAMILIES),
    ("{leaf}.inv_freq", None, FAMILIES),  # rotary buffers: recomputed from the config
    ("{leaf}.original_inv_freq", None, FAMILIES),
)
_PLACEHOLDER = {"i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)", "leaf": r"(?P<leaf>[\w.]+?)"}
PATCH_EMBED_KEY = "visual.patch_embed.weight"
EXPERT_KEYS = re.compile(r"^text\.layers\.\d+\.mlp\.experts\.(gate_up_proj|down_proj)$")


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)  # literal, name, literal, name, ...
    regex = "".join(_PLACEHOLDER[part] if i % 2 else re.escape(part) for i, part in enumerate(parts))
    return re.compile(f"^{regex}$")


_TO_OURS = [(_compile(hf), ours, families) for hf, ours, families in KEY_TABLE]
_TO_HF = [(_compile(ours), hf, families) for hf, ours, families in KEY_TABLE if ours is not None]


def _translate(
    key: str, rules: list[tuple[re.Pattern[str], str | None, tuple[str, ...]]], family: str | None
) -> tuple[bool, str | None]:
    for pattern, template, families in rules:
        if family is not None and family not in families:
            continue
        match = pattern.match(key)
        if match:
            return True, None if template is None else template.format(**match.groupdict())
    return False, None


class MappingError(ValueError):
    """A state dict does not match the config: names the offending keys."""


def canonical_hf_key(key: str) -> str:
    """Bring a transformers-5 in-memory key (`model.visual.*`, `model.language_model.*`) to the
    canonical naming (`visual.*`, `model.*`); keys already in it pass through unchanged."""
    if key.startswith("model.visual."):
        return key[len("model.") :]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model.") :]
    return key


def published_hf_key(model_type: str, key: str) -> str:
    """A canonical key in the naming the family's published checkpoints use: Qwen3-VL's files keep
    transformers' in-memory naming (`model.visual.*`, `model.language_model.*`), the Qwen2 families' the
    canonical one."""
    if model_type not in QWEN3:
        return key
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model."):
        return "model.language_model." + key[len("model.") :]
    return key


def hf_key_to_ours(key: str, model_type: str | None = None) -> str | None:
    """Our key for an HF key in either naming; None for keys dropped on purpose; MappingError if unknown.

    With `model_type`, only that family's spellings are accepted (what loading does); None accepts any."""
    key = canonical_hf_key(key)
    found, ours = _translate(key, _TO_OURS, model_type)
    if not found:
        raise MappingError(
            f"unknown Hugging Face key {key!r}: not part of a {_family_names(model_type)} checkpoint"
        )
    return ours


def _family_names(model_type: str | None) -> str:
    if model_type is None:
        return "Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3-VL-MoE"
    return "Qwen3-VL / Qwen3-VL-MoE" if model_type in QWEN3 else "Qwen2-VL / Qwen2.5-VL"


def our_key_to_hf(key: str, model_type: str) -> str:
    """The HF key, in the family's published naming, for one of our keys."""
    found, hf = _translate(key, _TO_HF, model_type)
    if not found or hf is None:
        raise MappingError(f"unknown qwenvl-min key {key!r} for {model_type}")
    return published_hf_key(model_type, hf)


def hf_tensor_to_ours(config: Config, our_key: str, tensor: Tensor) -> Tensor:
    """A stored HF tensor as our parameter `our_key` holds it (a view where nothing moves)."""
    if our_key == PATCH_EMBED_KEY:
        return tensor.reshape(tensor.shape[0], -1)  # (D, C, T, P, P) -> (D, C*T*P*P)
    if EXPERT_KEYS.match(our_key):
        expected = expected_shapes(config).get(our_key)
        if expected is not None and tuple(tensor.shape) != expected:
            if tuple(tensor.transpose(1, 2).shape) == expected:  # the published layout
                return tensor.transpose(1, 2).contiguous()
    return tensor


def our_tensor_to_hf(config: Config, our_key: str, tensor: Tensor) -> Tensor:
    if our_key == PATCH_EMBED_KEY:
        v = config.vision
        return tensor.reshape(
            tensor.shape[0], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size
        )
    return tensor


def expected_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Every key of our state dict with its shape: the model itself, built on the meta device."""
    return dict(_expected_shapes(config))


@cache
def _expected_shapes(config: Config) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        model = QwenVL(config, kernels="torch")
    return tuple((key, tuple(t.shape)) for key, t in model.state_dict().items())


def check_state_dict(config: Config, state: Mapping[str, Tensor]) -> None:
    """Raise MappingError naming every missing, unexpected or mis-shaped key of our state dict."""
    check_shapes(config, {k: tuple(v.shape) for k, v in state.items()})


def check_shapes(config: Config, shapes: Mapping[str, tuple[int, ...]], what: str = "state dict") -> None:
    """`check_state_dict` on shapes alone, so files can be checked from their headers before any read."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(
        f"{k}: {tuple(shapes[k])} != {expected[k]}"
        for k in set(expected) & set(shapes)
        if tuple(shapes[k]) != expected[k]
    )
    problems = []
    if missing:
        named = [
            f"{key} ({our_key_to_hf(key, config.model_type)})" for key in missing
        ]  # the HF name is what a user can look for
        problems.append(f"missing keys {_preview(named)}")
    if unexpected:
        problems.append(f"unexpected keys {_preview(unexpected)}")
    if wrong:
        problems.append(f"shapes that do not match the config {_preview(wrong)}")
    if problems:
        raise MappingError(f"{what} does not match the config: " + "; ".join(problems))


def _preview(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"


@dataclass(frozen=True)
class WeightPlan:
    """Where each of our tensors comes from in an HF checkpoint, decided from key names and shapes."""

    sources: dict[str, str]  # our key -> HF key, in our state-dict order
    dropped: list[str]  # HF keys left out on purpose (rotary buffers, a tied lm_head)
    tied_lm_head: str | None  # HF key of a stored lm_head that a tied config drops: must equal the embeddings


def plan_hf_to_ours(
    config: Config, hf_shapes: Mapping[str, tuple[int, ...]], what: str = "state dict"
) -> WeightPlan:
    """The strict plan shared by `hf_state_dict_to_ours` and the file converter: every HF key mapped or
    dropped on purpose, none produced twice, nothing missing, every shape as the config says."""
    expected = expected_shapes(config)
    sources: dict[str, str] = {}
    dropped, unknown, tied = [], [], None
    for hf_key in hf_shapes:
        try:
            key = hf_key_to_ours(hf_key, config.model_type)
        except MappingError:
            key = ""
        if key is None:
            dropped.append(hf_key)
        elif key == "lm_head.weight" and config.text.tie_word_embeddings:
            tied = hf_key  # a tied model may still store lm_head: redundant only if it equals the embeddings
            dropped.append(hf_key)
        elif key not in expected:  # not in the table, or e.g. a block index beyond the config's depth
            unknown.append(hf_key)
        elif key in sources:
            raise MappingError(f"keys {sources[key]!r} and {hf_key!r} both map to {key!r}")
        else:
            sources[key] = hf_key
    if unknown:
        raise MappingError(
            f"not part of a {_family_names(config.model_type)} checkpoint with this config: unknown Hugging Face keys "
            f"{_preview(sorted(unknown))}"
        )
    shapes = {key: _our_shape(config, key, hf_shapes[hf_key]) for key, hf_key in sources.items()}
    check_shapes(config, shapes, what)
    return WeightPlan({key: sources[key] for key in expected}, sorted(dropped), tied)


def _our_shape(config: Config, our_key: str, hf_shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(hf_tensor_to_ours(config, our_key, torch.empty(hf_shape, device="meta")).shape)


def hf_state_dict_to_ours(config: Config, hf_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strict conversion of a whole HF state dict (either naming) to ours (tensors are not copied)."""
    plan = plan_hf_to_ours(config, {key: tuple(t.shape) for key, t in hf_state.items()})
    if plan.tied_lm_head is not None:
        embed = hf_state[plan.sources["text.embed_tokens.weight"]]
        if not torch.equal(hf_state[plan.tied_lm_head], embed):
            raise MappingError("config ties lm_head to the embeddings but lm_head.weight differs from them")
    return {key: hf_tensor_to_ours(config, key, hf_state[hf_key]) for key, hf_key in plan.sources.items()}


def our_state_dict_to_hf(config: Config, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict in the family's published HF naming (tied lm_head omitted)."""
    check_state_dict(config, state)
    return {our_key_to_hf(k, config.model_type): our_tensor_to_hf(config, k, t) for k, t in state.items()}
