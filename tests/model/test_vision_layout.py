"""Vision token layout vs transformers 5.24 on random grids: Qwen2.5-VL window permutation and window
segments, per-frame segments, and the 2-D rotary coordinates / cos-sin tables. All comparisons exact:
these are integer layouts and identical fp32 expressions.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionRotaryEmbedding
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLVisionRotaryEmbedding
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

from qwenvl_min.model.geometry import frame_lengths, patch_coordinates, window_unit_order
from qwenvl_min.model.rope import vision_rotary_table
from qwenvl_min.model.segments import Segments

MERGE, PATCH = 2, 14

# grids (t, h, w) in patches, h and w even; up to 26 patches a side = 13 merged tokens, i.e. up to three
# full windows of 4 plus an edge, and exact multiples (merged side 4, 8, 12) are well represented
grid_st = st.tuples(
    st.integers(1, 3), st.integers(1, 13).map(lambda x: 2 * x), st.integers(1, 13).map(lambda x: 2 * x)
)
grids_st = st.lists(grid_st, min_size=1, max_size=3).map(lambda g: torch.tensor(g, dtype=torch.int64))
# window side in pixels: the released 112 (4 merged tokens) and two others
window_st = st.sampled_from([112, 56, 168])

HYPO = settings(max_examples=60, deadline=None, derandomize=True)


@HYPO
@given(grids_st, window_st)
def test_window_unit_order_matches_hf(grid: torch.Tensor, window: int) -> None:
    unit_index, sizes = window_unit_order(grid, window // (PATCH * MERGE), MERGE)
    hf_index, hf_cu = get_vision_window_index(grid, MERGE, window, PATCH)
    # unit order: the same merge units, in the same order
    assert torch.equal(unit_index, hf_index)
    # HF pads exact multiples with whole empty windows, then drops the empty segments (unique_consecutive);
    # ours never makes them: window sizes are all positive and give the same boundaries
    assert all(s > 0 for s in sizes)
    segments = Segments.from_lengths(sizes)
    assert torch.equal(segments.cu_seqlens, hf_cu.to(torch.int32))
    assert segments.num_tokens == int(grid.prod(dim=1).sum())
    # unit_index is a permutation of all merge units
    assert torch.equal(unit_index.sort().values, torch.arange(int(grid.prod(dim=1).sum()) // MERGE**2))


@HYPO
@given(grids_st, window_st)
def test_windows_are_tiles_of_single_frames(grid: torch.Tensor, window: int) -> None:
    """Independent of HF: every window holds merge units of one frame, within one window-tile of it."""
    win = window // (PATCH * MERGE)
    unit_index, sizes = window_unit_order(grid, win, MERGE)
    # (item, frame, row, col) of every merge unit in input order
    owners = []
    for item, (t, h, w) in enumerate(grid.tolist()):
        for f in range(t):
            for r in range(h // MERGE):
                for c in range(w // MERGE):
                    owners.append((item, f, r // win, c // win))
    start = 0
    seen = set()
    for size in sizes:
        units = unit_index[start : start + size // MERGE**2].tolist()
        tiles = {owners[u] for u in units}
        assert len(tiles) == 1, "a window mixes tiles"
        tile = tiles.pop()
        assert tile not in seen, "a tile is split over windows"
        seen.add(tile)
        assert units == sorted(units), "merged tokens inside a window must stay row-major"
        start += size // MERGE**2
    assert len(seen) == len(set(owners))


@HYPO
@given(grids_st)
def test_frame_segments_match_hf(grid: torch.Tensor) -> None:
    segments = Segments.from_lengths(frame_lengths(grid))
    assert torch.equal(segments.cu_seqlens, get_vision_cu_seqlens(grid))
    # one segment per temporal patch of each image/video
    assert len(segments.lengths) == int(grid[:, 0].sum())


def hf_rotary(family: str, head_dim: int):
    heads = 2
    if family == "qwen2_vl":
        cfg = Qwen2VLVisionConfig(embed_dim=head_dim * heads, num_heads=heads, hidden_size=64, depth=1)
        return Qwen2VLVisionRotaryEmbedding(cfg)
    cfg = Qwen2_5_VLVisionConfig(hidden_size=head_dim * heads, num_heads=heads, out_hidden_size=64, depth=1)
    return Qwen2_5_VLVisionRotaryEmbedding(cfg)


@HYPO
@given(grids_st, st.sampled_from(["qwen2_vl", "qwen2_5_vl"]), st.sampled_from([16, 80]))
def test_rotary_coordinates_and_tables_match_hf(grid: torch.Tensor, family: str, head_dim: int) -> None:
    coords = patch_coordinates(grid, MERGE)
    hf_ids = get_vision_position_ids(grid, MERGE)
    assert torch.equal(coords, hf_ids)

    cos, sin = vision_rotary_table(grid, head_dim, 10000.0, MERGE)  # (N, D/2)
    hf_cos, hf_sin = hf_rotary(family, head_dim)(torch.zeros(1), hf_ids)  # (N, D) = [half | half]
    assert cos.dtype == torch.float32 and cos.shape == (hf_ids.shape[0], head_dim // 2)
    assert torch.equal(torch.cat((cos, cos), -1), hf_cos)
    assert torch.equal(torch.cat((sin, sin), -1), hf_sin)


def test_known_layouts() -> None:
    """Hand-checked examples, independent of the HF code."""
    idx, sizes = window_unit_order(torch.tensor([[1, 8, 12]]), 4, MERGE)  # merged 4x6: a 4x4 and a 4x2 window
    assert idx.tolist() == [
        0,
        1,
        2,
        3,
        6,
        7,
        8,
        9,
        12,
        13,
        14,
        15,
        18,
        19,
        20,
        21,
        4,
        5,
        10,
        11,
        16,
        17,
        22,
        23,
    ]
    assert sizes == [64, 32]
    _, sizes = window_unit_order(torch.tensor([[1, 20, 28]]), 4, MERGE)  # merged 10x14
    assert [s // 4 for s in sizes] == [16, 16, 16, 8, 16, 16, 16, 8, 8, 8, 8, 4]
    _, sizes = window_unit_order(torch.tensor([[2, 4, 6]]), 4, MERGE)  # one window per frame
    assert sizes == [24, 24]
    coords = patch_coordinates(torch.tensor([[1, 4, 6]]), MERGE)
    assert coords[:12, 0].tolist() == [0, 0, 1, 1] * 3
    assert coords[:12, 1].tolist() == [0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5]
