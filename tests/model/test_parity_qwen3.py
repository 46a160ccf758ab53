"""Qwen3-VL and Qwen3-VL-MoE parity with transformers 5.24 (fp32, CPU, seeded random weights).

Configs: the tiny presets (vision depth 4 with DeepStack from blocks 0 and 2, a 7 x 7 learned position
grid resampled to every image, explicit head_dim 24 with 4 heads of width 64, GQA 4/2, interleaved
mrope_section (6, 3, 3); the MoE variant with 6 experts, 2 per token, sparse layers 0 and 2 around a dense
layer 1), each with a tied and an untied lm_head.

Compared: logits; every decoder layer's output before the DeepStack addition (HF's hidden_states, our
`text.layers.{i}.deepstack.input`) and after it (what HF's next layer receives, our `text.layers.{i}`);
every DeepStack level (`visual.deepstack_mergers.{k}` vs HF's deepstack_features), the pre-merge patch
features and the merged features; for MoE the router logits of every sparse layer. Prompts hold two
images and a three-frame video (frames laid out as 5.24's processor writes them), a video placed before
an image (DeepStack rows must follow the sequence, not the tower's images-then-videos order), left
padding, and text alone.

Tolerance rule (fp32): max abs error <= 1e-5 * max(1, max|reference|), as in test_parity_model.py: both
sides run the same fp32 math in a different order (SDPA per frame vs our segment batching, grouped
experts); measured errors are ~1e-6 of the scale, any real bug (a position, a tap, a DeepStack row in the
wrong place) moves outputs by 1e-2 or more.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from hf_models import build_pair, make_prompt, max_err, scale_of

from qwenvl_min import Config, QwenVL
from qwenvl_min.generate import generate
from qwenvl_min.weights_convert.mapping import hf_key_to_ours, hf_tensor_to_ours

RTOL = 1e-5  # see the module docstring
FAMILIES = {"qwen3_vl": "tiny-qwen3-vl", "qwen3_vl_moe": "tiny-qwen3-vl-moe"}
CASES = {
    # grids in 16-px patches: (1, 8, 12) -> 4 x 6 merged tokens, (1, 10, 6) -> 5 x 3, video 3 frames of 4 x 4
    "two_images_and_video": [
        [2, ("image", (1, 8, 12)), 2, ("video", (3, 8, 8)), 2, ("image", (1, 10, 6)), 3]
    ],
    "video_before_image": [[3, ("video", (2, 6, 10)), 2, ("image", (1, 4, 4)), 2]],
    "left_padding": [
        [("pad", 9), 2, ("image", (1, 6, 6)), 2, ("video", (2, 4, 8)), 1],
        [17, ("video", (1, 6, 4)), 2, ("image", (1, 8, 8)), 3],
    ],
    "text": [[14]],
}


def config(family: str, tied: bool) -> Config:
    cfg = Config.preset(FAMILIES[family])
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, tie_word_embeddings=tied))


@functools.cache
def models(family: str, tied: bool):
    return build_pair(config(family, tied), seed=300 + tied)


def check(name: str, got: torch.Tensor, ref: torch.Tensor, rtol: float = RTOL) -> float:
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    err, scale = max_err(got, ref), scale_of(ref)
    assert err <= rtol * scale, f"{name}: max abs err {err:.3e} > {rtol:g} * scale {scale:.3g}"
    return err / scale


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("family", sorted(FAMILIES))
@torch.no_grad()
def test_forward_parity(family: str, case: str, tied: bool) -> None:
    hf, ours = models(family, tied)
    cfg = ours.config
    prompt = make_prompt(cfg, CASES[case], seed=sorted(CASES).index(case))
    valid, layers = prompt.valid, cfg.text.num_layers
    levels = len(cfg.vision.deepstack_indexes)
    vision = prompt.pixel_values is not None or prompt.pixel_values_videos is not None

    # HF records each decoder layer's own output (before the DeepStack addition); what the next layer
    # receives (after it) and the last layer's output are caught with hooks
    received: dict[int, torch.Tensor] = {}
    last = {}

    def record_input(index: int):
        def hook(module, args, kwargs) -> None:
            received[index] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

        return hook

    layers_hf = hf.model.language_model.layers
    hooks = [
        layer.register_forward_pre_hook(record_input(i), with_kwargs=True)
        for i, layer in enumerate(layers_hf)
    ]
    hooks.append(layers_hf[-1].register_forward_hook(lambda m, a, out: last.update(out=out)))
    sparse = [i for i in range(layers) if cfg.text.is_sparse(i)]
    try:
        ref = hf(**prompt.hf(), output_hidden_states=True, output_router_logits=bool(sparse))
    finally:
        for hook in hooks:
            hook.remove()

    names = ["text.layers.0.input", "text.norm"] + [f"text.layers.{i}" for i in range(layers)]
    names += [f"text.layers.{i}.deepstack.input" for i in range(levels)]
    names += [f"text.layers.{i}.mlp.router" for i in sparse]
    if vision:
        names += ["visual.merger.input", "visual.merger"] + [
            f"visual.deepstack_mergers.{k}" for k in range(levels)
        ]
    with ours.taps(read=names) as taps:
        out = ours(prompt.input_ids, **prompt.ours())
    got = taps.cache

    check("logits", out.logits[valid], ref.logits[valid])
    check("text.layers.0.input", got["text.layers.0.input"][valid], ref.hidden_states[0][valid])
    for i in range(layers):
        own = ref.hidden_states[i + 1] if i < layers - 1 else last["out"]  # before the DeepStack addition
        before = got[f"text.layers.{i}.deepstack.input"] if i < levels else got[f"text.layers.{i}"]
        check(f"text.layers.{i} (own output)", before[valid], own[valid])
        if i < layers - 1:  # after the addition: what layer i + 1 receives
            check(f"text.layers.{i}", got[f"text.layers.{i}"][valid], received[i + 1][valid])
    check("text.norm", got["text.norm"][valid], ref.hidden_states[layers][valid])
    for j, i in enumerate(sparse):
        router = got[f"text.layers.{i}.mlp.router"]
        assert router.shape == (*prompt.input_ids.shape, cfg.text.moe.num_experts)
        check(f"text.layers.{i}.mlp.router", router[valid], ref.router_logits[j].view(router.shape)[valid])
    if sparse:
        assert len(ref.router_logits) == len(sparse)
    if not vision:
        return

    pre, merged, deepstack = [], [], [[] for _ in range(levels)]
    for outputs in (ref.image_outputs, ref.video_outputs):  # our tower runs images, then videos
        if outputs is None:
            continue
        pre.append(outputs.last_hidden_state)
        merged.append(torch.cat(outputs.pooler_output))
        for k in range(levels):
            deepstack[k].append(torch.cat(outputs.deepstack_features[k]))
    check("visual.merger.input", got["visual.merger.input"], torch.cat(pre))
    check("visual.merger", got["visual.merger"], torch.cat(merged))
    for k in range(levels):
        check(f"visual.deepstack_mergers.{k}", got[f"visual.deepstack_mergers.{k}"], torch.cat(deepstack[k]))
    # the DeepStack addition changed the hidden states at the visual tokens only
    visual = (prompt.mm_token_type_ids > 0) & valid
    added = got["text.layers.0"] - got["text.layers.0.deepstack.input"]
    assert added[~visual].abs().max() == 0 and added[visual].abs().amin(-1).gt(0).all()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@torch.no_grad()
def test_tower_alone_matches_hf(family: str) -> None:
    """`model.visual(pixels, grid)` returns the merged and DeepStack features of HF's `model.visual`."""
    hf, ours = models(family, False)
    prompt = make_prompt(ours.config, CASES["two_images_and_video"], seed=7)
    for pixels, grid in (
        (prompt.pixel_values, prompt.image_grid_thw),
        (prompt.pixel_values_videos, prompt.video_grid_thw),
    ):
        ref = hf.model.visual(pixels, grid_thw=grid)
        got = ours.visual(pixels, grid)
        check("merged", got.merged, ref.pooler_output)
        assert len(got.deepstack) == len(ref.deepstack_features) == 2
        for k, (a, b) in enumerate(zip(got.deepstack, ref.deepstack_features)):
            check(f"deepstack {k}", a, b)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_generation_matches_transformers(family: str) -> None:
    """Token for token with transformers' generate (which needs mm_token_type_ids to use 3-D positions);
    DeepStack applies to the prefill only, on both sides."""
    hf, ours = build_pair(config(family, False), seed=12, std=1.0)  # std 1: varied tokens, clear margins
    cfg = ours.config
    prompt = make_prompt(cfg, [[3, ("image", (1, 8, 8)), 2, ("video", (2, 8, 4)), 4]], seed=12)
    steps = 20
    with torch.no_grad():
        expected = hf.generate(**prompt.hf(), max_new_tokens=steps, do_sample=False)[
            :, prompt.input_ids.shape[1] :
        ]
    got = generate(ours, prompt.input_ids, max_new_tokens=steps, **prompt.ours())
    assert expected.shape[1] == steps, "the random model stopped early: pick another seed"
    assert len(set(got[0].tolist())) > 3, "degenerate generation: the comparison would be weak"
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


