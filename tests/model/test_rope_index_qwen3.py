"""Qwen3-VL's 3-D positions: every temporal patch of a video is its own vision block (between timestamp
text), no `second_per_grid_ts`. Checked against a hand-derived example and, over random layouts
(hypothesis: images, multi-frame videos, text runs, left padding), against transformers 5.24's
`Qwen3VLModel.get_rope_index`; generation positions continue from the deltas.
"""

from __future__ import annotations

import pytest
import torch
from hf_models import TIMESTAMP_TOKENS, make_prompt
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen3VLConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

from qwenvl_min import Config, get_rope_index

CFG = Config.preset("tiny-qwen3-vl")
with torch.device("meta"):  # get_rope_index reads the config only: no weights needed
    HF = Qwen3VLModel(Qwen3VLConfig(**CFG.to_hf()))


def hf_rope_index(prompt):
    return HF.get_rope_index(
        prompt.input_ids,
        prompt.mm_token_type_ids,
        prompt.image_grid_thw,
        None if prompt.video_grid_thw is None else prompt.video_grid_thw.clone(),
        attention_mask=prompt.attention_mask,
    )


def test_hand_derived_example() -> None:
    """a b <vs> image(2 x 3 merged) <ve> c, then a 2-frame video of 2 x 2 merged tokens per frame:
    <vs> [ts ts <vs> 4 pads <ve>] x 2 <ve>, d. Each frame block starts at the cursor and the cursor moves
    past its largest position; the 2-token timestamps advance it like any text."""
    assert TIMESTAMP_TOKENS == 3
    p = make_prompt(CFG, [[2, ("image", (1, 4, 6)), 1, ("video", (2, 4, 4)), 1]], seed=0)
    pos, delta = get_rope_index(CFG, p.input_ids, p.image_grid_thw, p.video_grid_thw)
    t, h, w = (pos[a, 0].tolist() for a in range(3))
    image = [(3, 3, 3), (3, 3, 4), (3, 3, 5), (3, 4, 3), (3, 4, 4), (3, 4, 5)]
    assert [(t[i], h[i], w[i]) for i in range(3, 9)] == image
    assert (t[9], t[10], t[11]) == (6, 7, 8)  # <ve>, c, the video's outer <vs>
    # frame 0: 3 timestamp tokens 9..11, <vs> 12, pads from 13; frame 1 after the frame's <ve> (15)
    assert t[12:15] == [9, 10, 11] and t[15] == 12
    assert [(t[i], h[i], w[i]) for i in range(16, 20)] == [
        (13, 13, 13),
        (13, 13, 14),
        (13, 14, 13),
        (13, 14, 14),
    ]
    assert t[20] == 15 and t[21:24] == [16, 17, 18] and t[24] == 19
    assert [(t[i], h[i], w[i]) for i in range(25, 29)] == [
        (20, 20, 20),
        (20, 20, 21),
        (20, 21, 20),
        (20, 21, 21),
    ]
    assert t[29:] == [22, 23, 24]  # the frame's <ve>, the outer <ve>, d
    assert delta.tolist() == [[24 + 1 - 32]]


item = st.one_of(
    st.integers(1, 5),
    st.tuples(st.just("image"), st.tuples(st.just(1), st.integers(1, 4), st.integers(1, 4))),
    st.tuples(st.just("video"), st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4))),
).map(lambda x: x if isinstance(x, int) else (x[0], (x[1][0], 2 * x[1][1], 2 * x[1][2])))


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.lists(item, min_size=1, max_size=5), min_size=1, max_size=3), seed=st.integers(0, 99))
def test_matches_transformers_over_random_layouts(rows, seed) -> None:
    lengths = [len(make_prompt(CFG, [row], seed=0).input_ids[0]) for row in rows]
    longest = max(lengths)
    padded = [[("pad", longest - n), *row] if n < longest else row for row, n in zip(rows, lengths)]
    p = make_prompt(CFG, padded, seed=seed)
    pos, delta = get_rope_index(
        CFG, p.input_ids, p.image_grid_thw, p.video_grid_thw, attention_mask=p.attention_mask
    )
    ref_pos, ref_delta = hf_rope_index(p)
    assert torch.equal(pos, ref_pos)
    assert torch.equal(delta.view(-1), ref_delta.view(-1))


def test_second_per_grid_ts_is_refused() -> None:
    p = make_prompt(CFG, [[1, ("video", (2, 4, 4)), 1]], seed=0)
    with pytest.raises(ValueError, match="Qwen3-VL carries time in the timestamp text"):
        get_rope_index(CFG, p.input_ids, None, p.video_grid_thw, [1.0])


def test_a_video_grid_needs_one_block_per_temporal_patch() -> None:
    """A video written as one block of t*h*w pads (the Qwen2-VL layout) is not a Qwen3-VL prompt."""
    qwen2_layout = torch.tensor(
        [[1, CFG.vision_start_token_id, *[CFG.video_token_id] * 8, CFG.vision_end_token_id, 2]]
    )
    with pytest.raises(ValueError, match="runs into the next frame's pad tokens"):
        get_rope_index(CFG, qwen2_layout, None, torch.tensor([[2, 4, 4]]))
