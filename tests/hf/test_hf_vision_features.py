"""`get_image_features` / `get_video_features` against transformers 5.24 (fp32, tiny random models of both
families): per-item merged features in `.pooler_output`, the pre-merge `.last_hidden_state` and the
per-block `.hidden_states` in our row order (transformers: window order on Qwen2.5-VL), `return_dict`.

Tolerance (fp32): max abs error <= 1e-5 x max(1, max|reference|), as the full-model parity tests (the same
math in another order: window batching, SDPA vs our segment groups).
"""

from __future__ import annotations

import functools

import pytest
import torch
from hf_models import build_pair, hf_window_to_input_order, make_prompt, max_err, scale_of, tiny_config

from qwenvl_min.hf import VisionFeatures
from qwenvl_min.hf.keywords import UnsupportedKeyword

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
RTOL = 1e-5


@functools.cache
def models(family: str) -> tuple:
    cfg = tiny_config(family, False)
    return (cfg, *build_pair(cfg, seed=3))


def inputs(family: str, kind: str):
    """Two items of different sizes (an exact window multiple and edge windows)."""
    cfg = tiny_config(family, False)
    if kind == "image":
        rows = [[2, ("image", (1, 16, 16)), 2, ("image", (1, 8, 12)), 2]]
        prompt = make_prompt(cfg, rows, seed=5)
        return prompt.pixel_values, prompt.image_grid_thw
    rows = [[2, ("video", (2, 8, 12)), 2, ("video", (1, 8, 8)), 2]]
    prompt = make_prompt(cfg, rows, seed=6)
    return prompt.pixel_values_videos, prompt.video_grid_thw


def call(model, kind: str, pixels, grid, **kwargs):
    method = model.get_image_features if kind == "image" else model.get_video_features
    return method(pixels, grid, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["image", "video"])
def test_features_equal_transformers_in_row_order(family, kind):
    cfg, hf, ours = models(family)
    pixels, grid = inputs(family, kind)
    with torch.no_grad():
        want = call(hf, kind, pixels, grid, output_hidden_states=True)
        got = call(ours, kind, pixels, grid, output_hidden_states=True)
    assert isinstance(got, VisionFeatures)
    assert len(got.pooler_output) == len(want.pooler_output) == grid.shape[0]
    for ours_item, hf_item in zip(got.pooler_output, want.pooler_output):
        assert ours_item.shape == hf_item.shape
        assert max_err(ours_item, hf_item) <= RTOL * scale_of(hf_item)
    # pre-merge and per-block states: transformers' window order put back into pixel_values row order
    hf_last = hf_window_to_input_order(cfg, want.last_hidden_state, grid)
    assert max_err(got.last_hidden_state, hf_last) <= RTOL * scale_of(hf_last)
    assert len(got.hidden_states) == len(want.hidden_states) == cfg.vision.depth + 1
    for ours_h, hf_h in zip(got.hidden_states, want.hidden_states):
        hf_h = hf_window_to_input_order(cfg, hf_h, grid)
        assert max_err(ours_h, hf_h) <= RTOL * scale_of(hf_h)
    assert torch.equal(got.hidden_states[-1], got.last_hidden_state)  # no final norm in the tower
    if family == "qwen3_vl":  # per DeepStack level, per item
        assert (
            len(got.deepstack_features) == len(want.deepstack_features) == len(cfg.vision.deepstack_indexes)
        )
        for ours_level, hf_level in zip(got.deepstack_features, want.deepstack_features):
            assert len(ours_level) == len(hf_level) == grid.shape[0]
            for ours_item, hf_item in zip(ours_level, hf_level):
                assert ours_item.shape == hf_item.shape
                assert max_err(ours_item, hf_item) <= RTOL * scale_of(hf_item)
    else:
        assert got.deepstack_features is None
    if family == "qwen2_5_vl":  # the documented difference: transformers' raw states are in window order
        assert max_err(got.last_hidden_state, want.last_hidden_state) > 0.1 * scale_of(hf_last)


@pytest.mark.parametrize("family", FAMILIES)
def test_features_are_what_the_model_inserts_and_the_taps_read(family):
    cfg, _, ours = models(family)
    pixels, grid = inputs(family, "image")
    with torch.no_grad(), ours.taps(read=["visual.merger.input", "visual.merger"]) as taps:
        got = ours.get_image_features(pixels, grid)
    assert torch.equal(got.last_hidden_state, taps.cache["visual.merger.input"])
    assert torch.equal(torch.cat(got.pooler_output), taps.cache["visual.merger"])
    with torch.no_grad():
        merged = ours.visual(pixels, grid)
    if family == "qwen3_vl":  # the Qwen3-VL tower returns (merged, deepstack levels)
        merged, levels = merged
        assert all(
            torch.equal(torch.cat(got_level), level)
            for got_level, level in zip(got.deepstack_features, levels)
        )
    assert torch.equal(torch.cat(got.pooler_output), merged)


def test_return_dict_false_and_refusals():
    cfg, hf, ours = models("qwen2_5_vl")
    pixels, grid = inputs("qwen2_5_vl", "video")
    with torch.no_grad():
        want = hf.get_video_features(pixels, grid, return_dict=False)
        got = ours.get_video_features(pixels, grid, return_dict=False)
    assert isinstance(got, tuple) and len(got) == len(want) == 2  # (last_hidden_state, pooler_output)
    assert [t.shape for t in got[1]] == [t.shape for t in want[1]]
    with pytest.raises(UnsupportedKeyword, match=r"output_attentions: .*attention output.*taps"):
        ours.get_image_features(pixels, grid, output_attentions=True)
    with pytest.raises(ValueError, match="pixel_values_videos has 10 rows but its grid"):
        ours.get_video_features(pixels[:10], grid)
    with pytest.raises(ValueError, match="output_hidden_states must be True or False"):
        ours.get_video_features(pixels, grid, output_hidden_states=[0])


def test_qwen3_return_dict_false_ends_with_deepstack_features():
    cfg, hf, ours = models("qwen3_vl")
    pixels, grid = inputs("qwen3_vl", "image")
    with torch.no_grad():
        want = hf.get_image_features(pixels, grid, return_dict=False)
        got = ours.get_image_features(pixels, grid, return_dict=False)
    # (last_hidden_state, pooler_output, deepstack_features): transformers' field order, None left out
    assert len(got) == len(want) == 3
    assert len(got[2]) == len(want[2]) == len(cfg.vision.deepstack_indexes)
    assert [t.shape for level in got[2] for t in level] == [t.shape for level in want[2] for t in level]
