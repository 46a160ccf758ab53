"""The whole model through the Triton kernels (kernels="triton"; interpreted on CPU) equals the torch path.
Both families, an image with edge windows plus a 2-frame video, left padding. The kernel choice is per
model; QWENVL_MIN_KERNELS only gives the default when a model is built."""

from __future__ import annotations

import pytest
import torch
from hf_models import randomize_

from qwenvl_min import Config, QwenVL
from qwenvl_min.model import dispatch, rope
from qwenvl_min.model.attention import segment_attention_torch
from qwenvl_min.model.dispatch import KERNELS_ENV, resolve_kernels


def random_model(preset: str, kernels: str | None = None) -> QwenVL:
    model = QwenVL(Config.preset(preset), kernels=kernels).eval()
    randomize_(model, seed=0)
    return model


def batch(config: Config) -> dict:
    torch.manual_seed(1)
    image, video = torch.tensor([[1, 12, 20]]), torch.tensor([[2, 8, 8]])
    n_img, n_vid = int(image.prod()) // 4, int(video.prod()) // 4
    vs, ve = config.vision_start_token_id, config.vision_end_token_id
    row0 = [1, vs, *[config.image_token_id] * n_img, ve, 2, vs, *[config.video_token_id] * n_vid, ve, 3]
    row1 = [0] * 5 + [4, 5, 6] + row0[: len(row0) - 8]  # left padded, text only
    row1 = [t if t not in (config.image_token_id, config.video_token_id) else 7 for t in row1]
    mask = torch.ones(2, len(row0), dtype=torch.long)
    mask[1, :5] = 0
    return {
        "input_ids": torch.tensor([row0, row1]),
        "attention_mask": mask,
        "pixel_values": torch.randn(int(image.prod()), config.vision.patch_dim),
        "image_grid_thw": image,
        "pixel_values_videos": torch.randn(int(video.prod()), config.vision.patch_dim),
        "video_grid_thw": video,
    }


def test_switch_values(monkeypatch):
    monkeypatch.setenv(KERNELS_ENV, "0")
    assert resolve_kernels(None) == "torch"
    monkeypatch.setenv(KERNELS_ENV, "1")
    assert resolve_kernels(None) == "triton"
    monkeypatch.setenv(KERNELS_ENV, "yes")
    with pytest.raises(ValueError, match="must be 0, 1 or unset"):
        resolve_kernels(None)
    monkeypatch.delenv(KERNELS_ENV)
    assert resolve_kernels(None) == "auto"  # default: kernels on CUDA, the torch path on CPU
    assert resolve_kernels("torch") == "torch"  # an explicit choice wins over the environment
    with pytest.raises(ValueError, match="kernels must be one of"):
        resolve_kernels("cuda")


def test_choice_is_per_model_and_read_once(monkeypatch):
    monkeypatch.setenv(KERNELS_ENV, "1")
    forced = QwenVL(Config.preset("tiny-qwen2.5-vl"))  # the environment is the default at build time
    plain = QwenVL(Config.preset("tiny-qwen2.5-vl"), kernels="torch")
    monkeypatch.setenv(KERNELS_ENV, "0")  # ... and never read again
    assert forced.visual.blocks[0].attn.attend is dispatch.segment_attention_triton
    assert forced.text.layers[0].attn.rotary is dispatch.rotary_triton
    assert plain.visual.blocks[0].attn.attend is segment_attention_torch
    assert plain.text.layers[0].attn.rotary is rope.apply_rotary
    plain.set_kernels("auto")
    assert plain.visual.blocks[1].attn.attend is dispatch.segment_attention_auto


@pytest.mark.parametrize("preset", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_model_with_kernels_equals_torch_path(preset):
    model = random_model(preset, kernels="torch")
    data = batch(model.config)
    valid = data["attention_mask"].bool()
    with torch.no_grad():
        reference = model(**data).logits
    model.set_kernels("triton")
    with torch.no_grad():
        kernels = model(**data).logits
    # fp32 both ways; the kernel accumulates in a different order (online softmax over key tiles),
    # so equality is to fp32 rounding: 1e-5 of the output scale, the project's parity rule
    scale = max(1.0, reference[valid].abs().max().item())
    assert (kernels[valid] - reference[valid]).abs().max().item() <= 1e-5 * scale
