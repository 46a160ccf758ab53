"""The whole model through the Triton kernels (forced with QWENVL_MIN_KERNELS=1; interpreted on CPU)
equals the torch path. Both families, an image with edge windows plus a 2-frame video, left padding."""

from __future__ import annotations

import pytest
import torch
from hf_models import randomize_

from qwenvl_min import Config, QwenVL
from qwenvl_min.dispatch import KERNELS_ENV, use_kernels


def random_model(preset: str) -> QwenVL:
    model = QwenVL(Config.preset(preset)).eval()
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
    assert not use_kernels(torch.device("cpu"))
    monkeypatch.setenv(KERNELS_ENV, "1")
    assert use_kernels(torch.device("cpu"))
    monkeypatch.setenv(KERNELS_ENV, "yes")
    with pytest.raises(ValueError, match="must be 0, 1 or unset"):
        use_kernels(torch.device("cpu"))
    monkeypatch.delenv(KERNELS_ENV)
    assert not use_kernels(torch.device("cpu"))  # default on CPU: the torch path


@pytest.mark.parametrize("preset", ["tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_model_with_kernels_equals_torch_path(preset, monkeypatch):
    model = random_model(preset)
    data = batch(model.config)
    valid = data["attention_mask"].bool()
    monkeypatch.setenv(KERNELS_ENV, "0")
    with torch.no_grad():
        reference = model(**data)
    monkeypatch.setenv(KERNELS_ENV, "1")
    with torch.no_grad():
        kernels = model(**data)
    # fp32 both ways; the kernel accumulates in a different order (online softmax over key tiles),
    # so equality is to fp32 rounding: 1e-5 of the output scale, the project's parity rule
    scale = max(1.0, reference[valid].abs().max().item())
    assert (kernels[valid] - reference[valid]).abs().max().item() <= 1e-5 * scale
