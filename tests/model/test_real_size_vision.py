"""The real-size Qwen2.5-VL-7B vision tower (32 blocks, width 1280, SwiGLU 3420, full-attention blocks
7/15/23/31, random weights) matches transformers 5.24 on a 224x308 image (grid 1x16x22: merged 8x11, so
one side is an exact multiple of the 4-token window and the other has 3-wide edge windows).

Runtime ~25 s on an idle 2-core CPU (two 352-patch forwards of a 676M-parameter tower plus random init;
~95 s when the machine is shared with other jobs) and ~3.2 GB peak RSS (one copy of the weights: ours
are loaded from the very same tensors), so it stays in CI.

Tolerance: the fp32 rule of the parity suite, max abs error <= 1e-5 * max(1, max|reference|): both run the
same fp32 math in a different order; 32 blocks of accumulated rounding measured ~3e-6 of the scale
(merged 8.0e-6 at 2.87).
"""

from __future__ import annotations

import pytest
import torch
from hf_models import hf_window_to_input_order, max_err, randomize_scaled_, scale_of
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel,
    Qwen2_5_VLVisionRotaryEmbedding,
)

from qwenvl_min import Config, Taps
from qwenvl_min.model.vision import VisionTower
from qwenvl_min.weights_convert.mapping import hf_key_to_ours, hf_tensor_to_ours

RTOL = 1e-5


@pytest.mark.slow
@torch.no_grad()
def test_real_size_qwen2_5_vl_7b_tower_matches_hf() -> None:
    cfg = Config.preset("qwen2.5-vl-7b")
    hf_cfg = Qwen2_5_VLVisionConfig(**cfg.to_hf()["vision_config"])
    # Build on the meta device and fill with our own seeded weights: skips HF's 676M-parameter init.
    with torch.device("meta"):
        hf = Qwen2_5_VisionTransformerPretrainedModel._from_config(hf_cfg, attn_implementation="sdpa")
    hf = hf.to_empty(device="cpu").eval()
    hf.rotary_pos_emb = Qwen2_5_VLVisionRotaryEmbedding(hf_cfg)  # non-persistent buffers: rebuild
    randomize_scaled_(hf, seed=0)
    assert sum(p.numel() for p in hf.parameters()) == 676_550_144

    # ours: the same tensors (no copy), renamed by the mapping that from_hf and the converter use
    state = {}
    for key, tensor in hf.state_dict().items():
        ours_key = hf_key_to_ours("visual." + key, cfg.model_type)
        if ours_key is not None:
            state[ours_key.removeprefix("visual.")] = hf_tensor_to_ours(cfg, ours_key, tensor)
    with torch.device("meta"):
        ours = VisionTower(cfg.vision)
    ours.load_state_dict(state, strict=True, assign=True)
    ours.eval()

    grid = torch.tensor([[1, 224 // 14, 308 // 14]])  # 1 x 16 x 22
    pixels = torch.randn(352, 1176, generator=torch.Generator().manual_seed(1))
    ref = hf(pixels, grid_thw=grid)
    with Taps(ours, read=["merger.input"]) as taps:  # names are paths inside the module tapped
        merged = ours(pixels, grid)

    assert merged.shape == (88, 3584)
    err, scale = max_err(merged, ref.pooler_output), scale_of(ref.pooler_output)
    assert err <= RTOL * scale, f"merged: {err:.3e} > {RTOL} * {scale:.3g}"
    pre_ref = hf_window_to_input_order(cfg, ref.last_hidden_state, grid)
    err, scale = max_err(taps.cache["merger.input"], pre_ref), scale_of(pre_ref)
    assert err <= RTOL * scale, f"pre-merge: {err:.3e} > {RTOL} * {scale:.3g}"
