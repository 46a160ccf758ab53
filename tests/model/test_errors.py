"""Bad input gets a clear error: each message says what is wrong and what was expected.

The model here has random (default-initialized) weights; only the checks matter. Every case starts from a
valid input (asserted to run) and breaks one thing.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from hf_models import make_prompt, tiny_config

from qwenvl_min import Config, ConfigError, QwenVL, get_rope_index
from qwenvl_min.interp.taps import TapError
from qwenvl_min.weights_convert.mapping import MappingError


@functools.cache
def model(family: str) -> QwenVL:
    torch.manual_seed(0)
    return QwenVL(tiny_config(family, tied=True)).eval()


@functools.cache
def image_prompt(family: str):
    return make_prompt(tiny_config(family, tied=True), [[2, ("image", (1, 8, 12)), 2]], seed=0)


def forward(family: str = "qwen2_5_vl", **overrides):
    p = image_prompt(family)
    kw = dict(input_ids=p.input_ids, pixel_values=p.pixel_values, image_grid_thw=p.image_grid_thw)
    kw.update(overrides)
    with torch.no_grad():
        return model(family)(**kw)


def test_valid_input_runs() -> None:
    for family in ("qwen2_vl", "qwen2_5_vl"):
        assert forward(family).logits.shape == (1, image_prompt(family).input_ids.shape[1], 256)


# ---- pixel rows, grids, placeholders ----------------------------------------------------------------------


def test_pixel_rows_not_sum_of_grid() -> None:
    p = image_prompt("qwen2_5_vl")
    with pytest.raises(
        ValueError, match=r"pixel_values has 92 rows but its grid \[\[1, 8, 12\]\] needs sum\(t\*h\*w\) = 96"
    ):
        forward(pixel_values=p.pixel_values[:-4])
    with pytest.raises(ValueError, match=r"has 92 rows .* needs sum\(t\*h\*w\) = 96"):
        model("qwen2_5_vl").visual(p.pixel_values[:-4], p.image_grid_thw)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_grid_sides_not_divisible_by_merge_size(family: str) -> None:
    grid = torch.tensor([[1, 7, 12]])
    with pytest.raises(ValueError, match=r"h and w divisible by the merge size 2, got \[\[1, 7, 12\]\]"):
        model(family).visual(torch.randn(84, 1176), grid)


def test_grid_sides_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"non-positive sides: \[\[0, 8, 12\]\]"):
        model("qwen2_5_vl").visual(torch.randn(0, 1176), torch.tensor([[0, 8, 12]]))


def test_image_pad_tokens_fewer_than_features() -> None:
    ids = image_prompt("qwen2_5_vl").input_ids
    fewer = torch.cat([ids[:, :4], ids[:, 5:]], dim=1)  # drop one of the 24 image pad tokens
    with pytest.raises(
        ValueError,
        match=r"input_ids hold 23 pad tokens \(id 254\) but pixel_values .* give 24 merged features",
    ):
        forward(input_ids=fewer)


def test_video_pad_tokens_more_than_features() -> None:
    cfg = tiny_config("qwen2_5_vl", tied=True)
    p = make_prompt(cfg, [[1, ("video", (2, 8, 8)), 1]], seed=0)  # 32 video pad tokens
    extra = torch.cat([p.input_ids[:, :2], torch.full((1, 1), cfg.video_token_id), p.input_ids[:, 2:]], dim=1)
    with pytest.raises(
        ValueError,
        match=r"input_ids hold 33 pad tokens \(id 255\) but pixel_values_videos .* give 32 merged features",
    ):
        model("qwen2_5_vl")(extra, pixel_values_videos=p.pixel_values_videos, video_grid_thw=p.video_grid_thw)


def test_two_grids_for_one_placeholder_block() -> None:
    p = image_prompt("qwen2_5_vl")
    with pytest.raises(ValueError, match=r"hold 24 pad tokens .* give 48 merged features"):
        forward(
            pixel_values=torch.cat([p.pixel_values] * 2), image_grid_thw=torch.cat([p.image_grid_thw] * 2)
        )


def test_grid_without_pixels_and_pixels_without_grid() -> None:
    p = image_prompt("qwen2_5_vl")
    with pytest.raises(
        ValueError, match="image_grid_thw was given without pixel_values; pass both or neither"
    ):
        forward(pixel_values=None)
    with pytest.raises(
        ValueError, match="pixel_values was given without image_grid_thw; pass both or neither"
    ):
        forward(image_grid_thw=None)
    with pytest.raises(ValueError, match="video_grid_thw was given without pixel_values_videos"):
        forward(video_grid_thw=torch.tensor([[2, 8, 8]]))
    with pytest.raises(
        ValueError, match="input_ids hold 24 image pad tokens .* but no pixel_values were given"
    ):
        forward(pixel_values=None, image_grid_thw=None)
    # the refused calls left nothing behind: the valid call still runs
    assert forward().logits.shape[1] == p.input_ids.shape[1]


# ---- dtypes and ranks ----------------------------------------------------------------------------------

ID_EXPECT = r"input_ids must be an integer tensor of shape \(batch, tokens\), got "


@pytest.mark.parametrize(
    "bad, got",
    [
        (lambda ids: ids.float(), r"torch.float32 \(1, 30\)"),
        (lambda ids: ids.bool(), r"torch.bool \(1, 30\)"),
        (lambda ids: ids[0], r"torch.int64 \(30,\)"),
        (lambda ids: ids[None], r"torch.int64 \(1, 1, 30\)"),
        (lambda ids: ids.tolist(), "<class 'list'>"),
    ],
    ids=["float", "bool", "rank1", "rank3", "list"],
)
def test_input_ids_dtype_and_rank(bad, got: str) -> None:
    with pytest.raises(ValueError, match=ID_EXPECT + got):
        forward(input_ids=bad(image_prompt("qwen2_5_vl").input_ids))


def test_input_ids_out_of_vocab() -> None:
    with pytest.raises(
        ValueError, match=r"token ids in \[0, 256\) \(vocab_size\), got values in \[-1, 300\]"
    ):
        model("qwen2_5_vl")(torch.tensor([[5, 300, -1]]))


@pytest.mark.parametrize(
    "bad, got",
    [
        (lambda pv: pv.long(), r"got torch.int64 tensor of shape \(96, 1176\)"),
        (lambda pv: pv[None], r"got torch.float32 tensor of shape \(1, 96, 1176\)"),
        (lambda pv: pv.flatten(), r"got torch.float32 tensor of shape \(112896,\)"),
    ],
    ids=["int", "rank3", "rank1"],
)
def test_pixel_values_dtype_and_rank(bad, got: str) -> None:
    with pytest.raises(
        ValueError, match=r"pixel_values must be a floating-point tensor of shape \(patches, 1176\), " + got
    ):
        forward(pixel_values=bad(image_prompt("qwen2_5_vl").pixel_values))


def test_pixel_values_row_width() -> None:
    with pytest.raises(ValueError, match=r"pixel_values rows must hold 1176 values .* got 588"):
        forward(pixel_values=image_prompt("qwen2_5_vl").pixel_values[:, :588])


@pytest.mark.parametrize(
    "bad, got",
    [
        (lambda g: g.float(), r"torch.float32 tensor of shape \(1, 3\)"),
        (lambda g: g[0], r"torch.int64 tensor of shape \(3,\)"),
        (lambda g: g[:, :2], r"torch.int64 tensor of shape \(1, 2\)"),
        (lambda g: g.tolist(), "list"),
    ],
    ids=["float", "rank1", "two_columns", "list"],
)
def test_grid_dtype_and_shape(bad, got: str) -> None:
    with pytest.raises(
        ValueError, match=r"grid for pixel_values must be an integer tensor of shape \(items, 3\), got " + got
    ):
        forward(image_grid_thw=bad(image_prompt("qwen2_5_vl").image_grid_thw))


def test_attention_mask_shape() -> None:
    with pytest.raises(
        ValueError,
        match=r"attention_mask must have shape \(batch, past \+ new tokens\) = \(1, 30\), got \(1, 27\)",
    ):
        forward(attention_mask=torch.ones(1, 27, dtype=torch.int64))


@pytest.mark.parametrize("shape", [(1, 0), (0, 5)])
def test_input_ids_without_tokens(shape) -> None:
    with pytest.raises(ValueError, match=rf"input_ids hold no tokens \(shape \({shape[0]}, {shape[1]}\)\)"):
        model("qwen2_5_vl")(torch.zeros(shape, dtype=torch.int64))


def test_a_masked_out_row_with_an_image_is_named() -> None:
    """Two rows with an image each, the second row all padding: its image block would be skipped by the
    positions, which used to surface as '2 image grids were given but input_ids hold 1 image blocks'."""
    p = image_prompt("qwen2_5_vl")
    ids = p.input_ids.repeat(2, 1)
    vision = dict(pixel_values=p.pixel_values.repeat(2, 1), image_grid_thw=p.image_grid_thw.repeat(2, 1))
    mask = torch.ones_like(ids)
    assert forward(input_ids=ids, attention_mask=mask, **vision).logits.shape[0] == 2  # valid as it is
    mask[1] = 0
    with pytest.raises(
        ValueError,
        match=r"^attention_mask row 1 is all 0 \(the row holds no token\), but input_ids row 1 holds 24 image / video pad tokens",
    ):
        forward(input_ids=ids, attention_mask=mask, **vision)
    mask[1] = 1
    mask[1, :5] = 0  # two text tokens and <|vision_start|> masked are fine, the first two pads are not
    with pytest.raises(ValueError, match=r"^attention_mask row 1 is 0 at 2 of its vision pad tokens"):
        forward(input_ids=ids, attention_mask=mask, **vision)


# ---- second_per_grid_ts -----------------------------------------------------------------------------------


def test_second_per_grid_ts_on_qwen2_vl() -> None:
    """Our processor emits it for every video; Qwen2-VL's forward checks it (one finite value per video)
    and does not use it; get_rope_index, which takes no processor output, still refuses it."""
    cfg = tiny_config("qwen2_vl", tied=True)
    p = make_prompt(cfg, [[1, ("video", (2, 8, 8)), 1]], seed=0)
    forward = model("qwen2_vl")
    video = dict(pixel_values_videos=p.pixel_values_videos, video_grid_thw=p.video_grid_thw)
    with torch.no_grad():
        plain = forward(p.input_ids, **video).logits
        assert torch.equal(
            forward(p.input_ids, **video, second_per_grid_ts=torch.tensor([0.25])).logits, plain
        )
        assert torch.equal(forward(p.input_ids, **video, second_per_grid_ts=[1.0]).logits, plain)
    with pytest.raises(ValueError, match="second_per_grid_ts has 2 entries for 1 videos"):
        forward(p.input_ids, **video, second_per_grid_ts=torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="second_per_grid_ts must be finite and positive"):
        forward(p.input_ids, **video, second_per_grid_ts=torch.tensor([float("nan")]))
    msg = "second_per_grid_ts only applies to Qwen2.5-VL; Qwen2-VL videos step one position per frame"
    with pytest.raises(ValueError, match=msg):
        get_rope_index(cfg, p.input_ids, None, p.video_grid_thw, torch.tensor([1.0]))


def test_second_per_grid_ts_count_and_shape() -> None:
    cfg = tiny_config("qwen2_5_vl", tied=True)
    p = make_prompt(cfg, [[1, ("video", (2, 8, 8)), 1]], seed=0)
    with pytest.raises(ValueError, match="second_per_grid_ts has 2 entries for 1 videos"):
        get_rope_index(cfg, p.input_ids, None, p.video_grid_thw, torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match=r"one value per video, shape \(videos,\), got shape \(1, 1\)"):
        get_rope_index(cfg, p.input_ids, None, p.video_grid_thw, torch.tensor([[1.0]]))


def test_rope_index_grids_and_blocks_disagree() -> None:
    cfg = tiny_config("qwen2_5_vl", tied=True)
    p = make_prompt(cfg, [[1, ("video", (2, 8, 8)), 1]], seed=0)
    with pytest.raises(
        ValueError, match="row 0 has more video pad-token blocks than the 0 video grids given"
    ):
        get_rope_index(cfg, p.input_ids)
    with pytest.raises(ValueError, match="2 video grids were given but input_ids hold 1 video blocks"):
        get_rope_index(cfg, p.input_ids, None, torch.tensor([[2, 8, 8], [1, 2, 2]]))
    with pytest.raises(
        ValueError, match=r"video 0 with grid \[2, 8, 16\] needs 64 consecutive video pad tokens"
    ):
        get_rope_index(cfg, p.input_ids, None, torch.tensor([[2, 8, 16]]))


# ---- taps -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["visual.block.1", "text.layers.9", "visual.blocks.4", "text.norm.weight"])
def test_unknown_tap_names(name: str) -> None:
    with pytest.raises(TapError, match=rf"unknown tap name '{name}' .*model.tap_names\(\) lists all of them"):
        model("qwen2_5_vl").taps(read=[name])
    with pytest.raises(TapError, match="unknown tap name"):
        model("qwen2_5_vl").taps(replace={name: torch.zeros(1)})


def test_tap_replacement_shape() -> None:
    family = "qwen2_5_vl"
    with model(family).taps(replace={"text.norm": torch.zeros(1, 3, 64)}):
        with pytest.raises(
            ValueError,
            match=r"replacement for tap 'text.norm' must be a tensor of shape \(1, 30, 64\), got \(1, 3, 64\)",
        ):
            forward(family)


# ---- configs ----------------------------------------------------------------------------------------------


def hf_dict(family: str) -> dict:
    return tiny_config(family, tied=True).to_hf()


def without(d: dict, *path: str) -> dict:
    d = copy.deepcopy(d)
    node = d
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return d


@pytest.mark.parametrize("model_type", ["llava", "qwen3_5_vl", None])
def test_unknown_model_type(model_type) -> None:
    d = hf_dict("qwen2_vl")
    d["model_type"] = model_type
    with pytest.raises(
        ConfigError,
        match=rf"unsupported model_type {model_type!r}: qwenvl-min handles \('qwen2_vl', 'qwen2_5_vl', "
        r"'qwen3_vl', 'qwen3_vl_moe'\)",
    ):
        Config.from_hf(d)
    with pytest.raises(ConfigError, match="unsupported model_type"):
        QwenVL.from_hf(d, {})


@pytest.mark.parametrize(
    "family, path, field",
    [
        ("qwen2_vl", ("text_config", "rms_norm_eps"), "rms_norm_eps"),
        ("qwen2_5_vl", ("text_config", "rms_norm_eps"), "rms_norm_eps"),
        ("qwen2_vl", ("text_config", "rope_parameters", "mrope_section"), "mrope_section"),
        ("qwen2_5_vl", ("text_config", "hidden_size"), "hidden_size"),
        (
            "qwen2_5_vl",
            ("vision_config", "hidden_size"),
            "hidden_size",
        ),  # ViT width; HF's default 3584 is wrong
        ("qwen2_5_vl", ("vision_config", "tokens_per_second"), "tokens_per_second"),  # HF default 4, real 2
        ("qwen2_5_vl", ("vision_config", "fullatt_block_indexes"), "fullatt_block_indexes"),
        ("qwen2_vl", ("vision_config", "embed_dim"), "embed_dim"),
        ("qwen2_vl", ("vision_config", "depth"), "depth"),
    ],
)
def test_missing_config_fields(family: str, path: tuple[str, ...], field: str) -> None:
    where = "text config" if path[0] == "text_config" else "vision_config"
    with pytest.raises(ConfigError, match=rf"config field '{field}' is missing from (the )?{where}"):
        Config.from_hf(without(hf_dict(family), *path))


def test_missing_vision_config() -> None:
    with pytest.raises(ConfigError, match="config has no vision_config dict"):
        Config.from_hf(without(hf_dict("qwen2_vl"), "vision_config"))


def test_config_not_a_dict() -> None:
    with pytest.raises(
        ConfigError, match="expected a config.json dict or a transformers config object, got str"
    ):
        Config.from_hf("config.json")


def test_inconsistent_config_values() -> None:
    d = hf_dict("qwen2_5_vl")
    d["text_config"]["rope_parameters"]["mrope_section"] = [2, 3, 4]
    with pytest.raises(
        ConfigError, match=r"mrope_section \[2, 3, 4\] must have 3 parts summing to head_dim/2 = 8"
    ):
        Config.from_hf(d)
    d = hf_dict("qwen2_5_vl")
    d["vision_config"]["out_hidden_size"] = 32
    with pytest.raises(ConfigError, match="merger output width 32 must equal the text hidden_size 64"):
        Config.from_hf(d)


def test_state_dict_that_does_not_match() -> None:
    d = hf_dict("qwen2_vl")
    with pytest.raises(MappingError, match=r"unknown Hugging Face keys \[foo.bar\]"):
        QwenVL.from_hf(d, {"foo.bar": torch.zeros(1)})
    state = {"model.embed_tokens.weight": torch.zeros(256, 64)}
    with pytest.raises(
        MappingError, match=r"does not match the config: missing keys \[text.layers.0.attn.k_proj.bias"
    ):
        QwenVL.from_hf(d, state)
