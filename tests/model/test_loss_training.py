"""`labels` -> `.loss` equal to transformers' (shift inside, -100 ignored); backward through the whole model
(torch path) gives transformers' gradients; a few fine-tuning steps lower the loss."""

from __future__ import annotations

import pytest
import torch
from hf_models import build_hf, make_prompt, tiny_config

from qwenvl_min import QwenVL
from qwenvl_min.weights_convert import hf_key_to_ours
from qwenvl_min.weights_convert.mapping import hf_tensor_to_ours

FAMILIES = ("qwen2_vl", "qwen2_5_vl")
# fp32 on both sides; the only differences are summation orders (fused qkv vs split, our SDPA layout vs
# theirs, the order of the cross-entropy sum). Measured worst relative error 1.6e-6 over every parameter;
# 1e-4 relative to each tensor's largest |gradient| leaves room for BLAS differences between machines and
# is still far below what any wrong term (a missing shift, a dropped layer) produces (O(1)).
GRAD_RTOL = 1e-4


def _batch(family: str):
    cfg = tiny_config(family, tied=family == "qwen2_vl")
    seconds = [1.0] if family == "qwen2_5_vl" else None
    prompt = make_prompt(
        cfg,
        [[("pad", 6), 3, ("image", (1, 8, 8)), 4, ("video", (2, 4, 8)), 2], [40, 3, ("image", (1, 4, 4)), 2]],
        seed=0,
        second_per_grid_ts=seconds,
    )
    labels = prompt.input_ids.clone()
    # padding and the first 4 real tokens of each row do not count (a padded slot's logits are garbage on
    # both sides, and the label after the last pad would be predicted from one)
    labels[prompt.attention_mask.cumsum(1) <= 4] = -100
    return cfg, prompt, labels


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_and_gradients_equal_transformers(family):
    cfg, prompt, labels = _batch(family)
    hf = build_hf(cfg, seed=0).train()  # train mode: no dropout in these configs, so the same function
    ours = QwenVL.from_hf(hf.config, hf.state_dict()).train()

    out = ours(**prompt.hf(), labels=labels)
    ref = hf(**prompt.hf(), labels=labels)
    assert out.loss is not None and out.loss.shape == ()
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=0)  # scalar, same fp32 mean
    out.loss.backward()
    ref.loss.backward()

    ours_params = dict(ours.named_parameters())
    compared = 0
    for hf_key, param in hf.named_parameters():
        key = hf_key_to_ours(hf_key, cfg.model_type)
        if key not in ours_params:  # lm_head of a tied model is the embedding, compared under that name
            continue
        want = hf_tensor_to_ours(cfg, key, param.grad)
        got = ours_params[key].grad
        assert got is not None, key
        err = (got - want).abs().max() / want.abs().max().clamp_min(1e-12)
        assert err <= GRAD_RTOL, (key, float(err))
        compared += 1
    assert compared == len(ours_params)


@pytest.mark.parametrize("family", FAMILIES)
def test_fine_tuning_steps_lower_the_loss(family):
    cfg, prompt, labels = _batch(family)
    hf = build_hf(cfg, seed=1)
    model = QwenVL.from_hf(hf.config, hf.state_dict()).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = model(**prompt.hf(), labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[2] < losses[1] < losses[0], losses
    # the HF model is untouched by our training (from_hf copies)
    assert torch.equal(
        hf.model.language_model.norm.weight, build_hf(cfg, seed=1).model.language_model.norm.weight
    )


def test_no_labels_no_loss_and_label_errors():
    cfg, prompt, labels = _batch("qwen2_5_vl")
    model = QwenVL.from_hf(cfg.to_hf(), build_hf(cfg, seed=0).state_dict())
    with torch.no_grad():
        assert model(**prompt.hf()).loss is None
        all_ignored = model(**prompt.hf(), labels=torch.full_like(labels, -100)).loss
        assert torch.isnan(all_ignored)  # as torch / transformers: no token counts
        with pytest.raises(ValueError, match=r"labels must have the shape of input_ids \(2, 51\)"):
            model(**prompt.hf(), labels=labels[:, 1:])
        with pytest.raises(ValueError, match=r"labels must be token ids in \[0, 256\) or -100"):
            model(**prompt.hf(), labels=torch.full_like(labels, 999))
        with pytest.raises(ValueError, match="leave logits_to_keep at 0 with labels"):
            model(**prompt.hf(), labels=labels, logits_to_keep=1)
