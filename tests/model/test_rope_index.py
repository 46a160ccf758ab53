"""`qwenvl_min.get_rope_index`: 3-D M-RoPE positions and per-row deltas.

Three independent references:
  * transformers 5.24's `model.model.get_rope_index`, wherever it follows the trained rule (text, images,
    left padding, videos whose largest temporal offset is <= their largest h/w offset);
  * hand-derived positions (worked out in comments from the rule in docs/design.md, "3-D positions") for text after a
    multi-frame video, where HF 5.24 diverges, plus a test pinning that divergence;
  * a per-token walk written here (`walk_reference`), a different algorithm from ours (which fills whole
    runs and blocks with tensors), on hypothesis-generated layouts.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch
from hf_models import build_hf, make_prompt, merged_tokens, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwenvl_min import Config, get_rope_index

FAMILIES = ("qwen2_vl", "qwen2_5_vl")


@functools.cache
def hf_model(family: str):
    return build_hf(tiny_config(family, tied=True), seed=0)


def hf_rope_index(family: str, prompt) -> tuple[torch.Tensor, torch.Tensor]:
    kw = dict(
        image_grid_thw=prompt.image_grid_thw,
        video_grid_thw=prompt.video_grid_thw,
        attention_mask=prompt.attention_mask,
    )
    if family == "qwen2_5_vl":
        kw["second_per_grid_ts"] = prompt.second_per_grid_ts
    return hf_model(family).model.get_rope_index(prompt.input_ids, prompt.mm_token_type_ids, **kw)


def ours_rope_index(cfg: Config, prompt) -> tuple[torch.Tensor, torch.Tensor]:
    return get_rope_index(
        cfg,
        prompt.input_ids,
        prompt.image_grid_thw,
        prompt.video_grid_thw,
        prompt.second_per_grid_ts,
        prompt.attention_mask,
    )


def assert_same_valid(ours: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor) -> None:
    """Exact integer equality on the valid (unpadded) slots; padded slots may hold anything."""
    assert ours.shape == ref.shape
    mask = valid.unsqueeze(0).expand_as(ours)
    assert torch.equal(ours[mask], ref.to(ours.dtype)[mask]), f"ours\n{ours}\nreference\n{ref}"


# ---- HF where it follows the trained rule -----------------------------------------------------------------

AGREEING_LAYOUTS = {
    "text": ([[9]], None),
    "one_image": ([[2, ("image", (1, 4, 6)), 1]], None),  # a 2x3 merged grid after 2 text tokens
    "two_images": ([[1, ("image", (1, 16, 20)), 3, ("image", (1, 6, 4)), 2]], None),
    "image_at_start_and_end": ([[("image", (1, 8, 8)), ("image", (1, 2, 2))]], None),
    "left_padding": ([[2, ("image", (1, 4, 4)), 1], [1, ("image", (1, 4, 8)), 2]], None),
    # videos with few frames on a wide grid: temporal extent <= spatial extent, rules agree
    "video_wide": ([[2, ("video", (2, 8, 12)), 3]], [0.75]),
    "image_and_video": ([[1, ("image", (1, 4, 4)), 1, ("video", (3, 8, 12)), 2]], [0.75]),
    "two_videos_batch": ([[1, ("video", (2, 4, 8)), 1], [("video", (3, 4, 8)), 2]], [0.5, 0.75]),
}


@pytest.mark.parametrize("layout", sorted(AGREEING_LAYOUTS))
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_hf_where_rules_agree(family: str, layout: str) -> None:
    cfg = tiny_config(family, tied=True)
    rows, seconds = AGREEING_LAYOUTS[layout]
    rows = left_pad(cfg, rows)
    prompt = make_prompt(cfg, rows, seed=1, second_per_grid_ts=seconds if family == "qwen2_5_vl" else None)
    pos, deltas = ours_rope_index(cfg, prompt)
    ref_pos, ref_deltas = hf_rope_index(family, prompt)
    assert pos.dtype == torch.int64 and pos.shape == (3, *prompt.input_ids.shape)
    assert_same_valid(pos, ref_pos, prompt.valid)
    assert torch.equal(deltas, ref_deltas.to(deltas.dtype))


# ---- text after a multi-frame video: hand-derived, and HF 5.24's divergence ------------------------------

# Sequence: a <vs> [video, grid t=4, h=4, w=4 -> t'=4 frames of 2x2 merged tokens = 16 tokens] <ve> b,
# 20 tokens. Trained rule (docs/design.md, "3-D positions"): text tokens take consecutive positions, so a = 0 and
# <vs> = 1; the video block starts at s = 2 and its token (k, i, j) gets (2 + floor(k * step), 2 + i, 2 + j);
# the next text token starts at (largest position used by the block) + 1.
#   Qwen2-VL (step 1): frame T = 2, 3, 4, 5; H = 2,2,3,3 and W = 2,3,2,3 in every frame. Largest = 5, so
#     <ve> = 6, b = 7; delta = (7 + 1) - 20 = -12.
#   Qwen2.5-VL, tokens_per_second 2, second_per_grid_ts 1.0 (step 2.0): frame T = 2, 4, 6, 8. Largest = 8,
#     so <ve> = 9, b = 10; delta = (10 + 1) - 20 = -9.
# HF 5.24 instead moves the cursor to s + max(H', W') = 2 + 2 = 4 (<ve> = 4, b = 5), overlapping the
# video's own temporal positions (transformers 4.57.6 gives 6, 7 / 9, 10 as we do).
MULTI_FRAME = {
    "qwen2_vl": dict(seconds=None, frame_t=[2, 3, 4, 5], after=[6, 7], delta=-12, hf_after=[4, 5]),
    "qwen2_5_vl": dict(seconds=[1.0], frame_t=[2, 4, 6, 8], after=[9, 10], delta=-9, hf_after=[4, 5]),
}


def multi_frame_prompt(family: str):
    cfg = tiny_config(family, tied=True)
    return cfg, make_prompt(
        cfg, [[1, ("video", (4, 4, 4)), 1]], seed=0, second_per_grid_ts=MULTI_FRAME[family]["seconds"]
    )


def expected_multi_frame(family: str) -> torch.Tensor:
    exp = MULTI_FRAME[family]
    t_row, h_row, w_row = [0, 1], [0, 1], [0, 1]
    for frame_t in exp["frame_t"]:
        t_row += [frame_t] * 4
        h_row += [2, 2, 3, 3]
        w_row += [2, 3, 2, 3]
    t_row += exp["after"]
    h_row += exp["after"]
    w_row += exp["after"]
    return torch.tensor([[t_row], [h_row], [w_row]], dtype=torch.int64)


@pytest.mark.parametrize("family", FAMILIES)
def test_text_after_multi_frame_video_follows_trained_rule(family: str) -> None:
    cfg, prompt = multi_frame_prompt(family)
    pos, deltas = ours_rope_index(cfg, prompt)
    assert torch.equal(pos, expected_multi_frame(family))
    assert deltas.tolist() == [[MULTI_FRAME[family]["delta"]]]


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_5_24_diverges_after_multi_frame_video(family: str) -> None:
    """Pins the documented HF 5.24 behaviour: if this starts failing, transformers changed its rule."""
    cfg, prompt = multi_frame_prompt(family)
    ref_pos, _ = hf_rope_index(family, prompt)
    expected = expected_multi_frame(family)
    assert torch.equal(ref_pos[:, :, :-2], expected[:, :, :-2])  # identical up to the video's end
    hf_after = MULTI_FRAME[family]["hf_after"]
    assert ref_pos[:, 0, -2:].tolist() == [hf_after] * 3
    assert hf_after != MULTI_FRAME[family]["after"]


# ---- independent per-token reference on random layouts -------------------------------------------------


def walk_reference(cfg: Config, rows: list[list], seconds: list[float] | None) -> tuple[list, list]:
    """Positions per row as lists of (t, h, w) for valid tokens, and deltas; one token at a time.

    Walks the layout items (not the token ids), keeping a cursor: a text or <vs>/<ve> token takes
    (c, c, c) and c += 1; the k-th token of a vision block with merged grid (t', H', W') is frame
    f = k // (H'W'), row i = (k % H'W') // W', column j = k % W', at (s + floor(f * step), s + i, s + j),
    step computed in float32 like the checkpoints' reference code; after the block c = max over it + 1.
    """
    m = cfg.vision.merge_size
    video_k = 0
    out, deltas = [], []
    for row in rows:
        c, toks = 0, []
        for item in row:
            if isinstance(item, int):
                for _ in range(item):
                    toks.append((c, c, c))
                    c += 1
                continue
            if item[0] == "pad":
                continue
            kind, (t, h, w) = item
            toks.append((c, c, c))  # <vs>
            c += 1
            step = np.float32(1.0)
            if kind == "video" and cfg.model_type == "qwen2_5_vl":
                sec = 1.0 if seconds is None else seconds[video_k]
                step = np.float32(cfg.vision.tokens_per_second) * np.float32(sec)
            if kind == "video":
                video_k += 1
            hh, ww = h // m, w // m
            largest = c
            for k in range(t * hh * ww):
                f, rest = divmod(k, hh * ww)
                i, j = divmod(rest, ww)
                p = (c + math.floor(np.float32(f) * step), c + i, c + j)
                largest = max(largest, *p)
                toks.append(p)
            c = largest + 1
            toks.append((c, c, c))  # <ve>
            c += 1
        out.append(toks)
        deltas.append(c - len(toks))
    return out, deltas


def left_pad(cfg: Config, rows: list[list], extra: int = 0) -> list[list]:
    """Prepend ("pad", n) items so all rows have the longest row's length + extra."""
    lengths = [row_length(cfg, r) for r in rows]
    longest = max(lengths) + extra
    return [([("pad", longest - n)] if longest > n else []) + r for r, n in zip(rows, lengths)]


def row_length(cfg: Config, row: list) -> int:
    n = 0
    for item in row:
        if isinstance(item, int):
            n += item
        elif item[0] == "pad":
            n += item[1]
        else:
            n += merged_tokens(cfg, item[1]) + 2
    return n


@st.composite
def layouts(draw, agree_with_hf: bool):
    """(family, rows, seconds): 1-3 rows of text runs and image/video blocks with small grids, left padded
    to equal length (plus random extra padding). With agree_with_hf, videos are shortened until their
    largest temporal offset is <= their largest h/w offset (where HF 5.24 follows the trained rule)."""
    family = draw(st.sampled_from(FAMILIES))
    cfg = tiny_config(family, tied=True)
    # Qwen2.5-VL: explicit second_per_grid_ts, or None (then every video uses 1.0 s per grid)
    explicit = family == "qwen2_5_vl" and draw(st.booleans())
    rows, seconds = [], []
    for _ in range(draw(st.integers(1, 3))):
        row = []
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["text", "image", "video"]))
            if kind == "text":
                row.append(draw(st.integers(1, 4)))
                continue
            h, w = 2 * draw(st.integers(1, 5)), 2 * draw(st.integers(1, 5))
            t = 1 if kind == "image" else draw(st.integers(1, 6))
            if kind == "video":
                sec = draw(st.sampled_from([0.25, 0.5, 0.75, 1.0, 1.3, 2.0])) if explicit else 1.0
                step = np.float32(cfg.vision.tokens_per_second) * np.float32(sec)
                if family == "qwen2_vl":
                    step = np.float32(1.0)
                if agree_with_hf:
                    while t > 1 and math.floor(np.float32(t - 1) * step) > max(h, w) // 2 - 1:
                        t -= 1
                seconds.append(sec)
            row.append((kind, (t, h, w)))
        rows.append(row)
    rows = left_pad(cfg, rows, extra=draw(st.integers(0, 2)))
    return family, rows, seconds if explicit else None


