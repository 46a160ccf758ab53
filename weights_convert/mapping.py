"""Two-way mapping between Hugging Face Qwen2-VL / Qwen2.5-VL state dicts and ours.

Pure functions on names and tensors, used by `QwenVL.from_hf` and by the file converter, so a model built
in memory and a converted checkpoint always agree.

HF keys come in two layouts (DESIGN.md section 3): published checkpoints use `visual.*`, `model.*`,
`lm_head.*`; transformers 5 in memory uses `model.visual.*`, `model.language_model.*`, `lm_head.*`.
Both are first brought to the published ("canonical") form, then renamed by the table below.

| HF (published)                                     | ours                                        |
|----------------------------------------------------|---------------------------------------------|
| visual.patch_embed.proj.weight (D, 3, 2, 14, 14)   | visual.patch_embed.weight (D, 1176)         |
| visual.blocks.{i}.{norm1,norm2,attn,mlp}.*         | visual.blocks.{i}.{norm1,norm2,attn,mlp}.*  |
| visual.merger.ln_q.*                               | visual.merger.norm.*                        |
| visual.merger.mlp.0.* / visual.merger.mlp.2.*      | visual.merger.fc1.* / visual.merger.fc2.*   |
| model.embed_tokens.weight                          | text.embed_tokens.weight                    |
| model.layers.{i}.self_attn.{q,k,v,o}_proj.*        | text.layers.{i}.attn.{q,k,v,o}_proj.*       |
| model.layers.{i}.input_layernorm.weight            | text.layers.{i}.attn_norm.weight            |
| model.layers.{i}.post_attention_layernorm.weight   | text.layers.{i}.mlp_norm.weight             |
| model.layers.{i}.mlp.{gate,up,down}_proj.weight    | text.layers.{i}.mlp.{gate,up,down}_proj.weight |
| model.norm.weight                                  | text.norm.weight                            |
| lm_head.weight (absent when tied)                  | lm_head.weight (absent when tied)           |

Dropped on purpose: rotary `inv_freq` / `original_inv_freq` buffers (recomputed from the config), and a
tied `lm_head.weight` (it must then equal the embeddings). The patch-embedding Conv3d has kernel = stride
and no bias, so it is exactly a Linear on the flattened (C, T, P, P) patch; the reshape is bit-exact.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from ..config import Config

# (pattern on the canonical HF key, replacement giving our key); first match wins
_HF_TO_OURS: tuple[tuple[str, str], ...] = (
    (r"^visual\.patch_embed\.proj\.weight$", "visual.patch_embed.weight"),
    (r"^visual\.merger\.ln_q\.(weight|bias)$", r"visual.merger.norm.\1"),
    (r"^visual\.merger\.mlp\.0\.(weight|bias)$", r"visual.merger.fc1.\1"),
    (r"^visual\.merger\.mlp\.2\.(weight|bias)$", r"visual.merger.fc2.\1"),
    (
        r"^visual\.blocks\.(\d+)\.((?:norm1|norm2|attn\.qkv|attn\.proj|mlp\.\w+)\.(?:weight|bias))$",
        r"visual.blocks.\1.\2",
    ),
    (r"^model\.embed_tokens\.weight$", "text.embed_tokens.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.([qkvo]_proj\.(?:weight|bias))$", r"text.layers.\1.attn.\2"),
    (r"^model\.layers\.(\d+)\.input_layernorm\.weight$", r"text.layers.\1.attn_norm.weight"),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$", r"text.layers.\1.mlp_norm.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.((?:gate|up|down)_proj\.weight)$", r"text.layers.\1.mlp.\2"),
    (r"^model\.norm\.weight$", "text.norm.weight"),
    (r"^lm_head\.weight$", "lm_head.weight"),
)
_OURS_TO_HF: tuple[tuple[str, str], ...] = (
    (r"^visual\.patch_embed\.weight$", "visual.patch_embed.proj.weight"),
    (r"^visual\.merger\.norm\.(weight|bias)$", r"visual.merger.ln_q.\1"),
    (r"^visual\.merger\.fc1\.(weight|bias)$", r"visual.merger.mlp.0.\1"),
    (r"^visual\.merger\.fc2\.(weight|bias)$", r"visual.merger.mlp.2.\1"),
    (r"^visual\.blocks\.(.+)$", r"visual.blocks.\1"),
    (r"^text\.embed_tokens\.weight$", "model.embed_tokens.weight"),
    (r"^text\.layers\.(\d+)\.attn\.(.+)$", r"model.layers.\1.self_attn.\2"),
    (r"^text\.layers\.(\d+)\.attn_norm\.weight$", r"model.layers.\1.input_layernorm.weight"),
    (r"^text\.layers\.(\d+)\.mlp_norm\.weight$", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"^text\.layers\.(\d+)\.mlp\.(.+)$", r"model.layers.\1.mlp.\2"),
    (r"^text\.norm\.weight$", "model.norm.weight"),
    (r"^lm_head\.weight$", "lm_head.weight"),
)
_DROPPED = re.compile(r"(^|\.)(inv_freq|original_inv_freq)$")
PATCH_EMBED_KEY = "visual.patch_embed.weight"


class MappingError(ValueError):
    """A state dict does not match the config: names the offending keys."""


def canonical_hf_key(key: str) -> str:
    """Bring a transformers-5 in-memory key (`model.visual.*`, `model.language_model.*`) to the
    published layout (`visual.*`, `model.*`); published keys pass through unchanged."""
    if key.startswith("model.visual."):
        return key[len("model.") :]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model.") :]
    return key


def hf_key_to_ours(key: str) -> str | None:
    """Our key for an HF key in either layout; None for keys dropped on purpose; MappingError if unknown."""
    key = canonical_hf_key(key)
    if _DROPPED.search(key):
        return None
    for pattern, replacement in _HF_TO_OURS:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    raise MappingError(f"unknown Hugging Face key {key!r}: not part of a Qwen2-VL / Qwen2.5-VL checkpoint")


def our_key_to_hf(key: str) -> str:
    """The published HF key for one of our keys."""
    for pattern, replacement in _OURS_TO_HF:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    raise MappingError(f"unknown qwenvl-min key {key!r}")


def hf_tensor_to_ours(our_key: str, tensor: Tensor) -> Tensor:
    if our_key == PATCH_EMBED_KEY:
        return tensor.reshape(tensor.shape[0], -1)  # (D, C, T, P, P) -> (D, C*T*P*P)
    return tensor


def our_tensor_to_hf(config: Config, our_key: str, tensor: Tensor) -> Tensor:
    if our_key == PATCH_EMBED_KEY:
        v = config.vision
        return tensor.reshape(
            tensor.shape[0], v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size
        )
    return tensor


def expected_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Every key of our state dict with its shape, derived from the config alone."""
    v, t = config.vision, config.text
    shapes: dict[str, tuple[int, ...]] = {PATCH_EMBED_KEY: (v.width, v.patch_dim)}
    for i in range(v.depth):
        p = f"visual.blocks.{i}."
        for norm in ("norm1", "norm2"):
            shapes[p + norm + ".weight"] = (v.width,)
            if v.family == "qwen2_vl":
                shapes[p + norm + ".bias"] = (v.width,)
        shapes[p + "attn.qkv.weight"] = (3 * v.width, v.width)
        shapes[p + "attn.qkv.bias"] = (3 * v.width,)
        shapes[p + "attn.proj.weight"] = (v.width, v.width)
        shapes[p + "attn.proj.bias"] = (v.width,)
        if v.family == "qwen2_vl":
            shapes[p + "mlp.fc1.weight"], shapes[p + "mlp.fc1.bias"] = (
                (v.mlp_hidden, v.width),
                (v.mlp_hidden,),
            )
            shapes[p + "mlp.fc2.weight"], shapes[p + "mlp.fc2.bias"] = (v.width, v.mlp_hidden), (v.width,)
        else:
            for name in ("gate_proj", "up_proj"):
                shapes[p + f"mlp.{name}.weight"], shapes[p + f"mlp.{name}.bias"] = (
                    (v.mlp_hidden, v.width),
                    (v.mlp_hidden,),
                )
            shapes[p + "mlp.down_proj.weight"], shapes[p + "mlp.down_proj.bias"] = (
                (v.width, v.mlp_hidden),
                (v.width,),
            )
    merged = v.width * v.merge_size**2
    shapes["visual.merger.norm.weight"] = (v.width,)
    if v.family == "qwen2_vl":
        shapes["visual.merger.norm.bias"] = (v.width,)
    shapes["visual.merger.fc1.weight"], shapes["visual.merger.fc1.bias"] = (merged, merged), (merged,)
    shapes["visual.merger.fc2.weight"], shapes["visual.merger.fc2.bias"] = (
        (v.out_width, merged),
        (v.out_width,),
    )

    q_width, kv_width = t.num_heads * t.head_dim, t.num_kv_heads * t.head_dim
    shapes["text.embed_tokens.weight"] = (t.vocab_size, t.hidden_size)
    for i in range(t.num_layers):
        p = f"text.layers.{i}."
        shapes[p + "attn_norm.weight"] = (t.hidden_size,)
        shapes[p + "mlp_norm.weight"] = (t.hidden_size,)
        for name, width in (("q_proj", q_width), ("k_proj", kv_width), ("v_proj", kv_width)):
            shapes[p + f"attn.{name}.weight"], shapes[p + f"attn.{name}.bias"] = (
                (width, t.hidden_size),
                (width,),
            )
        shapes[p + "attn.o_proj.weight"] = (t.hidden_size, q_width)
        shapes[p + "mlp.gate_proj.weight"] = (t.intermediate_size, t.hidden_size)
        shapes[p + "mlp.up_proj.weight"] = (t.intermediate_size, t.hidden_size)
        shapes[p + "mlp.down_proj.weight"] = (t.hidden_size, t.intermediate_size)
    shapes["text.norm.weight"] = (t.hidden_size,)
    if not t.tie_word_embeddings:
        shapes["lm_head.weight"] = (t.vocab_size, t.hidden_size)
    return shapes


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
        problems.append(f"missing keys {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_preview(unexpected)}")
    if wrong:
        problems.append(f"shapes that do not match the config {_preview(wrong)}")
    if problems:
        raise MappingError(f"{what} does not match the config: " + "; ".join(problems))