GRAD_RTOL = 1e-4  # per parameter, relative to its largest gradient: ~1e-6 measured, fp32 sums over tokens


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_loss_and_gradients_match_transformers(family: str) -> None:
    cfg = config(family, tied=True)
    hf, ours = build_pair(cfg, seed=21)
    hf.train()
    ours.train()
    prompt = make_prompt(cfg, CASES["two_images_and_video"], seed=22)
    labels = prompt.input_ids.masked_fill(prompt.mm_token_type_ids > 0, -100)
    out = ours(prompt.input_ids, **prompt.ours(), labels=labels)
    ref = hf(**prompt.hf(), labels=labels)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=0)
    out.loss.backward()
    ref.loss.backward()
    params = dict(ours.named_parameters())
    compared = 0
    for hf_key, param in hf.named_parameters():
        key = hf_key_to_ours(hf_key, cfg.model_type)
        if key not in params:  # a tied lm_head is the embedding, compared under that name
            continue
        want = hf_tensor_to_ours(cfg, key, param.grad)
        got = params[key].grad
        assert got is not None, key
        err = (got - want).abs().max() / want.abs().max().clamp_min(1e-12)
        assert err <= GRAD_RTOL, (key, float(err))
        compared += 1
    assert compared == len(params)


# bf16: ours-bf16's error against HF-fp32 at most 2x HF-bf16's own, plus one bf16 ulp of the output scale
# (the rule of test_parity_model.py).
BF16_ULP = 2.0**-8


