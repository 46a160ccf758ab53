"""Full-model parity with transformers 5.24 (fp32, CPU, seeded random weights), both families.

Configs: the tiny presets (vision depth 4, Qwen2.5 full-attention blocks at (1, 3), windows of 4x4 merged
tokens, GQA 4 query / 2 kv heads, non-uniform mrope_section (2, 3, 3)), each with a tied and an untied
lm_head. Grids are chosen so windows include exact multiples of the window side (merged side 4k, where
HF pads with whole empty windows), edge windows (merged side 4k + r) and sub-window images.

Compared: logits, every decoder layer's hidden states (plus the embeddings and the final norm), the
pre-merge vision features (our `visual.merger.input` tap, input order, vs HF's `last_hidden_state`, put back
from window order for Qwen2.5) and the merged features (`model.visual` vs HF's `pooler_output`).

Tolerance rule (fp32): max abs error <= 1e-5 * max(1, max|reference|). Both sides run the same fp32 math
in a different order (different batching of windows / heads, SDPA vs our segment batching), so the error
is accumulated rounding: a few fp32 ulps (1.2e-7 relative) per op, times depth. We observe at most
~2e-6 of the scale (pre-merge features; logits and layer states ~1e-6), so 1e-5 leaves ~5x headroom, while
any real bug (a wrong position, window, norm or mask) moves outputs by 1e-3 or more of their scale.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hf_models import (
    build_pair,
    hf_window_to_input_order,
    make_prompt,
    max_err,
    scale_of,
    tiny_config,
)

RTOL = 1e-5  # see the module docstring

FAMILIES = ("qwen2_vl", "qwen2_5_vl")

# Grids are (t, h, w) in patches; the window is 4 merged tokens = 8 patches per side.
# (1,16,16): merged 8x8, both sides exact multiples of the window (HF pads with empty windows).
# (1,16,20): merged 8x10 -> 4k and 4k+2 (edge windows of width 2).  (1,8,12): merged 4x6.
# (1,10,14): merged 5x7, neither side a multiple of the window (edge + corner windows).
# Videos: merged 4x6 per frame (window 4x4 plus 4x2 edge). Qwen2-VL t=3 -> T offsets 0,1,2;
# Qwen2.5-VL t=4 with second_per_grid_ts 0.75 and tokens_per_second 2 -> step 1.5 -> T offsets 0,1,3,4.
# In both the largest temporal offset (2 or 4) is <= the largest h/w offset (5), so HF 5.24's cursor rule
# (s + max(H', W')) and the trained rule (largest position + 1) agree (docs/design.md, "3-D positions").
VIDEO = {"qwen2_vl": ((3, 8, 12), None), "qwen2_5_vl": ((4, 8, 12), [0.75])}


def case_layout(name: str, family: str) -> tuple[list[list], list[float] | None]:
    video, seconds = VIDEO[family]
    layouts = {
        "text": ([[12]], None),
        "one_image": ([[3, ("image", (1, 16, 16)), 4]], None),
        "two_images": ([[3, ("image", (1, 16, 20)), 2, ("image", (1, 8, 12)), 3]], None),
        "odd_image": ([[2, ("image", (1, 10, 14)), 3]], None),
        "video": ([[2, ("video", video), 3]], seconds),
        "image_and_video": ([[2, ("image", (1, 8, 8)), 2, ("video", video), 2]], seconds),
        # row 0 is left padded; rows are 36 tokens long
        "left_padding": (
            [
                [("pad", 5), 2, ("image", (1, 8, 12)), 3],
                [3, ("image", (1, 12, 8)), 7],
            ],
            None,
        ),
    }
    return layouts[name]


CASES = ("text", "one_image", "two_images", "odd_image", "video", "image_and_video", "left_padding")


@functools.cache
def models(family: str, tied: bool):
    return build_pair(tiny_config(family, tied), seed=1234 + tied)


def check(name: str, got: torch.Tensor, ref: torch.Tensor, rtol: float = RTOL) -> float:
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    err, scale = max_err(got, ref), scale_of(ref)
    assert err <= rtol * scale, f"{name}: max abs err {err:.3e} > {rtol:g} * scale {scale:.3g}"
    return err / scale


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_forward_parity(family: str, case: str, tied: bool) -> None:
    hf, ours = models(family, tied)
    cfg = ours.config
    rows, seconds = case_layout(case, family)
    seed = 10 * FAMILIES.index(family) + CASES.index(case)
    prompt = make_prompt(cfg, rows, seed=seed, second_per_grid_ts=seconds)
    valid = prompt.valid
    layers = cfg.text.num_layers

    # HF: output_hidden_states gives [embeddings, layer 0 .. layer L-2, final-norm output]; the last
    # layer's own output is replaced by the normed one, so catch it with a hook.
    last_layer = {}
    hook = hf.model.language_model.layers[-1].register_forward_hook(
        lambda mod, args, out: last_layer.setdefault("out", out[0] if isinstance(out, tuple) else out)
    )
    try:
        ref = hf(**prompt.hf(), output_hidden_states=True)
    finally:
        hook.remove()
    assert len(ref.hidden_states) == layers + 1

    names = ["text.layers.0.input", "text.norm", "visual.merger.input", "visual.merger"]
    names += [f"text.layers.{i}" for i in range(layers)]
    if prompt.pixel_values is None and prompt.pixel_values_videos is None:
        names = [n for n in names if not n.startswith("visual.")]
    with ours.taps(read=names) as taps:
        out = ours(prompt.input_ids, **prompt.ours())

    check("logits", out.logits[valid], ref.logits[valid])
    check("text.layers.0.input", taps.cache["text.layers.0.input"][valid], ref.hidden_states[0][valid])
    for i in range(layers - 1):
        check(f"text.layers.{i}", taps.cache[f"text.layers.{i}"][valid], ref.hidden_states[i + 1][valid])
    check(
        f"text.layers.{layers - 1}", taps.cache[f"text.layers.{layers - 1}"][valid], last_layer["out"][valid]
    )
    check("text.norm", taps.cache["text.norm"][valid], ref.hidden_states[layers][valid])

    if "visual.merger.input" not in names:
        return
    # our tower runs images then videos in one pass; HF runs them separately
    pre, post = [], []
    for outputs, grid in (
        (ref.image_outputs, prompt.image_grid_thw),
        (ref.video_outputs, prompt.video_grid_thw),
    ):
        if outputs is None:
            continue
        pre.append(hf_window_to_input_order(cfg, outputs.last_hidden_state, grid))
        post.append(torch.cat(outputs.pooler_output))
    check("visual.merger.input", taps.cache["visual.merger.input"], torch.cat(pre))
    check("visual.merger", taps.cache["visual.merger"], torch.cat(post))

    # the public tower API, per modality
    for pixels, grid in (
        (prompt.pixel_values, prompt.image_grid_thw),
        (prompt.pixel_values_videos, prompt.video_grid_thw),
    ):
        if pixels is None:
            continue
        check("visual()", ours.visual(pixels, grid), hf.model.visual(pixels, grid_thw=grid).pooler_output)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_vision_window_order_is_not_input_order(family: str) -> None:
    """Guard for the reordering above: for Qwen2.5 HF's raw last_hidden_state is NOT in input order on a
    multi-window image, so the pre-merge comparison really exercises our un-permutation."""
    hf, ours = models(family, False)
    prompt = make_prompt(ours.config, [[1, ("image", (1, 16, 20)), 1]], seed=3)
    with ours.taps(read=["visual.merger.input"]) as taps:
        ours(prompt.input_ids, **prompt.ours())
    raw = hf.model.visual(prompt.pixel_values, grid_thw=prompt.image_grid_thw).last_hidden_state
    err = max_err(taps.cache["visual.merger.input"], raw)
    if family == "qwen2_5_vl":
        assert err > 1e-2 * scale_of(raw)
    else:
        assert err <= RTOL * scale_of(raw)


# ---- bf16 ------------------------------------------------------------------------------------------------
# Our bf16 model and HF's bf16 model are both compared with HF in fp32 (the "truth"). Ours must be at most
# 2x HF-bf16's own error, plus an atol of one bf16 ulp at the output scale (2^-8 * scale): the two bf16
# errors are each a handful of ulps of rounding noise and a single lucky rounding on HF's side could
# otherwise fail a correct implementation. A real bug (fp32 island dropped, wrong cast order) shows up as
# many ulps across the whole output, far beyond that.
BF16_ULP = 2.0**-8


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_bf16_error_within_2x_hf(family: str) -> None:
    hf, ours = build_pair(tiny_config(family, tied=False), seed=77)
    cfg = ours.config
    video, seconds = VIDEO[family]
    prompt = make_prompt(
        cfg, [[2, ("image", (1, 16, 20)), 2, ("video", video), 3]], seed=5, second_per_grid_ts=seconds
    )
    truth_logits = hf(**prompt.hf()).logits
    truth_feat = hf.model.visual(prompt.pixel_values, grid_thw=prompt.image_grid_thw).pooler_output

    hf_bf16, ours_bf16 = hf.to(torch.bfloat16), ours.to(torch.bfloat16)
    hf_logits = hf_bf16(**prompt.hf()).logits.float()
    our_logits = ours_bf16(prompt.input_ids, **prompt.ours()).logits.float()
    hf_feat = hf_bf16.model.visual(prompt.pixel_values, grid_thw=prompt.image_grid_thw).pooler_output
    our_feat = ours_bf16.visual(prompt.pixel_values, prompt.image_grid_thw)

    for name, ours_out, hf_out, truth in (
        ("logits", our_logits, hf_logits, truth_logits),
        ("merged features", our_feat.float(), hf_feat.float(), truth_feat),
    ):
        ours_err, hf_err = max_err(ours_out, truth), max_err(hf_out, truth)
        atol = BF16_ULP * scale_of(truth)
        assert hf_err > 0, f"{name}: HF bf16 equals fp32 exactly, the comparison is vacuous"
        assert ours_err <= 2 * hf_err + atol, (
            f"{name}: ours-bf16 err {ours_err:.3e} > 2 x HF-bf16 err {hf_err:.3e} + {atol:.2e}"
        )