def _preview(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"


def hf_state_dict_to_ours(config: Config, hf_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strict conversion of a whole HF state dict (either layout) to ours."""
    ours: dict[str, Tensor] = {}
    sources: dict[str, str] = {}
    unknown = []
    for hf_key, tensor in hf_state.items():
        try:
            key = hf_key_to_ours(hf_key)
        except MappingError:
            unknown.append(hf_key)
            continue
        if key is None:
            continue
        if key in ours:
            raise MappingError(f"keys {sources[key]!r} and {hf_key!r} both map to {key!r}")
        ours[key], sources[key] = hf_tensor_to_ours(key, tensor), hf_key
    if unknown:
        raise MappingError(f"unknown Hugging Face keys {_preview(sorted(unknown))}")
    if config.text.tie_word_embeddings and "lm_head.weight" in ours:
        lm_head = ours.pop("lm_head.weight")
        embed = ours.get("text.embed_tokens.weight")
        if embed is not None and not torch.equal(lm_head, embed):
            raise MappingError("config ties lm_head to the embeddings but lm_head.weight differs from them")
    check_state_dict(config, ours)
    return ours


def our_state_dict_to_hf(config: Config, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict in the published HF layout (what `save_pretrained` writes; tied lm_head omitted)."""
    check_state_dict(config, state)
    return {our_key_to_hf(k): our_tensor_to_hf(config, k, t) for k, t in state.items()}
