"""Generation: cached decoding equals full forwards, greedy tokens equal transformers' generate, batching
with left padding, sampling and stop tokens. Tiny random models of both families (fp32)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor

from qwenvl_min import Config, GenerationSettings, KVCache, QwenVL
from qwenvl_min.generate import generate, stream
from qwenvl_min.model.positions import generation_positions

transformers = pytest.importorskip("transformers")

PRESETS = {"qwen2_vl": "tiny-qwen2-vl", "qwen2_5_vl": "tiny-qwen2.5-vl"}


def _hf_class(family: str):
    if family == "qwen2_vl":
        return transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
    return transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration


@pytest.fixture(scope="module", params=sorted(PRESETS))
def models(request) -> tuple[Config, torch.nn.Module, QwenVL]:
    """(config, HF model, our model) sharing random weights. Std 0.5: at 0.2 the tiny Qwen2-VL
    repeats one token (a weak comparison)."""
    cfg = Config.preset(PRESETS[request.param])
    config_cls, model_cls = _hf_class(cfg.model_type)
    torch.manual_seed(0)
    hf = model_cls(config_cls(**cfg.to_hf())).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.5)
    return cfg, hf, QwenVL.from_hf(cfg.to_hf(), hf.state_dict())


def _prompt(cfg: Config, seed: int, before: int, after: int, pads: int, pad_id: int) -> Tensor:
    """text, <vision_start>, pads x pad_id, <vision_end>, text (ids below the special range)."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, cfg.bos_token_id, (before + after,), generator=g)
    block = [cfg.vision_start_token_id, *[pad_id] * pads, cfg.vision_end_token_id]
    return torch.tensor([*text[:before].tolist(), *block, *text[before:].tolist()])


