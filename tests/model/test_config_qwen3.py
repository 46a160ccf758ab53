"""Qwen3-VL / Qwen3-VL-MoE configs: the published config.json spelling (nested, written by transformers
4.57: `rope_scaling` and `rope_theta` inside text_config, vision model_type "qwen3_vl"), what transformers
5.24 saves for it, the presets, parameter counts against transformers' own model, and the refusals.

The published dicts are written out field by field from the released checkpoints' config.json files
(docs/design.md, "Qwen3-VL"); the shapes per size are in RELEASED.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from hf_models import HF_CONFIG, HF_MODEL

from qwenvl_min import Config
from qwenvl_min.model.config import ConfigError
from qwenvl_min.weights_convert.mapping import expected_shapes

# preset -> (text layers, hidden, intermediate, heads, kv heads, tied, vision depth, width, mlp,
#            deepstack indexes, moe (experts, per token, expert width) or None)
RELEASED = {
    "qwen3-vl-2b": (28, 2048, 6144, 16, 8, True, 24, 1024, 4096, [5, 11, 17], None),
    "qwen3-vl-4b": (36, 2560, 9728, 32, 8, True, 24, 1024, 4096, [5, 11, 17], None),
    "qwen3-vl-8b": (36, 4096, 12288, 32, 8, False, 27, 1152, 4304, [8, 16, 24], None),
    "qwen3-vl-32b": (64, 5120, 25600, 64, 8, False, 27, 1152, 4304, [8, 16, 24], None),
    "qwen3-vl-30b-a3b": (48, 2048, 6144, 32, 4, False, 27, 1152, 4304, [8, 16, 24], (128, 8, 768)),
}


def published(name: str) -> dict:
    layers, hidden, inter, heads, kv, tied, depth, width, vmlp, deepstack, moe = RELEASED[name]
    family = "qwen3_vl_moe" if moe else "qwen3_vl"
    text = {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "dtype": "bfloat16",
        "eos_token_id": 151645,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "max_position_embeddings": 262144,
        "model_type": f"{family}_text",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
        "rope_theta": 5000000,
        "tie_word_embeddings": tied,
        "use_cache": True,
        "vocab_size": 151936,
    }
    if moe:
        experts, per_token, width_e = moe
        text.update(
            decoder_sparse_step=1,
            mlp_only_layers=[],
            moe_intermediate_size=width_e,
            norm_topk_prob=True,
            num_experts=experts,
            num_experts_per_tok=per_token,
            router_aux_loss_coef=0.001,
        )
    return {
        "architectures": ["Qwen3VLMoeForConditionalGeneration" if moe else "Qwen3VLForConditionalGeneration"],
        "image_token_id": 151655,
        "model_type": family,
        "text_config": text,
        "tie_word_embeddings": tied,
        "transformers_version": "4.57.0.dev0",
        "video_token_id": 151656,
        "vision_config": {
            "deepstack_visual_indexes": deepstack,
            "depth": depth,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": width,
            "in_channels": 3,
            "initializer_range": 0.02,
            "intermediate_size": vmlp,
            "model_type": family,
            "num_heads": 16,
            "num_position_embeddings": 2304,
            "out_hidden_size": hidden,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "vision_end_token_id": 151653,
        "vision_start_token_id": 151652,
    }


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_published_and_saved_give_the_preset(name: str, tmp_path) -> None:
    layers, hidden, inter, heads, kv, tied, depth, width, vmlp, deepstack, moe = RELEASED[name]
    source = published(name)
    HF_CONFIG[source["model_type"]](**source).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "rope_parameters" in saved["text_config"] and "rope_scaling" not in saved["text_config"]
    preset = Config.preset(name)
    assert Config.from_hf(source) == preset
    assert Config.from_hf(saved) == preset
    t, v = preset.text, preset.vision
    assert (t.num_layers, t.hidden_size, t.intermediate_size, t.num_heads, t.num_kv_heads, t.head_dim) == (
        layers,
        hidden,
        inter,
        heads,
        kv,
        128,
    )
    assert (t.rope_theta, t.mrope_section, t.mrope_axes, t.qk_norm, t.attention_bias) == (
        5e6,
        (24, 20, 20),
        "interleaved",
        True,
        False,
    )
    assert (t.tie_word_embeddings, t.max_position_embeddings, t.vocab_size) == (tied, 262144, 151936)
    assert (v.depth, v.width, v.mlp_hidden, v.num_heads, v.out_width, v.patch_size) == (
        depth,
        width,
        vmlp,
        16,
        hidden,
        16,
    )
    assert (list(v.deepstack_indexes), v.num_position_embeddings, v.position_grid_side) == (
        deepstack,
        2304,
        48,
    )
    if moe:
        assert (t.moe.num_experts, t.moe.experts_per_token, t.moe.expert_hidden) == moe
        assert t.moe.sparse_layers == tuple(range(layers))
    else:
        assert t.moe is None


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_parameter_count_matches_hf_model(name: str) -> None:
    """transformers' own model built from the published config on the meta device has our count."""
    source = published(name)
    with torch.device("meta"):
        hf = HF_MODEL[source["model_type"]](HF_CONFIG[source["model_type"]](**source))
    hf_count = sum(p.numel() for p in hf.parameters())  # a tied lm_head counted once
    ours = sum(math.prod(s) for s in expected_shapes(Config.preset(name)).values())
    assert hf_count == ours


