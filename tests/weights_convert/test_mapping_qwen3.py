"""Qwen3-VL / Qwen3-VL-MoE checkpoints through the key table and the converter: both key namings
(transformers' in-memory one, which the published files use, and the canonical `visual.*` / `model.*`),
the published transposed expert layout, strictness, and a round trip HF -> ours -> HF that transformers'
own `from_pretrained` loads back to the same logits."""

from __future__ import annotations

import json

import pytest
import torch
from hf_checkpoints import to_published_key, write_sharded
from hf_models import HF_MODEL, build_hf, make_prompt

from qwenvl_min import Config, QwenVL
from qwenvl_min.weights_convert import convert_checkpoint, export_to_hf, hf_key_to_ours, our_key_to_hf
from qwenvl_min.weights_convert.checkpoint import CheckpointError
from qwenvl_min.weights_convert.mapping import MappingError, hf_state_dict_to_ours

PRESETS = {"qwen3_vl": "tiny-qwen3-vl", "qwen3_vl_moe": "tiny-qwen3-vl-moe"}


@pytest.fixture(scope="module")
def models():
    return {family: build_hf(Config.preset(preset), seed=9) for family, preset in PRESETS.items()}


@pytest.mark.parametrize("family", sorted(PRESETS))
def test_every_key_maps_both_ways_in_both_namings(models, family):
    hf = models[family]
    for key in hf.state_dict():
        ours = hf_key_to_ours(key, family)
        assert ours is not None, key
        assert our_key_to_hf(ours, family) == key  # Qwen3-VL's published naming is the in-memory one
        assert hf_key_to_ours(to_published_key(key), family) == ours  # the canonical naming too
    assert hf_key_to_ours("model.visual.deepstack_merger_list.1.linear_fc2.bias", family) == (
        "visual.deepstack_mergers.1.fc2.bias"
    )
    if family == "qwen3_vl_moe":
        assert hf_key_to_ours("model.language_model.layers.2.mlp.gate.weight", family) == (
            "text.layers.2.mlp.router.weight"
        )


def test_qwen2_spellings_are_not_qwen3_keys():
    with pytest.raises(MappingError, match="not part of a Qwen3-VL / Qwen3-VL-MoE checkpoint"):
        hf_key_to_ours("visual.merger.ln_q.weight", "qwen3_vl")
    with pytest.raises(MappingError, match="not part of a Qwen2-VL / Qwen2.5-VL checkpoint"):
        hf_key_to_ours("model.visual.pos_embed.weight", "qwen2_5_vl")


def _hub_layout(hf) -> dict[str, torch.Tensor]:
    """The published Qwen3-VL-MoE files: in-memory names, experts stored transposed."""
    state = {k: v.detach().clone().contiguous() for k, v in hf.state_dict().items()}
    for key in [k for k in state if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        state[key] = state[key].transpose(1, 2).contiguous()
    return state


def test_published_expert_layout_loads_as_transformers_loads_it(models, tmp_path):
    hf = models["qwen3_vl_moe"]
    cfg = Config.preset(PRESETS["qwen3_vl_moe"])
    hub = _hub_layout(hf)
    assert hub["model.language_model.layers.0.mlp.experts.gate_up_proj"].shape == (6, 64, 96)  # (X, E, 2I)
    direct = hf_state_dict_to_ours(cfg, hub)
    assert torch.equal(direct["text.layers.0.mlp.experts.gate_up_proj"], hf.state_dict()[
        "model.language_model.layers.0.mlp.experts.gate_up_proj"])  # fmt: skip
    directory = tmp_path / "hub"
    write_sharded(directory, hub, per_shard=20)
    (directory / "config.json").write_text(json.dumps(cfg.to_hf()))
    ours = QwenVL.from_pretrained(directory)
    reference = HF_MODEL["qwen3_vl_moe"].from_pretrained(directory).eval()  # transformers transposes too
    prompt = make_prompt(cfg, [[2, ("image", (1, 8, 8)), 2, ("video", (2, 4, 4)), 3]], seed=4)
    with torch.no_grad():
        want = reference(**prompt.hf()).logits
        got = ours(prompt.input_ids, **prompt.ours()).logits
    assert (got - want).abs().max() <= 1e-5 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize("family", sorted(PRESETS))
def test_round_trip_through_our_format_loads_in_transformers(models, tmp_path, family):
    hf = models[family]
    source = tmp_path / "hf"
    hf.save_pretrained(source, max_shard_size="300KB")
    ours = convert_checkpoint(source, tmp_path / "ours", shard_size="300KB")
    back = export_to_hf(ours, tmp_path / "back")
    reloaded = HF_MODEL[family].from_pretrained(back).eval()
    for key, tensor in hf.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key


def test_strict_unknown_and_missing_keys(models, tmp_path):
    hf = models["qwen3_vl"]
    cfg = Config.preset(PRESETS["qwen3_vl"])
    state = {k: v.detach().clone().contiguous() for k, v in hf.state_dict().items()}
    extra = dict(state, **{"model.visual.merger.ln_q.weight": torch.zeros(64)})
    with pytest.raises(
        MappingError, match=r"unknown Hugging Face keys \[model\.visual\.merger\.ln_q\.weight\]"
    ):
        hf_state_dict_to_ours(cfg, extra)
    missing = {k: v for k, v in state.items() if "deepstack_merger_list.1" not in k}
    with pytest.raises(MappingError, match="missing keys .*visual.deepstack_mergers.1"):
        hf_state_dict_to_ours(cfg, missing)
    directory = tmp_path / "bad"
    write_sharded(directory, extra, per_shard=50)
    (directory / "config.json").write_text(json.dumps(cfg.to_hf()))
    with pytest.raises(CheckpointError, match="unknown Hugging Face keys"):
        convert_checkpoint(directory, tmp_path / "out")
    assert not (tmp_path / "out").exists()
