"""M-RoPE axes: which position axis drives each rotary frequency. An assignment is one function in
`qwenvl_min.model.rope.MROPE_AXES`; the rotary kernel takes per-token tables and needs no change.

The released models use contiguous sections (covered bit-exactly against transformers in test_layers.py);
the interleaved assignment (Qwen3-VL's) is checked here against transformers' Qwen3-VL rotary, and through
the whole model on both the torch path and the kernel path."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hf_models import make_prompt, max_err, randomize_, rope_config, scale_of, tiny_config
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

from qwenvl_min import QwenVL
from qwenvl_min.model.rope import MROPE_AXES, interleaved_axes, mrope_table, sectioned_axes


def test_axes_by_hand():
    assert sectioned_axes((2, 3, 3)).tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    # j mod 3, with height / width limited to their section sizes (the rest falls back to time)
    assert interleaved_axes((4, 2, 2)).tolist() == [0, 1, 2, 0, 1, 2, 0, 0]
    assert set(MROPE_AXES) >= {"sections", "interleaved"}


@pytest.mark.parametrize("section", [(24, 20, 20), (16, 24, 24)])
def test_interleaved_equals_transformers_qwen3_vl(section):
    hf_cfg = Qwen3VLTextConfig(
        hidden_size=256, num_attention_heads=2, head_dim=128, num_key_value_heads=1,
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": list(section),
                         "mrope_interleaved": True},
    )  # fmt: skip
    rotary = Qwen3VLTextRotaryEmbedding(hf_cfg)
    positions = torch.randint(0, 5000, (3, 2, 11), generator=torch.Generator().manual_seed(0))
    x = torch.zeros(2, 11, 128)
    cos_hf, sin_hf = rotary(x, positions)
    cos, sin = mrope_table(positions, rope_config(128, 5e6, section, axes="interleaved"), torch.float32)
    assert torch.equal(torch.cat((cos, cos), -1), cos_hf)
    assert torch.equal(torch.cat((sin, sin), -1), sin_hf)


def test_interleaved_model_runs_on_both_paths():
    base = tiny_config("qwen2_5_vl", tied=True)
    cfg = dataclasses.replace(base, text=dataclasses.replace(base.text, mrope_axes="interleaved"))
    prompt = make_prompt(cfg, [[2, ("image", (1, 8, 12)), 3]], seed=2)
    logits = {}
    for kernels in ("torch", "triton"):
        model = QwenVL(cfg, kernels=kernels).eval()
        randomize_(model, seed=1)
        with torch.no_grad():
            logits[kernels] = model(prompt.input_ids, **prompt.ours()).logits
    assert max_err(logits["triton"], logits["torch"]) <= 1e-5 * scale_of(logits["torch"])  # fp32 rule
    sections = QwenVL(base, kernels="torch").eval()
    randomize_(sections, seed=1)
    with torch.no_grad():
        assert (sections(prompt.input_ids, **prompt.ours()).logits - logits["torch"]).abs().max() > 1e-4


def test_unknown_axes_are_refused():
    from qwenvl_min import ConfigError

    with pytest.raises(ConfigError, match="mrope_axes 'spiral' is not one of"):
        rope_config(axes="spiral")
