"""Compiled generation (`generate(..., compile=...)`): greedy tokens equal the eager ones, logits within
fp32 rounding, the decode step compiles once for every step and the prefill once for every prompt length;
a reused static cache carries nothing over; taps / hooks and bad values are refused.

The compile runs through dynamo's "aot_eager" backend: the same capture, functionalized in-place cache
writes, guards and recompiles as inductor, without its C++ build (about a minute per graph on this 2-core
CPU, several graphs: too slow for CI). Inductor's numerics are checked by benchmarks/bench_generate.py,
which asserts its tokens equal the eager ones. Tiny random model (fp32), a few steps per call."""

from __future__ import annotations

import pytest
import torch
from hf_models import make_prompt, randomize_
from torch._dynamo.utils import counters

from qwenvl_min import Config, QwenVL, VisionInputs
from qwenvl_min.generate import generate, stream
from qwenvl_min.generate.compiled import _STATE, compiled_text

MODE = "aot_eager"


@pytest.fixture(scope="module")
def model() -> QwenVL:
    torch.manual_seed(0)
    model = QwenVL(Config.preset("tiny-qwen2-vl")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # std 0.5: varied greedy tokens (a weak comparison otherwise)
    return model


def _batch(length: int, seed: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (batch, length) and an attention mask with the later rows left padded."""
    ids = torch.randint(0, 200, (batch, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    for b in range(1, batch):
        mask[b, : (length * b) // (2 * batch)] = 0
    return ids, mask


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_compiles_once_per_function_and_matches_eager(model):
    """Left-padded pairs of prompts of 5, 9, 17, 33 tokens, 6 steps each: exactly two graphs (the prefill,
    marked dynamic in the prompt length and the capacity from its first call, and the step); then no
    recompile, for other lengths and a larger capacity either."""
    torch._dynamo.reset()
    counters.clear()
    for seed, length in enumerate((5, 9, 17, 33)):
        ids, mask = _batch(length, seed)
        run = dict(attention_mask=mask, max_new_tokens=6, stop_token_ids=())
        eager = generate(model, ids, **run)
        assert torch.equal(generate(model, ids, **run, compile=MODE), eager), length
        assert len(set(eager[1].tolist())) > 2, "degenerate generation: the comparison would be weak"
    assert _graphs() == 2
    with torch._dynamo.config.patch(error_on_recompile=True):
        ids, mask = _batch(70, 9)  # capacity 128 instead of 64: a new static cache, the same graphs
        generate(model, ids, attention_mask=mask, max_new_tokens=4, stop_token_ids=(), compile=MODE)
    assert _graphs() == 2


def test_a_stop_token_mid_batch(model):
    ids, mask = _batch(11, 5)
    free = generate(model, ids, attention_mask=mask, max_new_tokens=8, stop_token_ids=())
    # a stop token that row 0 emits early and row 1 never: row 0 stops, row 1 goes on
    stop = next(int(t) for t in free[0, 1:5] if not (free[1] == t).any())
    expected = generate(model, ids, attention_mask=mask, max_new_tokens=8, stop_token_ids=(stop,))
    got = generate(model, ids, attention_mask=mask, max_new_tokens=8, stop_token_ids=(stop,), compile=MODE)
    assert torch.equal(got, expected)
    assert (got[0] == stop).any() and got.shape[1] == 8  # row 0 stopped and was padded, row 1 ran on
    streamed = list(
        stream(model, ids, attention_mask=mask, max_new_tokens=8, stop_token_ids=(), compile=MODE)
    )
    assert torch.equal(torch.stack(streamed, 1), free)


def test_step_logits_match_eager_forward(model):
    """Teacher-forced: compiled prefill + steps vs one eager forward over prompt + tokens."""
    ids, mask = _batch(10, 20)
    new, _ = _batch(5, 21)
    with torch.inference_mode():
        text = compiled_text(model, MODE)
        prepared = model.prepare(ids, VisionInputs(), attention_mask=mask)
        cache = text.cache_for(model, 2, 15, prepared.embeds)
        cache.key_valid[:, :10] = mask.bool()
        logits = [text.prefill(model, prepared.embeds, prepared.positions, cache)]
        for i in range(4):
            pos = (mask.sum(1) + i).view(1, 2, 1).expand(3, 2, 1)  # text only: the same on every axis
            logits.append(text.step(model, new[:, i], pos, torch.tensor([10 + i]), cache))
        full_mask = torch.cat([mask, torch.ones_like(new)], 1)
        full = model(torch.cat([ids, new], 1), attention_mask=full_mask).logits[:, 9:14]
    # the same aten ops; attention reduces over the 64 slots of the capacity (unwritten ones at
    # probability 0) instead of the written ones: fp32 rounding, the project's rule 1e-5 x max(1, |ref|)
    scale = max(1.0, float(full.abs().max()))
    torch.testing.assert_close(torch.stack(logits, 1), full, rtol=0, atol=1e-5 * scale)


def test_a_reused_cache_carries_nothing_over(model):
    """The next call with the same batch and capacity gets the same cache, reset: poison it in between."""
    ids, mask = _batch(8, 30)
    run = dict(attention_mask=mask, max_new_tokens=5, stop_token_ids=())
    expected = generate(model, ids, **run)
    generate(model, *_batch(8, 31)[:1], attention_mask=_batch(8, 31)[1], max_new_tokens=5, compile=MODE)
    (cache,) = [c for key, c in _STATE[model][MODE].caches.items() if key[:2] == (2, 64)]
    with torch.inference_mode():
        for buffer in (*cache.keys, *cache.values):
            buffer.fill_(float("nan"))
    assert torch.equal(generate(model, ids, **run, compile=MODE), expected)


def test_a_new_batch_size_recompiles_each_function_once(model):
    """Batch is static: one row after two recompiles the prefill and the step (one graph each), and
    going back to two rows reuses the first graphs."""
    generate(model, *_batch(6, 40)[:1], attention_mask=_batch(6, 40)[1], max_new_tokens=3, compile=MODE)
    before = _graphs()
    single, _ = _batch(6, 41, batch=1)
    assert torch.equal(
        generate(model, single, max_new_tokens=3, stop_token_ids=(), compile=MODE),
        generate(model, single, max_new_tokens=3, stop_token_ids=()),
    )
    assert _graphs() == before + 2
    with torch._dynamo.config.patch(error_on_recompile=True):
        ids, mask = _batch(7, 42)
        generate(model, ids, attention_mask=mask, max_new_tokens=3, compile=MODE)


def test_taps_hooks_and_bad_values_are_refused(model):
    ids, _ = _batch(5, 50, batch=1)
    with model.taps(read=["text.layers.0"]):
        with pytest.raises(ValueError, match="compile cannot run with taps or forward hooks"):
            generate(model, ids, max_new_tokens=2, compile=MODE)
    with model.taps(read=["text.layers.1.attn.probs"]):  # swaps the attention, no hook
        with pytest.raises(ValueError, match="compile cannot run with taps"):
            generate(model, ids, max_new_tokens=2, compile=MODE)
    handle = model.text.norm.register_forward_hook(lambda *args: None)
    try:
        with pytest.raises(ValueError, match="text.norm"):
            generate(model, ids, max_new_tokens=2, compile=MODE)
    finally:
        handle.remove()
    with pytest.raises(ValueError, match="compile must be True, False"):
        generate(model, ids, max_new_tokens=2, compile="fast")


@pytest.mark.parametrize("preset", ["tiny-qwen3-vl", "tiny-qwen3-vl-moe"])
def test_qwen3_prompts_with_images_and_videos(preset):
    """Qwen3-VL: the compiled prefill takes the DeepStack features (their count dynamic) and the MoE
    experts run as one custom op; greedy tokens equal eager for prompts with different vision token
    counts, with two graphs in all (prefill, step)."""
    cfg = Config.preset(preset)
    qwen3 = QwenVL(cfg).eval()
    randomize_(qwen3, seed=0, std=1.0)  # std 1: varied greedy tokens
    layouts = (
        [[3, ("image", (1, 8, 8)), 2, ("video", (2, 8, 4)), 4]],
        [[2, ("video", (3, 4, 4)), 2, ("image", (1, 6, 6)), 3]],
    )
    torch._dynamo.reset()
    counters.clear()
    for seed, rows in enumerate(layouts):
        prompt = make_prompt(cfg, rows, seed=seed)
        run = dict(max_new_tokens=6, stop_token_ids=(), **prompt.ours())
        eager = generate(qwen3, prompt.input_ids, **run)
        assert torch.equal(generate(qwen3, prompt.input_ids, **run, compile=MODE), eager)
        assert len(set(eager[0].tolist())) > 2, "degenerate generation: the comparison would be weak"
    assert _graphs() == 2
