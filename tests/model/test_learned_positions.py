"""Qwen3-VL's learned position grid resampled to each image: the taps and weights against transformers
5.24's own function (bit for bit, hypothesis over grids and table sides), the resampled table against
`F.interpolate(bilinear, align_corners=True)` (an independent reference), and the bf16 rounding order.
"""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.vision_utils import get_vision_interpolation_indices_and_weights

from qwenvl_min.model.geometry import learned_grid_taps
from qwenvl_min.model.vision_qwen3 import LearnedPositions

MERGE = 2
# items of (t, h, w) patches: merged sides 1..25 (odd ones included), up to 3 temporal patches
items = st.lists(
    st.tuples(st.integers(1, 3), st.integers(1, 25), st.integers(1, 25)).map(
        lambda g: (g[0], g[1] * MERGE, g[2] * MERGE)
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=60, deadline=None)
@given(grids=items, side=st.integers(2, 48))
def test_taps_and_weights_equal_transformers(grids, side) -> None:
    grid = torch.tensor(grids)
    index, weight = learned_grid_taps(grid, side, MERGE)
    ref_index, ref_weight = get_vision_interpolation_indices_and_weights(
        grid, num_grid_per_side=side, mode="bilinear", align_corners=True, spatial_merge_size=MERGE
    )
    assert torch.equal(index, ref_index)
    assert torch.equal(weight, ref_weight)  # bit for bit: the same fp32 steps
    assert weight.dtype == torch.float32 and index.shape == (int(grid.prod(1).sum()), 4)


@settings(max_examples=30, deadline=None)
@given(grid=st.tuples(st.integers(1, 2), st.integers(1, 20), st.integers(1, 20)), side=st.integers(2, 12))
def test_resampled_table_is_bilinear_align_corners(grid, side) -> None:
    """The module's (N, D) output, put back in raster order, is F.interpolate of the (side, side) table.
    An fp64 table on both sides; our weights are transformers' fp32 ones (rounded at 2^-24 relative), so
    with table values ~0.02 the two agree to ~1e-9 (atol 1e-7), while a wrong tap or weight is off by
    ~1e-3 or more."""
    t, hm, wm = grid
    h, w = hm * MERGE, wm * MERGE
    width = 5
    module = LearnedPositions(side * side, width).double()
    index, weight = learned_grid_taps(torch.tensor([[t, h, w]]), side, MERGE)
    got = module(index, weight.double())  # (t*h*w, D) in row order
    table = module.weight.detach().view(side, side, width).permute(2, 0, 1)[None]  # (1, D, side, side)
    want = F.interpolate(table, size=(h, w), mode="bilinear", align_corners=True)[0]  # (D, h, w)
    rows = einops.rearrange(want, "d (by iy) (bx ix) -> (by bx iy ix) d", iy=MERGE, ix=MERGE).repeat(t, 1)
    torch.testing.assert_close(got, rows, rtol=0, atol=1e-7)


def test_bf16_table_sums_in_fp32_and_rounds_once() -> None:
    """A bf16 table: the 4 weighted rows are summed in fp32 (the weights are fp32) and cast once, as
    transformers 5.24 does; summing bf16 products in bf16 (transformers 4.57 and several ports) differs
    by one bf16 ulp in many elements (docs/design.md, "Qwen3-VL")."""
    torch.manual_seed(0)
    side, width = 48, 64
    module = LearnedPositions(side * side, width).to(torch.bfloat16)
    grid = torch.tensor([[1, 26, 38]])
    index, weight = learned_grid_taps(grid, side, MERGE)
    got = module(index, weight)
    rows = module.weight.detach()[index]  # (N, 4, D) bf16
    reference = (rows * weight[:, :, None]).sum(1).to(torch.bfloat16)  # fp32 products and sum, one cast
    assert got.dtype == torch.bfloat16 and torch.equal(got, reference)
    in_bf16 = (rows * weight.to(torch.bfloat16)[:, :, None]).unbind(1)
    bf16_sum = in_bf16[0] + in_bf16[1] + in_bf16[2] + in_bf16[3]
    assert not torch.equal(got, bf16_sum)
