"""Packed extraction equals one input at a time: several images and videos per forward (tower taps on
`model.visual`, decoder taps on left-padded batch rows), per-input attention maps, the grid layout, the
packing bounds, and a bad input found inside a pack.

The reference is the plain model, one input per forward, read through taps (what `latents` ran before
packing). Tolerance (fp32 rule): max |packed - alone| <= 1e-5 x max(1, max |alone|): a pack changes the
shapes of the matmuls and of the masked attention, so sums run in another order (measured: ~1e-7).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qwenvl_min import Config, QwenVL
from qwenvl_min.inputs.pipeline import Failed
from qwenvl_min.latents.extract import extract_latents
from qwenvl_min.latents.packing import (
    ACCELERATOR_BATCH_TOKENS,
    CPU_ACTIVATION_BYTES,
    default_batch_tokens,
    pack_cost,
    packs,
)
from qwenvl_min.latents.prepare import LatentInput, vision_only_ids
from qwenvl_min.model.attention import SegmentMaps
from qwenvl_min.model.geometry import merged_coordinates, patch_coordinates

TOLERANCE = 1e-5
FAMILIES = ("tiny-qwen2.5-vl", "tiny-qwen2-vl")


def _model(preset: str) -> QwenVL:
    cfg = Config.preset(preset)
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, max_position_embeddings=4096))
    torch.manual_seed(0)
    model = QwenVL(cfg, kernels="torch").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module", params=FAMILIES)
def model(request) -> QwenVL:
    return _model(request.param)


def _item(
    cfg: Config, name: str, grid: tuple[int, int, int], video: bool, seed: int, prompt=()
) -> LatentInput:
    """A prepared input with random pixels; `prompt` token ids go after the vision block."""
    gen = torch.Generator().manual_seed(seed)
    rows = grid[0] * grid[1] * grid[2]
    pixels = torch.randn(rows, 3 * 2 * 14 * 14, generator=gen)
    grid_thw = torch.tensor([grid])
    if video:
        vision = {
            "pixel_values_videos": pixels,
            "video_grid_thw": grid_thw,
            "second_per_grid_ts": torch.tensor([1.0]),
        }
    else:
        vision = {"pixel_values": pixels, "image_grid_thw": grid_thw}
    ids = vision_only_ids(cfg, "video" if video else "image", grid_thw)
    ids = torch.cat([ids, torch.tensor(prompt, dtype=torch.int64)])
    return LatentInput(name, ids, vision, {"kind": "video" if video else "image"})


def _items(cfg: Config) -> list[LatentInput]:
    """Images and videos of different sizes (windows cut at the edges) and prompt lengths, interleaved."""
    specs = [
        ((1, 8, 12), False, (5, 6)),
        ((2, 8, 8), True, ()),
        ((1, 4, 4), False, (7, 8, 9, 10, 11)),
        ((1, 12, 10), False, ()),
        ((4, 4, 6), True, (3,)),
    ]
    return [_item(cfg, f"in{k}", grid, video, seed=k, prompt=p) for k, (grid, video, p) in enumerate(specs)]


def _alone(model: QwenVL, item: LatentInput, names: list[str]) -> dict:
    with torch.inference_mode(), model.taps(read=names) as taps:
        model(item.input_ids[None], **item.vision)
    return taps.cache


def _assert_close(got, want, what: str) -> None:
    if isinstance(want, SegmentMaps):
        assert isinstance(got, SegmentMaps), what
        assert [p.shape for p in got.probs] == [p.shape for p in want.probs], what
        for a, b, ia, ib in zip(got.probs, want.probs, got.token_index, want.token_index):
            assert torch.equal(ia, ib), what
            assert (a - b).abs().max() <= TOLERANCE, what
        return
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = max(1.0, want.abs().max().item())
    assert (got.double() - want.double()).abs().max().item() <= TOLERANCE * scale, what


TOWER = [
    "visual.patch_embed",
    "visual.blocks.0",
    "visual.merger.input",
    "visual.merger",
    "visual.blocks.0.attn.probs",
]
DECODER = [
    "visual.merger.input",
    "text.layers.0.input",
    "text.layers.1",
    "text.norm",
    "lm_head",
    "text.layers.2.attn.probs",
]


@pytest.mark.parametrize("names", [TOWER, DECODER], ids=["tower", "decoder"])
def test_packed_taps_equal_one_input_at_a_time(model, names):
    items = _items(model.config)
    results = list(extract_latents(model, items, names, batch_tokens=10_000, batch_size=8))
    assert [item.name for item, _ in results] == [i.name for i in items]  # order kept
    for item, values in results:
        want = _alone(model, item, names)
        for name in names:
            _assert_close(values[name], want[name], f"{item.name} {name}")


def test_decoder_taps_need_a_forward_of_packs_with_padding(model):
    """A pack of inputs with different lengths: each row's tokens are its own (left padding cut off),
    also when one pack holds a single input and the next several."""
    items = _items(model.config)
    names = ["text.layers.1"]
    rows = [i.rows for i in items]
    bound = max(rows[:2]) * 2  # the first two share a pack, with padding; the bound splits the rest
    results = list(extract_latents(model, items, names, batch_tokens=bound, batch_size=8))
    for item, values in results:
        assert values["text.layers.1"].shape[:2] == (1, len(item.input_ids))
        _assert_close(values["text.layers.1"], _alone(model, item, names)["text.layers.1"], item.name)


def test_grid_layout_puts_each_row_at_its_patch(model):
    items = _items(model.config)
    names = ["visual.merger.input", "visual.merger"]
    rows = dict(extract_latents(model, items, names))
    grids = dict(extract_latents(model, items, names, layout="grid"))
    m = model.config.vision.merge_size
    for item in items:
        t, h, w = item.grid_thw[0].tolist()
        patch, merged = rows[item]["visual.merger.input"], rows[item]["visual.merger"]
        grid_patch, grid_merged = grids[item]["visual.merger.input"], grids[item]["visual.merger"]
        assert grid_patch.shape == (t, h, w, patch.shape[-1]) and grid_merged.shape == (
            t,
            h // m,
            w // m,
            merged.shape[-1],
        )
        coords = patch_coordinates(item.grid_thw, m)  # (N, 2) row, col of every row
        frame = torch.arange(len(coords)) // (h * w)
        assert torch.equal(grid_patch[frame, coords[:, 0], coords[:, 1]], patch)
        where = merged_coordinates(t, h // m, w // m)  # (M, 3)
        assert torch.equal(grid_merged[where[:, 0], where[:, 1], where[:, 2]], merged)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.integers(1, 300), min_size=1, max_size=12),
    batch_tokens=st.integers(1, 800),
    batch_size=st.integers(1, 5),
    decoder=st.booleans(),
)
def test_packs_keep_order_and_bounds(rows, batch_tokens, batch_size, decoder):
    class Sized:  # packs() reads .rows only
        def __init__(self, k: int, n: int) -> None:
            self.k, self.rows = k, n

    items = [Sized(k, n) for k, n in enumerate(rows)]
    groups = list(packs(items, batch_tokens, batch_size, decoder))
    assert [i.k for g in groups for i in g] == list(range(len(rows)))
    for g in groups:
        sizes = [i.rows for i in g]
        assert len(g) <= batch_size
        cost = len(sizes) * max(sizes) if decoder else sum(sizes)
        assert cost == pack_cost(sizes, decoder)
        assert len(g) == 1 or cost <= batch_tokens  # only a single input may be over the bound
    for a, b in zip(groups, groups[1:]):  # greedy: the next input did not fit
        sizes = [i.rows for i in a] + [b[0].rows]
        assert len(sizes) > batch_size or pack_cost(sizes, decoder) > batch_tokens


def test_an_input_the_model_refuses_is_found_inside_its_pack():
    model = _model("tiny-qwen2.5-vl")
    items = _items(model.config)
    items[2].vision["pixel_values"][0, 0] = float("nan")  # the tower refuses non-finite pixels
    results = list(extract_latents(model, items, ["visual.merger"], batch_size=8, errors="skip"))
    assert [type(r).__name__ for r in results] == ["tuple", "tuple", "Failed", "tuple", "tuple"]
    assert isinstance(results[2], Failed) and results[2].source is items[2] and "finite" in results[2].error
    with pytest.raises(ValueError, match="finite"):
        list(extract_latents(model, items, ["visual.merger"]))


def test_default_pack_size_keeps_cpu_activations_under_the_mmap_threshold():
    """On a CPU the widest per-row activation (fused qkv 3 D, or the MLP's hidden width) times the rows of a
    default pack stays within 32 MiB, and one more row would not; an accelerator gets 16384 rows."""
    cpu, gpu = torch.device("cpu"), torch.device("meta")  # any non-CPU device type counts as an accelerator
    for preset in ("qwen2.5-vl-7b", "qwen2-vl-7b", "qwen3-vl-8b", "tiny-qwen2.5-vl"):
        vision = Config.preset(preset).vision
        assert default_batch_tokens(vision, torch.float32, gpu) == ACCELERATOR_BATCH_TOKENS
        for dtype in (torch.float32, torch.bfloat16):
            rows = default_batch_tokens(vision, dtype, cpu)
            row_bytes = max(3 * vision.width, vision.mlp_hidden) * dtype.itemsize
            assert rows * row_bytes <= CPU_ACTIVATION_BYTES
            assert rows == ACCELERATOR_BATCH_TOKENS or (rows + 1) * row_bytes > CPU_ACTIVATION_BYTES
    # Qwen2.5-VL-7B in fp32: 32 MiB / (3840 x 4 B) = 2184 rows, one 640x480 photo (34 x 46 = 1564 rows)
    seven_b = Config.preset("qwen2.5-vl-7b").vision
    assert default_batch_tokens(seven_b, torch.float32, cpu) == 2184
    assert default_batch_tokens(Config.preset("tiny-qwen2.5-vl").vision, torch.float32, cpu) == 16384


def test_extract_latents_uses_the_default_pack_size(model, monkeypatch):
    """batch_tokens=None packs by `default_batch_tokens` of the model's tower, dtype and device."""
    seen = []
    real = packs

    def spy(items, batch_tokens, batch_size, decoder):
        seen.append(batch_tokens)
        return real(items, batch_tokens, batch_size, decoder)

    monkeypatch.setattr("qwenvl_min.latents.extract.packs", spy)
    list(extract_latents(model, [], ["visual.merger"]))
    assert seen == [default_batch_tokens(model.config.vision, torch.float32, torch.device("cpu"))]
