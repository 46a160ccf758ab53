"""transformers' forward keywords on our model, against transformers 5.24 (fp32, CPU, seeded random tiny models
of every family): output_hidden_states, output_attentions, return_dict, use_cache.

- `.hidden_states` equals transformers' (L + 1 tensors: embeddings, each layer, the last after the final
  norm) and our taps (`text.layers.0.input`, `text.layers.{i-1}`, `text.norm`);
- `.attentions` equals transformers' *eager* attention probabilities (its sdpa path returns none);
- `return_dict=False` gives transformers' tuple order; use_cache=True returns a cache that decodes on.

Tolerance (fp32): max abs error <= 1e-5 x max(1, max|reference|): both sides run the same fp32 math in a
different order (SDPA vs eager softmax, window batching), a few ulps per op times depth; observed <= 1e-6
of the scale for hidden states, ~5e-8 absolute for probabilities (which are <= 1). Any real error (a wrong
mask, position or norm) moves them by 1e-3 or more. Padded query rows are not compared: transformers'
eager fills a padded row's keys with its dtype's minimum (a uniform row), ours lets it see itself only; the
logits of those rows are discarded by both.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hf_models import build_hf, make_prompt, max_err, scale_of, tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwenvl_min import KVCache, QwenVL
from qwenvl_min.model.attention import causal_attention_maps
from qwenvl_min.model.positions import generation_positions

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
RTOL = 1e-5  # see the module docstring

# Videos: merged 4x6 per frame; Qwen2.5-VL at 2 tokens/s and 0.75 s per grid steps time by 1.5. The largest
# temporal offset stays below the largest width offset, so transformers 5.24's placement of the text after
# the video equals the trained rule's (docs/design.md, "3-D positions").
VIDEO = {
    "qwen2_vl": ((3, 8, 12), None),
    "qwen2_5_vl": ((4, 8, 12), [0.75]),
    # Qwen3-VL: one block per frame, timestamps as text (positions restart per frame)
    "qwen3_vl": ((3, 8, 12), None),
    "qwen3_vl_moe": ((2, 8, 12), None),
}


def layout(name: str, family: str) -> tuple[list[list], list[float] | None]:
    video, seconds = VIDEO[family]
    return {
        "image": ([[3, ("image", (1, 8, 12)), 4]], None),
        "video": ([[2, ("video", video), 3]], seconds),
        "padded_batch": ([[("pad", 5), 2, ("image", (1, 8, 12)), 3], [3, ("image", (1, 12, 8)), 7]], None),
    }[name]


@functools.cache
def models(family: str, tied: bool = False) -> tuple:
    """(transformers eager, ours) with the same weights; eager is transformers' only path with maps."""
    cfg = tiny_config(family, tied)
    hf = build_hf(cfg, seed=0, attn="eager")
    state = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    return cfg, hf, QwenVL.from_hf(cfg.to_hf(), state)


def prompt_for(family: str, name: str):
    cfg = tiny_config(family, False)
    rows, seconds = layout(name, family)
    return make_prompt(cfg, rows, seed=7, second_per_grid_ts=seconds)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", ["image", "video", "padded_batch"])
def test_hidden_states_and_attentions_equal_transformers(family, case):
    cfg, hf, ours = models(family)
    prompt = prompt_for(family, case)
    with torch.no_grad():
        want = hf(**prompt.hf(), output_hidden_states=True, output_attentions=True, use_cache=False)
        got = ours(**prompt.hf(), output_hidden_states=True, output_attentions=True)
    layers = cfg.text.num_layers
    assert len(got.hidden_states) == len(want.hidden_states) == layers + 1
    assert len(got.attentions) == len(want.attentions) == layers
    valid = prompt.valid  # (B, T)
    for ours_h, hf_h in zip(got.hidden_states, want.hidden_states):
        assert ours_h.shape == hf_h.shape == (*valid.shape, cfg.text.hidden_size)
        assert max_err(ours_h[valid], hf_h[valid]) <= RTOL * scale_of(hf_h[valid])
    for ours_a, hf_a in zip(got.attentions, want.attentions):
        b, t = valid.shape
        assert ours_a.shape == hf_a.shape == (b, cfg.text.num_heads, t, t)
        rows = valid[:, None, :].expand(-1, cfg.text.num_heads, -1)  # (B, H, T) valid queries
        assert max_err(ours_a[rows], hf_a[rows]) <= RTOL
    assert max_err(got.logits[valid], want.logits[valid]) <= RTOL * scale_of(want.logits[valid])


