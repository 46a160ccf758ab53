"""The real-width Qwen3-VL-8B vision tower (27 blocks, width 1152, GELU-tanh MLP 4304, a 48 x 48 learned
position grid, DeepStack mergers after blocks 8 / 16 / 24; random weights) matches transformers 5.24 on a
224x320 image (grid 1x14x20: the 48-wide position grid is resampled to 14 and 20, neither a divisor).

Memory: one copy of the ~575M weights (2.3 GB fp32: ours are the very same tensors) plus activations.

Tolerance: the fp32 rule of the parity suite, max abs error <= 1e-5 * max(1, max|reference|): the same
fp32 math in a different order through 27 blocks of accumulated rounding.
"""

from __future__ import annotations

import pytest
import torch
from hf_models import max_err, randomize_scaled_, scale_of
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel, Qwen3VLVisionRotaryEmbedding

from qwenvl_min import Config, Taps
from qwenvl_min.model.vision_qwen3 import Qwen3VisionTower
from qwenvl_min.weights_convert.mapping import hf_key_to_ours, hf_tensor_to_ours

RTOL = 1e-5


@pytest.mark.slow
@torch.no_grad()
def test_real_size_qwen3_vl_8b_tower_matches_hf() -> None:
    cfg = Config.preset("qwen3-vl-8b")
    hf_cfg = Qwen3VLVisionConfig(**cfg.to_hf()["vision_config"])
    with torch.device("meta"):  # skip HF's random init of 575M parameters: ours below
        hf = Qwen3VLVisionModel._from_config(hf_cfg, attn_implementation="sdpa")
    hf = hf.to_empty(device="cpu").eval()
    hf.rotary_pos_emb = Qwen3VLVisionRotaryEmbedding(hf_cfg)  # non-persistent buffers: rebuild
    randomize_scaled_(hf, seed=0)

    state = {}
    for key, tensor in hf.state_dict().items():
        ours_key = hf_key_to_ours("visual." + key, cfg.model_type)
        if ours_key is not None:
            state[ours_key.removeprefix("visual.")] = hf_tensor_to_ours(cfg, ours_key, tensor)
    with torch.device("meta"):
        ours = Qwen3VisionTower(cfg.vision)
    ours.load_state_dict(state, strict=True, assign=True)
    ours.eval()

    grid = torch.tensor([[1, 224 // 16, 320 // 16]])  # 1 x 14 x 20
    pixels = torch.randn(280, 1536, generator=torch.Generator().manual_seed(1))
    ref = hf(pixels, grid_thw=grid)
    with Taps(ours, read=["merger.input"]) as taps:  # names are paths inside the module tapped
        got = ours(pixels, grid)

    assert got.merged.shape == (70, 4096) and len(got.deepstack) == 3
    pairs = [
        ("merged", got.merged, ref.pooler_output),
        ("pre-merge", taps.cache["merger.input"], ref.last_hidden_state),
    ]
    pairs += [(f"deepstack {k}", a, b) for k, (a, b) in enumerate(zip(got.deepstack, ref.deepstack_features))]
    for name, a, b in pairs:
        err, scale = max_err(a, b), scale_of(b)
        assert err <= RTOL * scale, f"{name}: {err:.3e} > {RTOL} * {scale:.3g}"