def test_moe_layer_choice_and_spellings() -> None:
    """mlp_only_layers and decoder_sparse_step choose the dense layers as transformers does; the saved
    spelling num_local_experts and a missing head_dim (width / heads) are read like transformers reads them."""
    source = published("qwen3-vl-30b-a3b")
    text = source["text_config"]
    text.update(num_hidden_layers=6, mlp_only_layers=[4], decoder_sparse_step=2)
    text["num_local_experts"] = text.pop("num_experts")
    del text["head_dim"]
    text.update(num_attention_heads=16)  # 2048 / 16 = 128
    cfg = Config.from_hf(source)
    assert cfg.text.moe.sparse_layers == (1, 3, 5)  # (i + 1) % 2 == 0, minus layer 4 (dense anyway)
    assert cfg.text.moe.num_experts == 128 and cfg.text.head_dim == 128
    hf = HF_CONFIG["qwen3_vl_moe"](**source).text_config
    assert hf.head_dim == 128 and list(hf.mlp_only_layers) == [4]


def test_tie_flag_is_read_at_the_top_level_only() -> None:
    """transformers 5.24 ties Qwen3-VL's lm_head by the top-level flag; a text-level one is ignored."""
    source = published("qwen3-vl-8b")
    source["text_config"]["tie_word_embeddings"] = True
    assert not Config.from_hf(source).text.tie_word_embeddings
    source = published("qwen3-vl-2b")
    source["text_config"]["tie_word_embeddings"] = False
    assert Config.from_hf(source).text.tie_word_embeddings


def _edited(name: str, where: str, key: str, value: object) -> dict:
    source = published(name)
    node = source if where == "top" else source[where]
    if value is _DELETE:
        del node[key]
    else:
        node[key] = value
    return source


_DELETE = object()


@pytest.mark.parametrize(
    ("name", "where", "key", "value", "message"),
    [
        ("qwen3-vl-8b", "vision_config", "deepstack_visual_indexes", _DELETE, "'deepstack_visual_indexes' is missing"),
        ("qwen3-vl-8b", "vision_config", "out_hidden_size", _DELETE, "'out_hidden_size' is missing"),
        ("qwen3-vl-8b", "vision_config", "deepstack_visual_indexes", [8, 16, 27], r"outside 0\.\.26"),
        ("qwen3-vl-8b", "vision_config", "num_position_embeddings", 2300, "must be a square"),
        ("qwen3-vl-8b", "vision_config", "hidden_act", "gelu", "gelu_pytorch_tanh"),
        ("qwen3-vl-8b", "text_config", "head_dim", _DELETE, "'head_dim' is missing"),
        ("qwen3-vl-8b", "text_config", "attention_bias", True, "no projection biases"),
        ("qwen3-vl-8b", "text_config", "rope_scaling", {"rope_type": "yarn", "mrope_section": [24, 20, 20]}, "'yarn'"),
        ("qwen3-vl-8b", "text_config", "rope_scaling", {"rope_type": "default"}, "'mrope_section' is missing"),
        ("qwen3-vl-8b", "text_config", "rope_theta", _DELETE, "'rope_theta' is missing"),
        ("qwen3-vl-30b-a3b", "text_config", "norm_topk_prob", False, "always renormalises"),
        ("qwen3-vl-30b-a3b", "text_config", "output_router_logits", True, "auxiliary load-balancing loss"),
        ("qwen3-vl-30b-a3b", "text_config", "num_experts_per_tok", 200, "experts_per_token 200 > num_experts 128"),
        ("qwen3-vl-30b-a3b", "text_config", "moe_intermediate_size", _DELETE, "'moe_intermediate_size' is missing"),
    ],
)  # fmt: skip
def test_refusals_say_why(name, where, key, value, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_hf(_edited(name, where, key, value))


def test_model_types_and_moe_settings_must_agree() -> None:
    dense, moe = Config.preset("tiny-qwen3-vl"), Config.preset("tiny-qwen3-vl-moe")
    with pytest.raises(ConfigError, match="goes with model_type 'qwen3_vl_moe' only"):
        dataclasses.replace(dense, text=moe.text)
    with pytest.raises(ConfigError, match="goes with model_type 'qwen3_vl_moe' only"):
        dataclasses.replace(moe, text=dense.text)
    with pytest.raises(ConfigError, match="no Qwen2-VL / Qwen2.5-VL config spelling"):
        qwen2 = Config.preset("tiny-qwen2-vl")
        dataclasses.replace(qwen2, text=dataclasses.replace(qwen2.text, qk_norm=True)).to_hf()