def _image(cfg: Config, grid: list[list[int]], seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    thw = torch.tensor(grid)
    rows = int(thw.prod(1).sum())
    return {"pixel_values": torch.randn(rows, cfg.vision.patch_dim, generator=g), "image_grid_thw": thw}


def _video(cfg: Config, grid: list[int], seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    thw = torch.tensor([grid])
    out = {
        "pixel_values_videos": torch.randn(int(thw.prod()), cfg.vision.patch_dim, generator=g),
        "video_grid_thw": thw,
    }
    if cfg.model_type == "qwen2_5_vl":
        out["second_per_grid_ts"] = torch.tensor([1.0])
    return out


def _image_case(cfg: Config) -> tuple[Tensor, dict[str, Tensor]]:
    # grid 1x8x12 -> 4x6 merged tokens: two windows (a full 4x4 and an edge 4x2) in Qwen2.5-VL
    ids = _prompt(cfg, 1, before=5, after=4, pads=24, pad_id=cfg.image_token_id)
    return ids[None], _image(cfg, [[1, 8, 12]], seed=2)


def _video_case(cfg: Config) -> tuple[Tensor, dict[str, Tensor]]:
    # Two temporal patches on a wide 2x6 merged grid: the largest temporal position of the block (2 for
    # Qwen2.5-VL at 2 tokens/s and 1 s per grid, 1 for Qwen2-VL) stays below its largest width position (5),
    # so transformers 5.24's placement of the following text (s + max(h, w)) equals the trained rule's.
    ids = _prompt(cfg, 3, before=4, after=6, pads=24, pad_id=cfg.video_token_id)
    return ids[None], _video(cfg, [2, 4, 12], seed=4)


def _mm_token_type_ids(cfg: Config, ids: Tensor) -> Tensor:
    return (ids == cfg.image_token_id).long() + 2 * (ids == cfg.video_token_id).long()


@pytest.mark.parametrize("case", ["image", "video"])
def test_greedy_matches_transformers_generate(models, case):
    cfg, hf, ours = models
    ids, vision = (_image_case if case == "image" else _video_case)(cfg)
    steps = 24
    with torch.no_grad():
        expected = hf.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_token_type_ids=_mm_token_type_ids(cfg, ids),
            max_new_tokens=steps,
            do_sample=False,
            **vision,
        )[:, ids.shape[1] :]
    got = generate(ours, ids, max_new_tokens=steps, **vision)
    assert expected.shape[1] >= 20, "the random model stopped early: pick another prompt seed"
    assert len(set(got[0].tolist())) > 3, "degenerate generation: the comparison would be weak"
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("capacity", [None, 64])
def test_prefill_then_decode_logits_equal_full_forward(models, capacity):
    """Cached step-by-step logits == one uncached forward over prompt + generated tokens, with a left-padded
    batch of two rows (one image each); growing (concatenating) and preallocated caches."""
    cfg, _, ours = models
    long_ids = _prompt(cfg, 5, before=6, after=3, pads=24, pad_id=cfg.image_token_id)
    short_ids = _prompt(cfg, 6, before=1, after=2, pads=6, pad_id=cfg.image_token_id)
    ids, mask = _left_pad([long_ids, short_ids], cfg.bos_token_id)
    vision = _image(cfg, [[1, 8, 12], [1, 4, 6]], seed=7)
    new = torch.randint(0, cfg.bos_token_id, (2, 6), generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        cache = KVCache(cfg.text.num_layers, capacity=capacity)
        first = ours(ids, attention_mask=mask, **vision, cache=cache, logits_to_keep=1)
        step_logits = [first.logits[:, -1]]
        positions = generation_positions(first.rope_deltas, mask.sum(1), 0, new.shape[1])
        for i in range(new.shape[1] - 1):
            full_mask = torch.cat([mask, torch.ones(2, i + 1, dtype=mask.dtype)], dim=1)
            step = ours(
                new[:, i : i + 1], attention_mask=full_mask, cache=cache, positions=positions[:, :, i : i + 1]
            )
            step_logits.append(step.logits[:, -1])
        seq = torch.cat([ids, new], dim=1)
        seq_mask = torch.cat([mask, torch.ones_like(new)], dim=1)
        full = ours(seq, attention_mask=seq_mask, **vision).logits  # (2, T + 6, V)
    expected = full[:, ids.shape[1] - 1 : -1]
    torch.testing.assert_close(torch.stack(step_logits, dim=1), expected, rtol=1e-5, atol=1e-5)


def _left_pad(rows: list[Tensor], pad: int) -> tuple[Tensor, Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.int64)
    mask = torch.zeros(len(rows), length, dtype=torch.int64)
    for b, row in enumerate(rows):
        ids[b, length - len(row) :] = row
        mask[b, length - len(row) :] = 1
    return ids, mask


def test_batch_with_left_padding_equals_each_row_alone(models):
    cfg, _, ours = models
    rows = [
        _prompt(cfg, 11, before=2, after=1, pads=6, pad_id=cfg.image_token_id),
        _prompt(cfg, 12, before=9, after=5, pads=24, pad_id=cfg.image_token_id),
    ]
    grids = [[1, 4, 6], [1, 8, 12]]
    images = [_image(cfg, [g], seed=20 + i) for i, g in enumerate(grids)]
    alone = [
        generate(ours, r[None], max_new_tokens=12, stop_token_ids=(), **im) for r, im in zip(rows, images)
    ]
    ids, mask = _left_pad(rows, cfg.bos_token_id)
    batch = generate(
        ours,
        ids,
        attention_mask=mask,
        pixel_values=torch.cat([im["pixel_values"] for im in images]),
        image_grid_thw=torch.tensor(grids),
        max_new_tokens=12,
        stop_token_ids=(),
    )
    assert torch.equal(batch, torch.cat(alone))


def test_stop_tokens_end_rows_and_pad_the_rest(models):
    cfg, _, ours = models
    ids = torch.stack(
        [_prompt(cfg, 30 + b, before=4, after=3, pads=0, pad_id=cfg.image_token_id) for b in range(2)]
    )
    free = generate(ours, ids, max_new_tokens=10, stop_token_ids=())
    # stop row 0 early, at a token that row 1 never emits, so both effects are checked every run
    candidates = [int(t) for t in free[0, 2:8] if not (free[1] == t).any()]
    assert candidates, "every early token of row 0 also appears in row 1: choose another prompt"
    stop = candidates[0]
    got = generate(ours, ids, max_new_tokens=10, stop_token_ids=(stop,), pad_token_id=7)
    stop0 = int((free[0] == stop).nonzero()[0])
    assert stop0 < 9  # row 0 really stops before the end
    assert torch.equal(got[0, : stop0 + 1], free[0, : stop0 + 1])
    # row 1 never stops: it runs to max_new_tokens unchanged by row 0 stopping; row 0 is padded
    assert got.shape[1] == 10 and torch.equal(got[1], free[1])
    assert (got[0, stop0 + 1 :] == 7).all()
    # with a single row, generation ends right after the stop token
    single = generate(ours, ids[:1], max_new_tokens=10, stop_token_ids=(stop,))
    assert torch.equal(single[0], free[0, : stop0 + 1])


def _text_case(cfg: Config) -> tuple[Tensor, dict[str, Tensor]]:
    return _prompt(cfg, 40, before=6, after=4, pads=0, pad_id=cfg.image_token_id)[None], {}


def test_sampling_is_reproducible_with_a_seed(models):
    cfg, _, ours = models
    ids, vision = _text_case(cfg)
    run = dict(max_new_tokens=16, temperature=1.5, stop_token_ids=())
    a = generate(ours, ids, seed=123, **run, **vision)
    b = generate(ours, ids, seed=123, **run, **vision)
    c = generate(ours, ids, seed=124, **run, **vision)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = generate(ours, ids, max_new_tokens=16, stop_token_ids=(), **vision)
    assert torch.equal(generate(ours, ids, seed=1, top_k=1, **run, **vision), greedy)
    assert torch.equal(generate(ours, ids, seed=1, top_p=1e-6, **run, **vision), greedy)
    top3 = generate(ours, ids, seed=5, top_k=3, **run, **vision)
    assert not torch.equal(top3, greedy)


def test_streaming_yields_the_same_tokens(models):
    cfg, _, ours = models
    ids, vision = _text_case(cfg)
    seen: list[Tensor] = []
    out = generate(ours, ids, max_new_tokens=5, stop_token_ids=(), on_token=seen.append, **vision)
    assert torch.equal(torch.stack(seen, 1), out)
    assert torch.equal(
        torch.stack(list(stream(ours, ids, max_new_tokens=5, stop_token_ids=(), **vision)), 1), out
    )


def test_bad_requests_are_clear_errors():
    cfg = Config.preset("tiny-qwen2-vl")
    torch.manual_seed(0)
    model = QwenVL(cfg).eval()
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="context"):
        generate(model, ids, max_new_tokens=cfg.text.max_position_embeddings)
    with pytest.raises(ValueError, match="left padding"):
        generate(model, ids, attention_mask=torch.tensor([[1, 1, 0]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature > 0"):
        generate(model, ids, max_new_tokens=2, top_k=5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, ids, max_new_tokens=0)


def test_stop_ids_none_is_the_eos_and_empty_is_never():
    """stop_token_ids=None stops at the config's eos; an empty list never stops early (every step runs)."""
    cfg = Config.preset("tiny-qwen2-vl")
    torch.manual_seed(0)
    model = QwenVL(cfg).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    first = int(generate(model, ids, max_new_tokens=1, stop_token_ids=())[0, 0])
    # the same weights under a config whose eos is the token the model picks first
    eos_model = QwenVL(dataclasses.replace(cfg, eos_token_id=first)).eval()
    eos_model.load_state_dict(model.state_dict())
    assert generate(eos_model, ids, max_new_tokens=5).shape == (1, 1)
    assert generate(eos_model, ids, max_new_tokens=5, stop_token_ids=()).shape == (1, 5)
    assert generate(
        eos_model, ids, max_new_tokens=5, settings=GenerationSettings(stop_token_ids=())
    ).shape == (
        1,
        5,
    )
