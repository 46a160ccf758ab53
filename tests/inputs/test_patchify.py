"""The blocked LUT gather that writes pixel_values (`processor._patchify`, `_patchify_still`) equals the plain
formula bit for bit: HF's rescale/normalize arithmetic on every pixel (uint8 -> fp64 * 1/255 -> fp32, then
(x - mean) / std in fp32), then the geometry's reorder into rows. Hypothesis picks the sizes so that the
block rows split unevenly over the threads and over the gather's steps of `_BLOCKS_PER_STEP` blocks."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from qwenvl_min.inputs import preprocess as processor
from qwenvl_min.model.geometry import frames_to_rows


def _plain_rows(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (rows, 1176) float32 with no lookup table and no blocking."""
    scaled = (frames.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(processor.IMAGE_MEAN, dtype=np.float32)
    std = np.asarray(processor.IMAGE_STD, dtype=np.float32)
    normalized = (scaled - mean) / std  # fp32, channels last
    rows = frames_to_rows(
        normalized, processor.PATCH_SIZE, processor.TEMPORAL_PATCH_SIZE, processor.MERGE_SIZE
    )
    return np.ascontiguousarray(rows).reshape(-1, 3 * processor.TEMPORAL_PATCH_SIZE * processor.PATCH_SIZE**2)


def _frames(draw, count: int) -> np.ndarray:
    unit = processor.PATCH_SIZE * processor.MERGE_SIZE
    h = draw(st.integers(1, 4)) * unit
    w = draw(st.integers(1, 2 * processor._BLOCKS_PER_STEP + 3)) * unit  # ragged last step
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).integers(0, 256, (count, h, w, 3), dtype=np.uint8)


@st.composite
def stills(draw) -> np.ndarray:
    return _frames(draw, 1)[0]


@st.composite
def videos(draw) -> np.ndarray:
    return _frames(draw, processor.TEMPORAL_PATCH_SIZE * draw(st.integers(1, 3)))


@settings(max_examples=25, deadline=None)
@given(stills())
def test_still_rows_equal_the_plain_formula(frame):
    args = processor.PATCH_SIZE, processor.TEMPORAL_PATCH_SIZE, processor.MERGE_SIZE
    ours = processor._patchify_still(frame, *args)
    plain = _plain_rows(np.repeat(frame[None], processor.TEMPORAL_PATCH_SIZE, axis=0))
    assert ours.dtype == np.float32 and ours.shape == plain.shape
    assert np.array_equal(ours, plain)


@settings(max_examples=25, deadline=None)
@given(videos())
def test_video_rows_equal_the_plain_formula(frames):
    args = processor.PATCH_SIZE, processor.TEMPORAL_PATCH_SIZE, processor.MERGE_SIZE
    assert np.array_equal(processor.patchify(frames, *args), _plain_rows(frames))


def test_every_level_of_every_channel():
    """All 256 levels in every channel: the table holds exactly the formula's value for each."""
    unit = processor.PATCH_SIZE * processor.MERGE_SIZE
    levels = np.arange(256, dtype=np.uint8)
    frame = np.stack([np.roll(levels, 85 * c) for c in range(3)], axis=-1)  # (256, 3): each level per channel
    frame = np.resize(frame, (unit, 10 * unit, 3))
    args = processor.PATCH_SIZE, processor.TEMPORAL_PATCH_SIZE, processor.MERGE_SIZE
    plain = _plain_rows(np.repeat(frame[None], processor.TEMPORAL_PATCH_SIZE, axis=0))
    assert np.array_equal(processor._patchify_still(frame, *args), plain)
