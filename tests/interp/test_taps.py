"""Taps: names, reading, replacing (identity changes nothing, zeros change logits, replacements flow on
in input order), attention maps, and read values equal transformers' where it exposes them."""

from __future__ import annotations

import pytest
import torch
import transformers
from hf_models import randomize_

from qwenvl_min import Config, QwenVL, SegmentMaps, tap_names
from qwenvl_min.interp.taps import TapError

FAMILIES = ["tiny-qwen2-vl", "tiny-qwen2.5-vl"]


def random_model(preset: str) -> QwenVL:
    model = QwenVL(Config.preset(preset)).eval()
    randomize_(model, seed=0)
    return model


def inputs(config: Config) -> dict:
    """Two images: 12x20 patches (3x5 windows of merged 4x4 -> edge windows) and 8x8 (one exact window)."""
    torch.manual_seed(1)
    grid = torch.tensor([[1, 12, 20], [1, 8, 8]])
    merged = [int(g.prod()) // 4 for g in grid]
    ids = [
        1,
        2,
        config.vision_start_token_id,
        *[config.image_token_id] * merged[0],
        config.vision_end_token_id,
    ]
    ids += [
        3,
        config.vision_start_token_id,
        *[config.image_token_id] * merged[1],
        config.vision_end_token_id,
        4,
        5,
    ]
    return {
        "input_ids": torch.tensor([ids]),
        "pixel_values": torch.randn(int(grid.prod(dim=1).sum()), config.vision.patch_dim),
        "image_grid_thw": grid,
    }


def run(model: QwenVL, read=(), replace=None):
    with torch.no_grad(), model.taps(read=read, replace=replace) as taps:
        logits = model(**inputs(model.config)).logits
    return logits, taps.cache


@pytest.fixture(scope="module", params=FAMILIES)
def model(request) -> QwenVL:
    return random_model(request.param)


def test_names_are_listed_and_unknown_names_rejected(model):
    names = tap_names(model.config)
    assert names == model.tap_names() == tap_names(model)
    for expected in [
        "visual.patch_embed",
        "visual.blocks.3",
        "visual.blocks.0.attn.probs",
        "visual.merger.input",
        "visual.merger",
        "text.layers.0.input",
        "text.layers.2",
        "text.layers.1.attn.probs",
        "text.norm",
    ]:
        assert expected in names
    assert "visual.blocks.4" not in names  # depth 4
    with pytest.raises(TapError, match="unknown tap name 'visual.block.1'"):
        model.taps(read=["visual.block.1"])
    # the first release's names are unknown (CHANGELOG.md maps them to module paths)
    with pytest.raises(TapError, match="unknown tap name 'vision.pre_merge'.*model.tap_names"):
        model.taps(read=["vision.pre_merge"])


def test_no_taps_and_empty_taps_are_identical(model):
    with torch.no_grad():
        plain = model(**inputs(model.config)).logits
    tapped, cache = run(model)
    assert cache == {}
    assert torch.equal(plain, tapped)


@pytest.mark.parametrize(
    "name",
    [
        "visual.patch_embed",
        "visual.blocks.1",
        "visual.blocks.2",
        "visual.merger.input",
        "visual.merger",
        "text.layers.0.input",
        "text.layers.1",
        "text.norm",
    ],
)
def test_replacing_by_itself_changes_nothing_and_zeros_change_logits(model, name):
    plain, cache = run(model, read=[name])
    value = cache[name]
    same, _ = run(model, replace={name: value.clone()})
    assert torch.equal(plain, same)  # bit-exact: the same tensor flows on
    zeroed, _ = run(model, replace={name: torch.zeros_like})
    assert (zeroed - plain).abs().max() > 1e-3


def test_read_shapes_are_in_input_order(model):
    cfg = model.config
    names = [
        "visual.patch_embed",
        "visual.blocks.3",
        "visual.merger.input",
        "visual.merger",
        "text.layers.0",
    ]
    _, cache = run(model, read=names)
    n = 12 * 20 + 8 * 8
    assert cache["visual.patch_embed"].shape == (n, cfg.vision.width)
    assert cache["visual.merger"].shape == (n // 4, cfg.text.hidden_size)
    # the last block's output is what enters the merger: both taps are in pixel_values row order
    assert torch.equal(cache["visual.blocks.3"], cache["visual.merger.input"])
    # patch embedding in input order is row i of pixel_values times the weight, whatever the window order
    pixels = inputs(cfg)["pixel_values"]
    expected = pixels @ model.visual.patch_embed.weight.T
    torch.testing.assert_close(cache["visual.patch_embed"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["visual.blocks.3", "visual.merger.input"])
def test_replacement_is_in_input_order(model, name):
    """Changing pixel_values rows 0..3 (the first 2x2 merge block of image 0) of the last block's output
    changes merged token 0 only: the replacement is taken in input order, not window order."""
    _, cache = run(model, read=[name, "visual.merger"])
    changed = cache[name].clone()
    changed[:4] = torch.randn(4, changed.shape[1])  # not a shift or a scale: norms would undo those
    _, cache2 = run(model, replace={name: changed}, read=["visual.merger"])
    diff = (cache2["visual.merger"] - cache["visual.merger"]).abs().amax(dim=1)
    assert diff[0] > 1e-3
    assert diff[1:].max() == 0


def test_vision_attention_maps(model):
    cfg = model.config
    names = [f"visual.blocks.{i}.attn.probs" for i in range(cfg.vision.depth)]
    plain, _ = run(model)
    logits, cache = run(model, read=names)
    # the exact map path computes the same attention as the fused SDPA path (fp32 rounding only)
    torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-5)
    n = 12 * 20 + 8 * 8
    for i, name in enumerate(names):
        maps = cache[name]
        assert isinstance(maps, SegmentMaps)
        covered = torch.cat([index.reshape(-1) for index in maps.token_index])
        assert torch.equal(covered.sort().values, torch.arange(n))  # every patch is a query exactly once
        for probs in maps.probs:
            torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
        dense = maps.dense(n)
        lengths = sorted({p.shape[-1] for p in maps.probs})
        if cfg.vision.is_full_attention(i):
            assert lengths == [64, 240]  # one segment per image
        else:
            assert lengths == [16, 32, 64]  # full 8x8-patch windows, 8x4 right-edge windows, image 1's...
        # image 0 has 6x10 merged tokens; merged token 4 (pixel rows 16..19) is the first of window 1
        to_window_1 = dense[:, 0, 16:20].abs().max()
        assert to_window_1 > 0 if cfg.vision.is_full_attention(i) else to_window_1 == 0
        assert dense[:, 0, 240:].abs().max() == 0  # image 0 never attends into image 1


def test_replacing_vision_maps_flows_into_the_output(model):
    name = "visual.blocks.1.attn.probs"
    _, cache = run(model, read=[name, "visual.merger"])
    maps = cache[name]
    uniform = SegmentMaps([torch.full_like(p, 1.0 / p.shape[-1]) for p in maps.probs], maps.token_index)
    _, same = run(model, replace={name: maps}, read=["visual.merger"])
    torch.testing.assert_close(same["visual.merger"], cache["visual.merger"], rtol=0, atol=0)
    _, changed = run(model, replace={name: uniform}, read=["visual.merger"])
    assert (changed["visual.merger"] - cache["visual.merger"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="SegmentMaps with the same group shapes"):
        run(model, replace={name: SegmentMaps(maps.probs[:1], maps.token_index[:1])})


def test_replacement_shape_is_checked(model):
    with pytest.raises(ValueError, match=r"must be a tensor of shape \(1, \d+, 64\)"):
        run(model, replace={"text.layers.0": torch.zeros(1, 3, 64)})


def _hf_model(model: QwenVL):
    cfg = model.config
    hf_config = cfg.to_hf()
    cls = (
        transformers.Qwen2VLForConditionalGeneration
        if cfg.model_type == "qwen2_vl"
        else transformers.Qwen2_5_VLForConditionalGeneration
    )
    config_cls = transformers.Qwen2VLConfig if cfg.model_type == "qwen2_vl" else transformers.Qwen2_5_VLConfig
    hf_cfg = config_cls(**hf_config)
    hf_cfg._attn_implementation = "eager"  # HF returns text attention maps only on its eager path
    hf = cls(hf_cfg).eval()
    from qwenvl_min.weights_convert import our_state_dict_to_hf

    hf_state = our_state_dict_to_hf(cfg, model.state_dict())
    if cfg.text.tie_word_embeddings:
        hf_state["lm_head.weight"] = hf_state["model.embed_tokens.weight"]
    missing, unexpected = hf.load_state_dict(
        {
            (
                "model." + k
                if k.startswith("visual.")
                else k.replace("model.", "model.language_model.", 1)
                if k.startswith("model.")
                else k
            ): v
            for k, v in hf_state.items()
        },
        strict=False,
    )
    assert not unexpected and not [m for m in missing if "inv_freq" not in m]
    return hf


def test_read_values_equal_transformers(model):
    """Text attention maps equal HF eager `attentions`; vision block outputs equal HF's vision hidden
    states (which HF keeps in window order for Qwen2.5-VL: we reorder them to input order here).
    Tolerance: fp32, 1e-5 of the output scale (the project's parity rule)."""
    cfg = model.config
    hf = _hf_model(model)
    data = inputs(cfg)
    mm_types = (data["input_ids"] == cfg.image_token_id).long()
    names = [f"text.layers.{i}.attn.probs" for i in range(cfg.text.num_layers)]
    names += [f"visual.blocks.{i}" for i in range(cfg.vision.depth)] + ["visual.patch_embed"]
    _, cache = run(model, read=names)
    with torch.no_grad():
        out = hf(**data, mm_token_type_ids=mm_types, output_attentions=True, output_hidden_states=True)
    for i in range(cfg.text.num_layers):
        torch.testing.assert_close(cache[f"text.layers.{i}.attn.probs"], out.attentions[i], rtol=0, atol=1e-6)
    vision_states = out.image_outputs.hidden_states  # [patch_embed, block 0, ..., block depth-1]
    if cfg.model_type == "qwen2_5_vl":
        from qwenvl_min.model.geometry import window_unit_order

        unit_index, _ = window_unit_order(
            data["image_grid_thw"], cfg.vision.window_merged, cfg.vision.merge_size
        )
        inverse = torch.argsort(unit_index)
        vision_states = [s.view(-1, 4, s.shape[-1])[inverse].reshape(s.shape) for s in vision_states]
    ours = [cache["visual.patch_embed"]] + [cache[f"visual.blocks.{i}"] for i in range(cfg.vision.depth)]
    for mine, theirs in zip(ours, vision_states, strict=True):
        scale = max(1.0, theirs.abs().max().item())
        assert (mine - theirs).abs().max().item() <= 1e-5 * scale
