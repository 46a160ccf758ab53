"""Hypothesis fuzzing of what reads untrusted input: the safetensors header parser, config parsing (HF
and ours) and the processor's size arithmetic. Every input ends in a result that is correct or in the
module's own clear error (SafetensorsFormatError / ConfigError / ValueError), never another exception."""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwenvl_min import Config
from qwenvl_min.inputs.preprocess import smart_resize
from qwenvl_min.model.config import ConfigError
from qwenvl_min.weights_convert.safetensors_io import DTYPES, SafetensorsFormatError, read_header

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
dims = st.integers(-3, 5) | st.sampled_from([True, 2.0, "3", None, 2**64])
entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from([*DTYPES, "F4", 3, None]),
        "shape": st.lists(dims, max_size=3) | json_values,
        "data_offsets": st.lists(st.integers(-2, 40) | st.sampled_from([1.5, "0", True]), max_size=3)
        | json_values,
    }
)
headers = st.dictionaries(st.text(min_size=1, max_size=6), entries | json_values, max_size=4)


def _file(tmp_path, header: object, data: bytes, raw: bytes | None = None):
    body = raw if raw is not None else json.dumps(header).encode()
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)
    return path


def _valid_layout(header: dict) -> bool:
    """An independent reading of the format: what read_header must accept."""
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        return False
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in DTYPES:
            return False
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        ints = lambda xs: all(type(x) is int and x >= 0 for x in xs)  # noqa: E731
        if not (isinstance(shape, list) and ints(shape)):
            return False
        if not (isinstance(offsets, list) and len(offsets) == 2 and ints(offsets)):
            return False
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPES[entry["dtype"]].itemsize:
            return False
        spans.append(tuple(offsets))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            return False
        position = end
    return True


@FUZZ
@given(header=headers, data=st.binary(max_size=48))
def test_header_parser_accepts_exactly_the_valid_layouts(tmp_path, header, data):
    path = _file(tmp_path, header, data)
    expected = _valid_layout(header) and sum(
        e["data_offsets"][1] - e["data_offsets"][0] for k, e in header.items() if k != "__metadata__"
    ) == len(data)
    try:
        parsed = read_header(path)
    except SafetensorsFormatError as err:
        assert not expected, err
        assert str(path) in str(err)
        return
    assert expected
    assert set(parsed.tensors) == {k for k in header if k != "__metadata__"}


@FUZZ
@given(raw=st.binary(max_size=64) | st.sampled_from([b"[" * 100_000, b"{" * 50_000, b'{"__metadata__": 1}']))
def test_header_parser_on_arbitrary_bytes(tmp_path, raw):
    path = _file(tmp_path, None, b"", raw=raw)
    try:
        read_header(path)
    except SafetensorsFormatError:
        pass


def _nested(family: str) -> dict:
    return Config.preset("tiny-qwen2.5-vl" if family == "qwen2_5_vl" else "tiny-qwen2-vl").to_hf()


@FUZZ
@given(
    family=st.sampled_from(["qwen2_vl", "qwen2_5_vl"]),
    section=st.sampled_from(["text_config", "vision_config", None]),
    key=st.sampled_from(
        [
            "num_attention_heads",
            "num_key_value_heads",
            "hidden_size",
            "vocab_size",
            "rms_norm_eps",
            "depth",
            "num_heads",
            "patch_size",
            "spatial_merge_size",
            "tokens_per_second",
            "window_size",
            "fullatt_block_indexes",
            "mlp_ratio",
            "rope_parameters",
            "image_token_id",
            "tie_word_embeddings",
        ]
    ),
    value=json_values,
)
def test_hf_config_fields_of_any_type(family, section, key, value):
    config = _nested(family)
    (config if section is None else config[section])[key] = value
    try:
        parsed = Config.from_hf(config)
    except ConfigError as err:
        assert key in str(err) or "config" in str(err), err
        return
    for field in ("width", "num_heads", "depth", "patch_size", "merge_size"):
        assert getattr(parsed.vision, field) >= 1
    assert parsed.text.num_heads >= 1 and parsed.text.head_dim >= 1
    assert math.isfinite(parsed.text.rms_norm_eps) and parsed.text.rms_norm_eps > 0


@FUZZ
@given(data=json_values)
def test_our_config_from_any_json(data):
    try:
        Config.from_dict(data)
    except ConfigError:
        pass


@pytest.mark.parametrize("heads", [0, -4, True, 2.5, "4"])
def test_zero_or_odd_heads_are_a_config_error(heads):
    config = _nested("qwen2_vl")
    config["text_config"]["num_attention_heads"] = heads
    with pytest.raises(ConfigError, match="num_attention_heads"):
        Config.from_hf(config)


sizes = st.integers(-5, 10**6) | st.sampled_from([math.nan, math.inf, 0.5, True, "28"])


@FUZZ
@given(
    height=sizes,
    width=sizes,
    factor=st.sampled_from([28, 14, 32, 0, -28, 2.5]),
    min_pixels=st.integers(-10, 10**8) | st.sampled_from([math.nan, 10**15]),
    max_pixels=st.integers(-10, 10**13) | st.sampled_from([math.inf, 0]),
)
def test_smart_resize_is_hf_or_a_clear_error(height, width, factor, min_pixels, max_pixels):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

    try:
        ours = smart_resize(height, width, factor, min_pixels, max_pixels)
    except ValueError:
        return
    assert hf_smart_resize(height, width, factor, min_pixels, max_pixels) == ours
    h, w = ours
    assert h % factor == 0 and w % factor == 0 and h >= factor and w >= factor