HYPO = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@HYPO
@given(layouts(agree_with_hf=False))
def test_random_layouts_match_walk_reference(case) -> None:
    family, rows, seconds = case
    cfg = tiny_config(family, tied=True)
    prompt = make_prompt(cfg, rows, seed=0, second_per_grid_ts=seconds)
    pos, deltas = ours_rope_index(cfg, prompt)
    ref_rows, ref_deltas = walk_reference(cfg, rows, seconds)
    for b, ref in enumerate(ref_rows):
        valid = prompt.valid[b]
        got = pos[:, b, valid].T.tolist()
        assert got == [list(p) for p in ref], f"row {b}"
    assert deltas.squeeze(1).tolist() == ref_deltas


@HYPO
@given(layouts(agree_with_hf=True))
def test_random_layouts_match_hf_where_rules_agree(case) -> None:
    family, rows, seconds = case
    cfg = tiny_config(family, tied=True)
    prompt = make_prompt(cfg, rows, seed=0, second_per_grid_ts=seconds)
    pos, deltas = ours_rope_index(cfg, prompt)
    ref_pos, ref_deltas = hf_rope_index(family, prompt)
    assert_same_valid(pos, ref_pos, prompt.valid)
    assert torch.equal(deltas, ref_deltas.to(deltas.dtype))


def test_tokens_per_second_scales_video_time() -> None:
    """tokens_per_second comes from the config (released: 2; HF's class default 4 is not used)."""
    base = tiny_config("qwen2_5_vl", tied=True)
    prompt = make_prompt(base, [[("video", (3, 4, 4))]], seed=0, second_per_grid_ts=[0.5])
    # block starts at s = 1 (after <vs>); frames at 1 + floor(k * tps * 0.5)
    for tps, frame_t in ((2, [1, 2, 3]), (4, [1, 3, 5]), (1, [1, 1, 2])):
        cfg = dataclasses.replace(base, vision=dataclasses.replace(base.vision, tokens_per_second=float(tps)))
        pos, _ = ours_rope_index(cfg, prompt)
        assert pos[0, 0, 1:13:4].tolist() == frame_t