@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_are_the_taps_they_are_documented_as(family):
    cfg, _, ours = models(family)
    prompt = prompt_for(family, "image")
    layers = cfg.text.num_layers
    # Qwen3-VL: a layer with DeepStack features records its output before they are added (transformers'
    # hook sits on the decoder layer), which is the input of its `deepstack` module
    stacked = len(cfg.vision.deepstack_indexes)
    names = [f"text.layers.{i}.deepstack.input" if i < stacked else f"text.layers.{i}" for i in range(layers)]
    names = ["text.layers.0.input", *names, "text.norm"]
    with torch.no_grad(), ours.taps(read=names) as taps:
        out = ours(**prompt.hf(), output_hidden_states=True)
    hidden = out.hidden_states
    assert torch.equal(hidden[0], taps.cache["text.layers.0.input"])
    for i in range(1, layers):
        assert torch.equal(hidden[i], taps.cache[names[i]])
    # the last entry is after the final norm: not the last layer's output (they differ a lot)
    assert torch.equal(hidden[-1], taps.cache["text.norm"])
    assert max_err(hidden[-1], taps.cache[f"text.layers.{layers - 1}"]) > 0.5


@pytest.mark.parametrize("family", FAMILIES)
def test_flags_change_nothing_else_and_materialise_only_what_is_asked(family):
    cfg, _, ours = models(family)
    prompt = prompt_for(family, "padded_batch")
    with torch.no_grad():
        plain = ours(**prompt.hf())
        hidden_only = ours(**prompt.hf(), output_hidden_states=True)
        maps_only = ours(**prompt.hf(), output_attentions=True)
    assert plain.hidden_states is None and plain.attentions is None
    assert hidden_only.attentions is None and maps_only.hidden_states is None
    assert torch.equal(hidden_only.logits, plain.logits)
    # the materializing attention runs in fp32 then rounds probabilities: same math, another order
    valid = prompt.valid
    assert max_err(maps_only.logits[valid], plain.logits[valid]) <= RTOL * scale_of(plain.logits[valid])
    for probs in maps_only.attentions:
        sums = probs.sum(-1)[valid[:, None, :].expand_as(probs[..., 0])]
        assert max_err(sums, torch.ones_like(sums)) <= 1e-6
        assert bool((probs.triu(1) == 0).all())  # causal: no query sees a later key


def test_attentions_are_in_the_activation_dtype_and_match_transformers_bf16():
    """bf16: transformers' eager returns probabilities rounded to bf16 (softmax in fp32), so do we. Against
    the fp32 probabilities our error is at most twice transformers' own plus one bf16 ulp at 1 (2^-8)."""
    cfg, hf32, ours32 = models("qwen2_5_vl")
    prompt = prompt_for("qwen2_5_vl", "image")
    hf16 = build_hf(cfg, seed=0, attn="eager").to(torch.bfloat16)
    ours16 = QwenVL.from_hf(cfg.to_hf(), hf16.state_dict())
    with torch.no_grad():
        ref = ours32(**prompt.hf(), output_attentions=True).attentions
        want = hf16(**prompt.hf(), output_attentions=True, use_cache=False).attentions
        got = ours16(**prompt.hf(), output_attentions=True).attentions
    for r, w, g in zip(ref, want, got):
        assert g.dtype == w.dtype == torch.bfloat16
        assert max_err(g, r) <= 2 * max_err(w, r) + 2**-8


