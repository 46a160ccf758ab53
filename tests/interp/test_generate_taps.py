"""Taps during generation: `keep="all"` keeps one record per forward (call 0 the prefill, call k the decode
step whose logits pick new token k), and what step k read equals one teacher-forced full forward over
prompt + generated tokens at that position."""

from __future__ import annotations

import pytest
import torch
from hf_models import randomize_

from qwenvl_min import Config, QwenVL
from qwenvl_min.generate import generate, stream
from qwenvl_min.interp.taps import TapError

LAYER = "text.layers.1"
PROBS = "text.layers.1.attn.probs"
NEW = 5


@pytest.fixture(scope="module", params=["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def model(request) -> QwenVL:
    model = QwenVL(Config.preset(request.param)).eval()
    randomize_(model, seed=3, std=0.5)  # 0.5: the tiny model's greedy answer does not repeat one token
    return model


def _prompt(cfg: Config) -> dict:
    g = torch.Generator().manual_seed(2)
    grid = torch.tensor([[1, 4, 6]])
    ids = [7, 8, cfg.vision_start_token_id, *[cfg.image_token_id] * 6, cfg.vision_end_token_id, 9, 10]
    return {
        "input_ids": torch.tensor([ids]),
        "pixel_values": torch.randn(24, cfg.vision.patch_dim, generator=g),
        "image_grid_thw": grid,
    }


def test_each_call_is_kept_and_step_k_equals_the_teacher_forced_position(model):
    batch = _prompt(model.config)
    length = batch["input_ids"].shape[1]
    with model.taps(read=[LAYER, PROBS], keep="all") as taps:
        new = generate(model, **batch, max_new_tokens=NEW, stop_token_ids=())
    assert new.shape == (1, NEW)
    assert len(taps.calls) == NEW  # the prefill and NEW - 1 decode steps; the last token is not fed back
    assert taps.cache is taps.calls[-1]
    assert taps.calls[0][LAYER].shape == (1, length, 64)
    assert taps.calls[0][PROBS].shape[-2:] == (length, length)
    for k in range(1, NEW):
        assert taps.calls[k][LAYER].shape == (1, 1, 64)
        assert taps.calls[k][PROBS].shape[-2:] == (1, length + k)

    sequence = torch.cat([batch["input_ids"], new[:, :-1]], dim=1)  # what the calls were fed, in one piece
    with torch.inference_mode(), model.taps(read=[LAYER, PROBS]) as full:
        logits = model(sequence, **{k: v for k, v in batch.items() if k != "input_ids"}).logits
    # the teacher-forced forward picks the same tokens: position length - 1 + k predicts new token k
    assert torch.equal(logits[0, length - 1 :].argmax(-1), new[0])
    hidden, probs = full.cache[LAYER], full.cache[PROBS]
    # fp32 throughout; the cached step and the full forward differ only in the summation order of the
    # matmuls (one query row against K keys vs a T x K block). Errors scale with the values: hidden states
    # reach ~100 with these weights (fp32 spacing there ~8e-6), and the measured differences are ~1e-6 of
    # the largest value, so 1e-5 of it leaves a 10x margin. Probabilities are in [0, 1], but come from
    # scores of O(10): a 1e-6 relative score error moves them by up to ~1e-5 (measured at most 5e-6).
    states = {"rtol": 0.0, "atol": 1e-5 * float(hidden.abs().max())}
    maps = {"rtol": 0.0, "atol": 2e-5}
    torch.testing.assert_close(taps.calls[0][LAYER], hidden[:, :length], **states)
    torch.testing.assert_close(taps.calls[0][PROBS], probs[:, :, :length, :length], **maps)
    for k in range(1, NEW):
        position = length - 1 + k  # where new token k - 1 was fed in
        torch.testing.assert_close(taps.calls[k][LAYER], hidden[:, position : position + 1], **states)
        torch.testing.assert_close(
            taps.calls[k][PROBS], probs[:, :, position : position + 1, : position + 1], **maps
        )
        # causal: step k sees exactly the keys before and at its position, and its row sums to 1
        torch.testing.assert_close(taps.calls[k][PROBS].sum(-1), torch.ones(1, probs.shape[1], 1))


def test_stream_fires_the_taps_as_it_goes(model):
    batch = _prompt(model.config)
    seen = []
    with model.taps(read=[LAYER], keep="all") as taps:
        for _ in stream(model, **batch, max_new_tokens=3, stop_token_ids=()):
            seen.append(len(taps.calls))
    assert seen == [1, 2, 3]  # token k is yielded right after call k


def test_default_keeps_only_the_last_call(model):
    batch = _prompt(model.config)
    with model.taps(read=[LAYER]) as taps:
        generate(model, **batch, max_new_tokens=3, stop_token_ids=())
    assert taps.calls == [] and taps.cache[LAYER].shape == (1, 1, 64)  # the last decode step


def test_keep_all_refuses_a_submodule_called_alone_and_bad_values(model):
    batch = _prompt(model.config)
    with pytest.raises(TapError, match="keep must be one of"):
        model.taps(read=[LAYER], keep="every")
    with (
        torch.inference_mode(),
        model.taps(read=["visual.merger"], keep="all") as taps,
        pytest.raises(TapError, match="outside a forward of the whole model"),
    ):
        model.visual(batch["pixel_values"], batch["image_grid_thw"])
    assert taps.calls == []
