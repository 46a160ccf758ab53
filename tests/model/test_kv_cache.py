"""The KV cache's two write modes: at slots (fixed capacity, written at tensor slots, attention over every
slot with a mask: what compiled decoding uses) gives the logits of the append mode, eagerly; its mask
equals the append mode's mask on the written slots and hides the rest; `reset` leaves nothing of a
previous use. Tiny random model, fp32."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qwenvl_min import Config, KVCache, QwenVL
from qwenvl_min.model.cache import attention_mask_4d
from qwenvl_min.model.positions import generation_positions
from qwenvl_min.model.vision_inputs import VisionInputs


def _model() -> QwenVL:
    torch.manual_seed(0)
    model = QwenVL(Config.preset("tiny-qwen2-vl")).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # std 0.5: logits spread enough that a wrong mask shows
    return model


def _static_cache(model: QwenVL, batch: int, capacity: int) -> KVCache:
    cfg = model.config.text
    return KVCache.preallocated(
        cfg.num_layers, batch, capacity, cfg.num_kv_heads, cfg.head_dim, torch.float32, torch.device("cpu")
    )


def _run_static(model: QwenVL, ids, mask, new, cache: KVCache) -> torch.Tensor:
    """Prefill + decode of `new` (B, n) teacher-forced tokens through the cache at slots -> logits (B, n, V)."""
    batch, length = ids.shape
    prepared = model.prepare(ids, VisionInputs(), attention_mask=mask)
    cache.key_valid[:, :length] = mask.bool()
    hidden = model.text(prepared.embeds, prepared.positions, cache.key_valid, cache.at(torch.arange(length)))
    out = [model.lm_head(hidden[:, -1])]
    steps = generation_positions(prepared.rope_deltas, mask.sum(1), 0, new.shape[1])
    for i in range(new.shape[1] - 1):
        slot = torch.tensor([length + i])
        embeds = model.text.embed_tokens(new[:, i : i + 1])
        hidden = model.text(embeds, steps[:, :, i : i + 1], cache.key_valid, cache.at(slot))
        out.append(model.lm_head(hidden[:, -1]))
    return torch.stack(out, 1)


def _run_growing(model: QwenVL, ids, mask, new) -> torch.Tensor:
    batch, length = ids.shape
    cache = KVCache(model.config.text.num_layers)
    first = model(ids, attention_mask=mask, cache=cache, logits_to_keep=1)
    out = [first.logits[:, -1]]
    steps = generation_positions(first.rope_deltas, mask.sum(1), 0, new.shape[1])
    for i in range(new.shape[1] - 1):
        full = torch.cat([mask, torch.ones(batch, i + 1, dtype=mask.dtype)], 1)
        step = model(new[:, i : i + 1], attention_mask=full, cache=cache, positions=steps[:, :, i : i + 1])
        out.append(step.logits[:, -1])
    return torch.stack(out, 1)


def _case():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 200, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.int64)
    mask[1, :4] = 0  # row 1 left padded
    new = torch.randint(0, 200, (2, 5), generator=g)
    return ids, mask, new


def test_slot_writes_give_the_logits_of_appends():
    model = _model()
    ids, mask, new = _case()
    with torch.inference_mode():
        expected = _run_growing(model, ids, mask, new)
        got = _run_static(model, ids, mask, new, _static_cache(model, 2, capacity=32))
    # Same math; only the attention's reduction runs over 32 slots (the unwritten ones at probability 0)
    # instead of the written ones: fp32 rounding differences, the project's rule 1e-5 x max(1, |ref|).
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * scale)


def test_reset_forgets_a_previous_use_even_nan():
    model = _model()
    ids, mask, new = _case()
    with torch.inference_mode():
        cache = _static_cache(model, 2, capacity=16)
        expected = _run_static(model, ids, mask, new, cache)
        for buffer in (*cache.keys, *cache.values):
            buffer.fill_(float("nan"))  # what a call that failed on NaN weights could leave behind
        cache.key_valid.fill_(False)
        cache.reset()
        again = _run_static(model, ids, mask, new, cache)
    assert torch.equal(again, expected)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 3),
    written=st.integers(1, 10),
    new=st.integers(1, 4),
    spare=st.integers(0, 5),
    data=st.data(),
)
def test_mask_matches_growing_mask_and_hides_unwritten_slots(batch, written, new, spare, data):
    """Queries at slots written-new .. written-1 of a cache of capacity written + spare."""
    capacity = written + spare
    new = min(new, written)
    valid = torch.tensor(
        data.draw(st.lists(st.booleans(), min_size=batch * written, max_size=batch * written))
    )
    valid = valid.view(batch, written)
    cache = KVCache.preallocated(1, batch, capacity, 1, 2, torch.float32, torch.device("cpu"))
    key_valid = torch.ones(batch, capacity, dtype=torch.bool)
    key_valid[:, :written] = valid
    got = cache.at(torch.arange(written - new, written)).attention_mask(key_valid, new, torch.device("cpu"))
    expected = attention_mask_4d(valid, new, written, torch.device("cpu"))  # (B, 1, T, written)
    assert got.shape == (batch, 1, new, capacity)
    assert torch.equal(got[..., :written], expected)
    assert not got[..., written:].any()  # slots not written yet are never seen