@pytest.mark.parametrize("family", FAMILIES)
def test_return_dict_false_is_transformers_tuple(family):
    cfg, hf, ours = models(family)
    prompt = prompt_for(family, "image")
    labels = prompt.input_ids
    with torch.no_grad():
        want = hf(**prompt.hf(), labels=labels, output_hidden_states=True, use_cache=False, return_dict=False)
        got = ours(**prompt.hf(), labels=labels, output_hidden_states=True, return_dict=False)
    assert isinstance(got, tuple) and len(got) == 3  # loss, logits, hidden_states
    # transformers appends its vision tower's outputs after these; the leading entries are the same
    for ours_x, hf_x in zip(got, want[:3]):
        ours_x = torch.stack(ours_x) if isinstance(ours_x, tuple) else ours_x
        hf_x = torch.stack(hf_x) if isinstance(hf_x, tuple) else hf_x
        assert max_err(ours_x, hf_x) <= RTOL * scale_of(hf_x)
    logits_only = ours(**prompt.hf(), return_dict=False)
    assert len(logits_only) == 1 and torch.equal(logits_only[0], got[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_use_cache_returns_a_cache_that_decodes_on(family):
    cfg, _, ours = models(family)
    prompt = prompt_for(family, "image")
    ids = prompt.input_ids
    with torch.no_grad():
        first = ours(**prompt.hf(), use_cache=True)
        assert isinstance(first.cache, KVCache) and first.cache.length == ids.shape[1]
        token = first.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        length = torch.tensor([ids.shape[1]])
        positions = generation_positions(first.rope_deltas, length, 0, 1)  # (3, B, 1)
        step = ours(token, cache=first.cache, positions=positions)
        full = ours(**{**prompt.hf(), "input_ids": torch.cat([ids, token], 1), "mm_token_type_ids": None})
        assert ours(**prompt.hf(), use_cache=False).cache is None
    assert max_err(step.logits[:, -1], full.logits[:, -1]) <= RTOL * scale_of(full.logits[:, -1])
    with pytest.raises(ValueError, match="use_cache=False but a cache was given"):
        ours(**prompt.hf(), use_cache=False, cache=KVCache(cfg.text.num_layers))


def test_bad_flags_and_a_replaced_attend_are_clear_errors():
    cfg, _, ours = models("qwen2_vl")
    prompt = prompt_for("qwen2_vl", "image")
    with pytest.raises(ValueError, match="output_hidden_states must be True or False, got 2.*taps"):
        ours(**prompt.hf(), output_hidden_states=2)
    with pytest.raises(ValueError, match="return_dict must be True or False"):
        ours(**prompt.hf(), return_dict="yes")
    with pytest.raises(ValueError, match="use_cache must be True, False or None"):
        ours(**prompt.hf(), use_cache=1)
    # output_attentions reproduces the default attention only: a '.probs' tap's swap (or a function of the
    # user's) is refused, never silently bypassed
    with torch.no_grad(), ours.taps(read=["text.layers.1.attn.probs"]):
        with pytest.raises(ValueError, match=r"text\.layers\.1\.attn.*replaced.*taps\(read="):
            ours(**prompt.hf(), output_attentions=True)


@functools.cache
def _hypothesis_models(family: str) -> tuple:
    return models(family, tied=True)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(FAMILIES),
    before=st.integers(1, 4),
    after=st.integers(1, 4),
    grid=st.sampled_from([(1, 4, 4), (1, 8, 12), (1, 10, 14), (1, 16, 8)]),
    pads=st.integers(0, 3),
)
def test_any_layout_gives_transformers_maps(family, before, after, grid, pads):
    """Random text lengths, grids (sub-window, edge windows) and left padding on the second row."""
    cfg, hf, ours = _hypothesis_models(family)
    rows = [[before + pads, ("image", grid), after], [("pad", pads), before, ("image", grid), after]]
    prompt = make_prompt(cfg, rows, seed=before * 31 + after)
    with torch.no_grad():
        want = hf(**prompt.hf(), output_attentions=True, use_cache=False).attentions
        got = ours(**prompt.hf(), output_attentions=True).attentions
    rows_valid = prompt.valid[:, None, :].expand(-1, cfg.text.num_heads, -1)
    for ours_a, hf_a in zip(got, want, strict=True):
        assert max_err(ours_a[rows_valid], hf_a[rows_valid]) <= RTOL


def test_maps_function_masks_in_place_without_changing_results():
    """`causal_attention_maps` masks its own scores in place; the probabilities equal an independent
    softmax over the allowed keys."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 2, 7, 8, generator=g)
    mask = torch.rand(2, 1, 5, 7, generator=g) > 0.3
    mask[..., -1] = True  # every query sees at least one key
    probs = causal_attention_maps(q, k, mask, 0.3)
    k_full = k.repeat_interleave(2, dim=1)
    scores = torch.einsum("bhtd,bhkd->bhtk", q.double(), k_full.double()) * 0.3
    expected = torch.where(mask, scores, -torch.inf).softmax(-1)
    assert max_err(probs, expected) <= 1e-6