@pytest.mark.parametrize("family", sorted(FAMILIES))
@torch.no_grad()
def test_bf16_error_within_2x_hf(family: str) -> None:
    hf, ours = build_pair(config(family, False), seed=77)
    prompt = make_prompt(ours.config, CASES["two_images_and_video"], seed=5)
    truth = hf(**prompt.hf()).logits
    hf_bf16, ours_bf16 = hf.to(torch.bfloat16), ours.to(torch.bfloat16)
    hf_err = max_err(hf_bf16(**prompt.hf()).logits.float(), truth)
    ours_err = max_err(ours_bf16(prompt.input_ids, **prompt.ours()).logits.float(), truth)
    assert hf_err > 0
    assert ours_err <= 2 * hf_err + BF16_ULP * scale_of(truth), (ours_err, hf_err)


def test_from_hf_builds_the_qwen3_tree() -> None:
    _, ours = models("qwen3_vl_moe", False)
    assert isinstance(ours, QwenVL)
    names = set(ours.tap_names())
    for name in (
        "visual.pos_embed",
        "visual.deepstack_mergers.1",
        "text.layers.1.deepstack",
        "text.layers.0.attn.q_norm",
        "text.layers.2.mlp.router",
        "text.layers.2.mlp.experts",
    ):
        assert name in names, name
    assert "text.layers.2.deepstack" not in names  # two DeepStack levels: layers 0 and 1 only
    assert "text.layers.1.mlp.router" not in names  # mlp_only_layers [1]: a dense layer
