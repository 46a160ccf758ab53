"""smart_resize against transformers' own function (the PIL image processor's copy), plus its error cases."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from qwenvl_min.inputs.preprocess import IMAGE_MAX_PIXELS, IMAGE_MIN_PIXELS, smart_resize


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((480, 640), (476, 644)),
        ((1080, 1920), (728, 1316)),
        ((3000, 4000), (840, 1148)),
        ((20, 20), (56, 56)),
        ((28, 5000), (28, 5012)),
        # Python's round is half to even: 70/28 = 2.5 -> 2 and 126/28 = 4.5 -> 4 (round-half-up gives 84, 140).
        ((70, 70 * 10), (56, 700)),
        ((126, 1260), (112, 1260)),
    ],
)
def test_known_sizes(size, expected):
    assert smart_resize(*size) == expected == hf_smart_resize(*size)


def test_aspect_ratio_limit_is_strict():
    assert smart_resize(100, 20000) == hf_smart_resize(100, 20000)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(100, 20001)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(20001, 100)


@settings(max_examples=400, deadline=None)
@given(
    height=st.integers(1, 12000),
    width=st.integers(1, 12000),
    min_pixels=st.sampled_from([IMAGE_MIN_PIXELS, 128 * 28 * 28, 4 * 28 * 28]),
    max_pixels=st.sampled_from([IMAGE_MAX_PIXELS, 768 * 28 * 28, 16384 * 28 * 28, 256 * 28 * 28]),
)
def test_matches_hf(height, width, min_pixels, max_pixels):
    try:
        expected = hf_smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError:
        with pytest.raises(ValueError, match="aspect ratio"):
            smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
        return
    assert smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels) == expected


@settings(max_examples=100, deadline=None)
@given(height=st.integers(1, 3000), width=st.integers(1, 3000), factor=st.sampled_from([14, 28, 32, 56]))
def test_matches_hf_other_factors(height, width, factor):
    try:
        expected = hf_smart_resize(height, width, factor=factor)
    except ValueError:
        return
    assert smart_resize(height, width, factor=factor) == expected


@pytest.mark.parametrize("size", [(0, 10), (10, 0), (0, 0), (-5, 10)])
def test_empty_size_is_an_error(size):
    with pytest.raises(ValueError, match="must be positive"):
        smart_resize(*size)


def test_min_pixels_over_max_pixels_is_an_error():
    with pytest.raises(ValueError, match="min_pixels .* must not exceed max_pixels"):
        smart_resize(100, 100, min_pixels=1000, max_pixels=999)


def test_a_budget_that_rounds_a_side_to_zero_is_refused():
    """transformers returns (0, 0) for a 1x1 image with min_pixels 0 (and fails later); we say what to raise."""
    assert hf_smart_resize(1, 1, 28, 0, 1) == (0, 0)
    with pytest.raises(ValueError, match=r"rounds to 0x0 .* raise min_pixels to at least 784"):
        smart_resize(1, 1, 28, 0, 1)
