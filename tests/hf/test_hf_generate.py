"""`model.generate(...)` with transformers' keywords and conventions, against transformers 5.24's `generate`
(tiny random models of both families, fp32): prompt + new ids token for token (greedy, and top_k=1
sampling from a checkpoint's generation_config.json), max_length, eos lists and padding of finished
rows, GenerationConfig objects; the settings layering against transformers' own; the refusals."""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
from hf_models import HF_MODEL, hf_config, make_prompt, tiny_config
from transformers import GenerationConfig

from qwenvl_min import GenerationSettings, QwenVL
from qwenvl_min.generate import generate
from qwenvl_min.hf.generation import settings_for
from qwenvl_min.hf.keywords import UnsupportedKeyword

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
# a 2-frame video on a wide grid: the largest temporal position (2 on Qwen2.5-VL at 2 tokens/s, 1 s per
# grid) stays below the largest width position (5), where transformers 5.24 and the trained rule agree
VIDEO = {"qwen2_vl": None, "qwen2_5_vl": [1.0], "qwen3_vl": None, "qwen3_vl_moe": None}
SEED = 18  # no case stops early, and several decode an image / video pad id


@functools.cache
def models(family: str) -> tuple:
    """(config, transformers model, ours) with the same weights. Std 0.5: at 0.2 the tiny Qwen2-VL repeats
    one token (a weak comparison); the Qwen3 decoders (q/k norms) need 1.0 for varied tokens."""
    cfg = tiny_config(family, tied=False)
    torch.manual_seed(0)
    hf = HF_MODEL[family](hf_config(cfg)).eval()
    std = 1.0 if family.startswith("qwen3") else 0.5
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, std)
    return cfg, hf, QwenVL.from_hf(cfg.to_hf(), hf.state_dict())


def prompt_for(family: str, case: str):
    cfg = tiny_config(family, False)
    rows = {
        "image": [[5, ("image", (1, 8, 12)), 4]],
        "video": [[4, ("video", (2, 4, 12)), 6]],
        "padded_batch": [[("pad", 4), 3, ("image", (1, 8, 12)), 2], [5, ("image", (1, 4, 8)), 20]],
    }[case]
    seconds = VIDEO[family] if case == "video" else None
    return make_prompt(cfg, rows, seed=SEED, second_per_grid_ts=seconds)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", ["image", "video", "padded_batch"])
