"""Config: HF config.json dicts in both layouts, presets vs published parameter counts, and to_hf round trips.

The "published" flat dicts below are written out by hand from the released checkpoints' config.json
files (docs/design.md, "Traps we found"): text fields at the top level, legacy
`rope_scaling: {type: mrope, mrope_section}`, and a vision_config with the old spellings (`in_chans`,
`spatial_patch_size`, model_type "qwen2_vl" / "qwen2_5_vl"). The nested dicts are what transformers 5
`save_pretrained` writes for the same configs.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hf_models import HF_CONFIG, HF_MODEL, QWEN3

from qwenvl_min import Config
from qwenvl_min.model.config import PRESETS
from qwenvl_min.weights_convert.mapping import expected_shapes

# preset -> (family, layers, hidden, intermediate, heads, kv heads, vocab, tied, vision MLP, max positions,
#            max_window_layers, published total parameters)
RELEASED = {
    "qwen2-vl-2b": ("qwen2_vl", 28, 1536, 8960, 12, 2, 151936, True, 5120, 32768, 28, 2_208_985_600),
    "qwen2-vl-7b": ("qwen2_vl", 28, 3584, 18944, 28, 4, 152064, False, 5120, 32768, 28, 8_291_375_616),
    "qwen2-vl-72b": ("qwen2_vl", 80, 8192, 29568, 64, 8, 152064, False, 5120, 32768, 80, 73_405_560_320),
    "qwen2.5-vl-3b": ("qwen2_5_vl", 36, 2048, 11008, 16, 2, 151936, True, 3420, 128000, 70, 3_754_622_976),
    "qwen2.5-vl-7b": ("qwen2_5_vl", 28, 3584, 18944, 28, 4, 152064, False, 3420, 128000, 28, 8_292_166_656),
    "qwen2.5-vl-72b": ("qwen2_5_vl", 80, 8192, 29568, 64, 8, 152064, False, 3456, 128000, 80, 73_410_777_344),
}


def published_flat(name: str) -> dict:
    family, layers, hidden, inter, heads, kv, vocab, tied, vmlp, max_pos, mwl, _ = RELEASED[name]
    if family == "qwen2_vl":
        vision = {
            "depth": 32,
            "embed_dim": 1280,
            "mlp_ratio": 4,
            "num_heads": 16,
            "in_chans": 3,
            "hidden_size": hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
            "model_type": "qwen2_vl",
        }
        arch = "Qwen2VLForConditionalGeneration"
    else:
        vision = {
            "depth": 32,
            "hidden_act": "silu",
            "hidden_size": 1280,
            "intermediate_size": vmlp,
            "num_heads": 16,
            "in_chans": 3,
            "out_hidden_size": hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2,
            "temporal_patch_size": 2,
            "model_type": "qwen2_5_vl",
        }
        arch = "Qwen2_5_VLForConditionalGeneration"
    return {
        "architectures": [arch],
        "model_type": family,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "max_position_embeddings": max_pos,
        "max_window_layers": mwl,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": vision,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "vocab_size": vocab,
    }


def saved_nested(flat: dict, tmp_path) -> dict:
    """What transformers 5 writes with save_pretrained for the same config."""
    HF_CONFIG[flat["model_type"]](**flat).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert isinstance(saved.get("text_config"), dict) and "rope_scaling" not in saved  # really nested
    return saved


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_flat_and_nested_give_the_preset(name: str, tmp_path) -> None:
    family, layers, hidden, inter, heads, kv, vocab, tied, vmlp, max_pos, _, _ = RELEASED[name]
    flat = published_flat(name)
    from_flat = Config.from_hf(flat)
    from_nested = Config.from_hf(saved_nested(flat, tmp_path))
    preset = Config.preset(name)
    assert from_flat == preset
    assert from_nested == preset
    # spot-check the fields against the table directly (not only against our own preset)
    t, v = from_flat.text, from_flat.vision
    assert (t.num_layers, t.hidden_size, t.intermediate_size, t.num_heads, t.num_kv_heads) == (
        layers,
        hidden,
        inter,
        heads,
        kv,
    )
    assert (t.vocab_size, t.tie_word_embeddings, t.rms_norm_eps, t.rope_theta) == (vocab, tied, 1e-6, 1e6)
    assert t.mrope_section == (16, 24, 24) and t.head_dim == 128 and t.max_position_embeddings == max_pos
    assert (v.family, v.depth, v.width, v.num_heads, v.mlp_hidden, v.out_width) == (
        family,
        32,
        1280,
        16,
        vmlp,
        hidden,
    )
    assert (v.patch_size, v.temporal_patch_size, v.merge_size, v.in_channels, v.head_dim) == (14, 2, 2, 3, 80)
    if family == "qwen2_5_vl":
        assert (v.window_size, v.fullatt_block_indexes, v.tokens_per_second) == (112, (7, 15, 23, 31), 2.0)
    ids = (
        from_flat.image_token_id,
        from_flat.video_token_id,
        from_flat.vision_start_token_id,
        from_flat.vision_end_token_id,
    )
    assert ids == (151655, 151656, 151652, 151653)
    assert (from_flat.bos_token_id, from_flat.eos_token_id) == (151643, 151645)


def test_tie_flag_in_pre_v5_text_config() -> None:
    """Pre-v5 nested layouts kept tie_word_embeddings on the text config only."""
    cfg = Config.preset("qwen2-vl-2b").to_hf()
    cfg["tie_word_embeddings"] = False
    cfg["text_config"]["tie_word_embeddings"] = True
    assert Config.from_hf(cfg).text.tie_word_embeddings


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_preset_parameter_counts(name: str) -> None:
    total = sum(math.prod(shape) for shape in expected_shapes(Config.preset(name)).values())
    assert total == RELEASED[name][-1]


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_parameter_count_matches_hf_model(name: str) -> None:
    """HF's own model built from the published config on the meta device (no memory) has the same count."""
    flat = published_flat(name)
    with torch.device("meta"):
        hf = HF_MODEL[flat["model_type"]](HF_CONFIG[flat["model_type"]](**flat))
    hf_count = sum(p.numel() for p in hf.parameters())  # tied lm_head counted once
    ours = sum(math.prod(s) for s in expected_shapes(Config.preset(name)).values())
    assert hf_count == ours == RELEASED[name][-1]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_to_hf_round_trips_through_hf_config_classes(name: str, tmp_path) -> None:
    cfg = Config.preset(name)
    hf_cfg = HF_CONFIG[cfg.model_type](**cfg.to_hf())
    assert Config.from_hf(cfg.to_hf()) == cfg
    assert Config.from_hf(hf_cfg.to_dict()) == cfg
    hf_cfg.save_pretrained(tmp_path)
    assert Config.from_hf(json.loads((tmp_path / "config.json").read_text())) == cfg
    # HF reads every shape-deciding field from to_hf() (no silent class defaults)
    text, vision = hf_cfg.text_config, hf_cfg.vision_config
    # Qwen3-VL ties through the top-level flag only (its text config has none)
    tie = hf_cfg.tie_word_embeddings if cfg.model_type in QWEN3 else text.tie_word_embeddings
    assert (text.rms_norm_eps, text.num_key_value_heads, tie) == (
        cfg.text.rms_norm_eps,
        cfg.text.num_kv_heads,
        cfg.text.tie_word_embeddings,
    )
    assert list(text.rope_parameters["mrope_section"]) == list(cfg.text.mrope_section)
    if cfg.model_type in QWEN3:
        assert (vision.hidden_size, vision.out_hidden_size, list(vision.deepstack_visual_indexes)) == (
            cfg.vision.width,
            cfg.vision.out_width,
            list(cfg.vision.deepstack_indexes),
        )
        assert (text.head_dim, vision.num_position_embeddings) == (
            cfg.text.head_dim,
            cfg.vision.num_position_embeddings,
        )
    elif cfg.model_type == "qwen2_5_vl":
        assert (vision.hidden_size, vision.tokens_per_second, list(vision.fullatt_block_indexes)) == (
            cfg.vision.width,
            cfg.vision.tokens_per_second,
            list(cfg.vision.fullatt_block_indexes),
        )
    else:
        assert (vision.embed_dim, vision.hidden_size) == (cfg.vision.width, cfg.vision.out_width)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_our_dict_round_trip(name: str) -> None:
    cfg = Config.preset(name)
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
