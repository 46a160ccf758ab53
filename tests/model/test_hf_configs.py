"""Configs transformers 5.24 accepts: the ones its own model testers build load and give HF's logits; the
ones we refuse say why (each refusal is listed in docs/hf.md)."""

from __future__ import annotations

import pytest
import torch
from hf_models import randomize_
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from qwenvl_min import Config, ConfigError, QwenVL

TEXT = dict(
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=2,
    hidden_act="silu",
    hidden_size=32,
    vocab_size=99,
    intermediate_size=37,
    max_position_embeddings=512,
    max_window_layers=3,
    num_attention_heads=4,
    num_hidden_layers=2,
    num_key_value_heads=2,
    rope_theta=10000,
    tie_word_embeddings=True,
)
IDS = dict(vision_start_token_id=3, image_token_id=4, video_token_id=5)  # vision_end stays 151653 > vocab


def hf_tester_config(family: str):
    """What transformers' Qwen2VLVisionText2TextModelTester / Qwen2_5_VL tester build (tests/models/...):
    spatial_merge_size 1, head_dim 8, a vision_end id above the vocabulary and, for 2.5, the released
    fullatt_block_indexes [7, 15, 23, 31] with depth 2 and the class-default tokens_per_second 4."""
    if family == "qwen2_vl":
        text = dict(TEXT, rope_parameters={"type": "mrope", "mrope_section": [2, 1, 1], "rope_theta": 10000})
        vision = dict(
            depth=2, embed_dim=32, hidden_act="quick_gelu", hidden_size=32, mlp_ratio=4, num_heads=4
        )
        return Qwen2VLConfig(
            text_config=text,
            vision_config=dict(vision, patch_size=14, spatial_merge_size=1, temporal_patch_size=2),
            **IDS,
        )
    text = dict(TEXT, rope_parameters={"type": "mrope", "mrope_section": [1, 1, 2], "rope_theta": 10000})
    vision = dict(depth=2, in_chans=3, hidden_act="silu", intermediate_size=32, out_hidden_size=32)
    vision |= dict(hidden_size=32, num_heads=4, patch_size=14, spatial_patch_size=14)
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=dict(vision, spatial_merge_size=1, temporal_patch_size=2), **IDS
    )


HF_MODEL = {"qwen2_vl": Qwen2VLForConditionalGeneration, "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_model_tester_configs_load_and_match(family):
    hf_cfg = hf_tester_config(family)
    hf = HF_MODEL[family]._from_config(hf_cfg, attn_implementation="sdpa").eval()
    randomize_(hf, seed=0)
    ours = QwenVL.from_hf(hf_cfg, hf.state_dict())
    assert ours.config.vision.merge_size == 1 and ours.config.vision.fullatt_block_indexes == ()
    # text, an image of 4 x 6 patches (merge 1: 24 tokens, one block each), text, a 2-frame video
    image, video = [1, 4, 6], [2, 2, 4]
    ids = [7, 8, 3] + [4] * 24 + [9, 10, 3] + [5] * 16 + [11]
    input_ids = torch.tensor([ids])
    types = torch.tensor([[1 if i == 4 else 2 if i == 5 else 0 for i in ids]])
    gen = torch.Generator().manual_seed(0)
    batch = dict(
        input_ids=input_ids,
        mm_token_type_ids=types,
        pixel_values=torch.randn(24, 1176, generator=gen),
        image_grid_thw=torch.tensor([image]),
        pixel_values_videos=torch.randn(16, 1176, generator=gen),
        video_grid_thw=torch.tensor([video]),
    )
    if family == "qwen2_5_vl":
        batch["second_per_grid_ts"] = torch.tensor([0.5])
    with torch.no_grad():
        got, want = ours(**batch).logits, hf(**batch).logits
    # fp32 both sides, same weights: summation-order noise only (~1e-6 of the logit scale here)
    assert (got - want).abs().max() <= 1e-5 * max(1.0, want.abs().max().item())


def _dict(family: str) -> dict:
    return hf_tester_config(family).to_dict()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["text_config"]["rope_parameters"].update(rope_type="yarn"), "rope type 'yarn'"),
        (lambda d: d["text_config"].update(attention_dropout=0.1), "attention_dropout 0.1"),
        (lambda d: d["text_config"].update(use_sliding_window=True), "use_sliding_window"),
        (lambda d: d["text_config"].update(hidden_act="gelu"), "text hidden_act 'gelu'"),
        (lambda d: d["vision_config"].update(hidden_act="gelu"), "vision hidden_act 'gelu'"),
        (lambda d: d["text_config"].update(head_dim=16), "head_dim 16"),
        (
            lambda d: d["text_config"].update(
                sliding_window=8, layer_types=["full_attention", "sliding_attention"]
            ),
            "layer_types with 'sliding_attention'",
        ),
        (lambda d: d["text_config"]["rope_parameters"].update(mrope_interleaved=True), "mrope_interleaved"),
    ],
)
def test_refusals_say_why(edit, message):
    config = _dict("qwen2_5_vl")
    edit(config)
    with pytest.raises(ConfigError, match=message):
        Config.from_hf(config)


def test_a_list_of_eos_ids_is_read():
    config = _dict("qwen2_vl")
    config["text_config"]["eos_token_id"] = [1, 0]
    assert Config.from_hf(config).eos_token_id == 1  # the stop set comes from generation_config.json