def test_greedy_sequences_equal_transformers(family, case):
    _, hf, ours = models(family)
    prompt = prompt_for(family, case)
    with torch.no_grad():
        want = hf.generate(**prompt.hf(), max_new_tokens=20, do_sample=False)
    got = ours.generate(**prompt.hf(), max_new_tokens=20, do_sample=False)
    assert got.shape == want.shape and got.shape[1] == prompt.input_ids.shape[1] + 20
    assert len(set(got[0, -20:].tolist())) > 3, "degenerate generation: the comparison would be weak"
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # qwenvl_min.generate.generate: the same tokens, new ones only
    new = generate(ours, **prompt.hf(), max_new_tokens=20, stop_token_ids=())
    assert torch.equal(new, got[:, prompt.input_ids.shape[1] :])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_decoded_vision_pad_id_is_a_plain_token(family):
    """A generated <|video_pad|> id: transformers embeds it as a token (no vision inputs after the prefill),
    and so do we. So that the models emit it, its output row is 1.5 x the row of the token they emit
    third (that token's logit, the largest and positive there, is outbid wherever it would win)."""
    cfg, hf, _ = models(family)
    prompt = prompt_for(family, "video")
    with torch.no_grad():
        free = hf.generate(**prompt.hf(), max_new_tokens=3, do_sample=False)
        state = {k: v.clone() for k, v in hf.state_dict().items()}
    hf = copy.deepcopy(hf)
    head = "lm_head.weight"
    state[head][cfg.video_token_id] = 1.5 * state[head][int(free[0, -1])]
    hf.load_state_dict(state)
    ours = QwenVL.from_hf(cfg.to_hf(), state)
    with torch.no_grad():
        want = hf.generate(**prompt.hf(), max_new_tokens=20, do_sample=False)
    got = ours.generate(**prompt.hf(), max_new_tokens=20)
    new = got[:, prompt.input_ids.shape[1] : -1]
    assert bool(((new == cfg.image_token_id) | (new == cfg.video_token_id)).any()), "no pad id decoded"
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_eos_list_pads_finished_rows_as_transformers(family):
    """A stop id that row 0 emits early: transformers fills the row's later slots with the first eos (no
    pad_token_id set), and stops when every row has finished."""
    _, hf, ours = models(family)
    prompt = prompt_for(family, "padded_batch")
    length = prompt.input_ids.shape[1]
    free = ours.generate(**prompt.hf(), max_new_tokens=12, eos_token_id=[])[:, length:].tolist()
    # the first new token of row 0 (after the first) that neither row emitted before: row 0 stops there
    at = next(j for j in range(1, 12) if free[0][j] not in free[0][:j] + free[1][: j + 1])
    stop, other = free[0][at], 251  # 251: the config's eos, which these prompts never emit
    with torch.no_grad():
        want = hf.generate(**prompt.hf(), max_new_tokens=12, do_sample=False, eos_token_id=[other, stop])
    got = ours.generate(**prompt.hf(), max_new_tokens=12, eos_token_id=[other, stop])
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert int(got[0, length + at]) == stop and (got[0, length + at + 1 :] == other).all()
    assert got.shape[1] > length + at + 1, "row 1 stopped too: the padding was not exercised"
    with torch.no_grad():
        want = hf.generate(
            **prompt.hf(), max_new_tokens=12, do_sample=False, eos_token_id=stop, pad_token_id=7
        )
    got = ours.generate(**prompt.hf(), max_new_tokens=12, eos_token_id=stop, pad_token_id=7)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_max_length_and_generation_config_as_transformers(family):
    _, hf, ours = models(family)
    prompt = prompt_for(family, "image")
    length = prompt.input_ids.shape[1]
    with torch.no_grad():
        want = hf.generate(**prompt.hf(), max_length=length + 6, do_sample=False)
    got = ours.generate(**prompt.hf(), max_length=length + 6)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    new = want[0, length:].tolist()
    at = next(j for j in range(1, 6) if new[j] not in new[:j])  # a token not emitted before it
    config = GenerationConfig(max_new_tokens=7, do_sample=False, eos_token_id=[new[at]])
    with torch.no_grad():
        want = hf.generate(**prompt.hf(), generation_config=config)
    got = ours.generate(**prompt.hf(), generation_config=config)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.shape[1] == length + at + 1  # stopped at the eos the config names
    # a dict of the same fields is the same request; the call's keywords win over the config's
    assert torch.equal(ours.generate(**prompt.hf(), generation_config=config.to_dict()), got)
    longer = ours.generate(**prompt.hf(), generation_config=config, eos_token_id=[], max_new_tokens=9)
    assert longer.shape[1] == length + 9


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_generation_config_is_the_default(family, tmp_path):
    """A published-style generation_config.json (do_sample with top_k=1, repetition_penalty, two eos ids,
    pad): top_k=1 makes sampling deterministic, so the sequences compare token for token."""
    cfg, hf, _ = models(family)
    hf.save_pretrained(tmp_path)
    prompt = prompt_for(family, "padded_batch")
    length = prompt.input_ids.shape[1]
    probe = models(family)[2].generate(**prompt.hf(), max_new_tokens=10, eos_token_id=[])
    stop = int(probe[1, length + 4])
    published = {
        "bos_token_id": cfg.bos_token_id,
        "pad_token_id": 3,
        "do_sample": True,
        "eos_token_id": [stop, cfg.eos_token_id],
        "repetition_penalty": 1.05,
        "temperature": 0.1,
        "top_k": 1,
        "top_p": 0.001,
    }
    (tmp_path / "generation_config.json").write_text(json.dumps(published))
    hf_loaded = HF_MODEL[family].from_pretrained(tmp_path).eval()
    ours = QwenVL.from_pretrained(tmp_path, dtype=torch.float32)
    with torch.no_grad():
        want = hf_loaded.generate(**prompt.hf(), max_new_tokens=10)
    got = ours.generate(**prompt.hf(), max_new_tokens=10)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (got == 3).any(), "no row finished early: the pad id was not exercised"


@pytest.mark.parametrize(
    ("defaults", "call"),
    [
        ({}, {}),
        ({}, {"do_sample": True}),
        ({}, {"do_sample": True, "top_k": 0, "top_p": 0.9}),
        ({}, {"temperature": 0.7}),  # ignored without do_sample, as in transformers
        ({"do_sample": True, "temperature": 0.1, "top_k": 1, "top_p": 0.001}, {}),
        ({"do_sample": True, "temperature": 0.1, "top_k": 1}, {"do_sample": False}),
        ({"do_sample": True, "temperature": 0.1, "top_k": 3}, {"temperature": 0.5}),
        ({"eos_token_id": [5, 6], "repetition_penalty": 1.05}, {"eos_token_id": 9}),
        ({"eos_token_id": [5, 6], "pad_token_id": 4}, {"repetition_penalty": 1.0}),
    ],
)
def test_settings_layering_equals_transformers(defaults, call, tmp_path):
    """Our settings from (the checkpoint's generation_config.json, the call's keywords) against the
    GenerationConfig transformers prepares from the same two (its `_prepare_generation_config`)."""
    _, hf, _ = models("qwen2_vl")
    (tmp_path / "generation_config.json").write_text(json.dumps(defaults))
    from qwenvl_min.generate.settings import generation_settings

    hf_config_before = hf.generation_config
    hf.generation_config = GenerationConfig.from_pretrained(tmp_path)
    try:
        prepared, _ = hf._prepare_generation_config(None, **call, max_new_tokens=5)
    finally:
        hf.generation_config = hf_config_before
    ours = settings_for(generation_settings(tmp_path), {**call, "max_new_tokens": 5}, 10, 251)
    if prepared.do_sample:
        assert (ours.temperature, ours.top_p) == (prepared.temperature, prepared.top_p)
        assert ours.top_k == (None if prepared.top_k == 0 else prepared.top_k)
    else:
        assert (ours.temperature, ours.top_k, ours.top_p) == (0.0, None, None)
    eos = prepared.eos_token_id
    eos = [eos] if isinstance(eos, int) else eos
    assert ours.stop_token_ids == (None if eos is None else tuple(eos))
    penalty = prepared.repetition_penalty
    assert ours.repetition_penalty == (None if penalty == 1.0 else penalty)
    assert ours.pad_token_id == (
        prepared.pad_token_id if prepared.pad_token_id is not None else (eos or [251])[0]
    )
    assert ours.max_new_tokens == 5


def test_refusals_are_one_line_and_say_what_to_do():
    cfg, _, ours = models("qwen2_vl")
    batch = prompt_for("qwen2_vl", "image").hf()
    cases = [
        (dict(max_new_tokens=4, num_beams=3), UnsupportedKeyword, "num_beams: there is no beam search"),
        (
            dict(max_new_tokens=4, streamer=object()),
            UnsupportedKeyword,
            r"streamer: iterate qwenvl_min\.generate\.stream",
        ),
        (dict(max_new_tokens=4, max_new_token=3), UnsupportedKeyword, "did you mean max_new_tokens"),
        (dict(max_new_tokens=4, output_scores=True), UnsupportedKeyword, r"keep='all'"),
        (dict(generation_config=GenerationConfig(num_beams=4)), UnsupportedKeyword, "num_beams=4"),
        (dict(), ValueError, "needs max_new_tokens=N"),
        (dict(max_length=5), ValueError, "max_length=5 leaves no room.*prompt's 35 tokens"),
        (dict(max_new_tokens=4, do_sample=True, temperature=0.0), ValueError, "do_sample=False"),
        (dict(max_new_tokens=4, eos_token_id="</s>"), ValueError, "eos_token_id must be a token id"),
        (dict(generation_config=GenerationSettings()), TypeError, "settings="),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message) as caught:
            ours.generate(**batch, **kwargs)
        assert "\n" not in str(caught.value) and "unexpected keyword" not in str(caught.value)
    # neutral values of fields we do not implement change nothing, as in transformers
    neutral = GenerationConfig(num_beams=1, max_new_tokens=3, no_repeat_ngram_size=0)
    assert ours.generate(**batch, generation_config=neutral).shape[1] == batch["input_ids"].shape[1] + 3
