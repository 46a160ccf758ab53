"""Qwen3-VL through our Processor, against transformers' Qwen3VLProcessor on a user's checkpoint
directory in miniature (tests/hf_user_dir.py: the published Qwen3-VL processor files, a Qwen3-VL-style
chat template, a tiny random Qwen3-VL / Qwen3-VL-MoE model). transformers' image processor (PIL backend),
tokenizer, chat template, timestamps and per-frame video expansion are its own; its video processor needs
torchvision, so it is a stand-in running our Qwen3 video rules (those are compared with transformers'
pieces in test_video_qwen3.py). Then `model(**batch)` equals transformers' model on transformers' batch.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from hf_user_dir import hf_processor, make_user_dir

from qwenvl_min import QwenVL
from qwenvl_min.inputs.checkpoint_settings import (
    family_settings,
    image_settings,
    processor_family,
    video_settings,
)
from qwenvl_min.inputs.processor import Processor
from qwenvl_min.utils.settings_files import SettingsError

FAMILIES = ("qwen3_vl", "qwen3_vl_moe")
FPS = 4.0


@pytest.fixture(scope="module")
def user_dirs(tmp_path_factory):
    out = {}
    for family in FAMILIES:
        directory = tmp_path_factory.mktemp(family)
        out[family] = (directory, make_user_dir(directory, family, seed=5))
    return out


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


VIDEO = np.random.default_rng(2).integers(0, 256, (9, 64, 96, 3), dtype=np.uint8)  # 9 frames at 4 fps
CONVERSATIONS = [
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What happens?"}, {"type": "video"}]},
        {"role": "assistant", "content": "A thing."},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "And here?"}, {"type": "image"}],
        },
    ],
]


def _budget(directory):
    settings = video_settings(directory)
    return dict(min_pixels=settings.min_pixels, max_pixels=settings.max_pixels)


def test_settings_come_from_the_published_files(user_dirs):
    directory, _ = user_dirs["qwen3_vl"]
    assert processor_family(directory) == "qwen3"
    image, video = image_settings(directory), video_settings(directory)
    assert (image.min_pixels, image.max_pixels, image.patch_size, image.family) == (
        65536,
        16777216,
        16,
        "qwen3",
    )
    assert (video.min_pixels, video.max_pixels, video.sample_fps, video.num_frames) == (
        4096,
        25165824,
        2,
        None,
    )
    assert image.normalization == ((0.5,) * 3, (0.5,) * 3)
    processor = Processor.from_pretrained(directory)
    assert processor.family == "qwen3"


def test_family_from_the_processor_files_alone(user_dirs, tmp_path):
    """A directory whose config.json says nothing of the family: the processor class names decide."""
    directory, _ = user_dirs["qwen3_vl"]
    d = shutil.copytree(directory, tmp_path / "d")
    (d / "config.json").write_text(json.dumps({"model_type": "something_else"}))
    assert processor_family(d) == "qwen3"
    (d / "preprocessor_config.json").unlink()
    (d / "video_preprocessor_config.json").unlink()
    assert processor_family(d) == "qwen2"
    assert family_settings("qwen3", video=False).patch_size == 16


@pytest.mark.parametrize("add_vision_id", [False, True])
def test_chat_template_is_the_checkpoints(user_dirs, monkeypatch, add_vision_id):
    directory, _ = user_dirs["qwen3_vl"]
    theirs = hf_processor(directory, "qwen3_vl", monkeypatch, FPS, _budget(directory))
    ours = Processor.from_pretrained(directory)
    for messages in CONVERSATIONS:
        want = theirs.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, add_vision_id=add_vision_id
        )
        assert ours.apply_chat_template(messages, add_vision_id=add_vision_id) == want
    assert "system" not in ours.apply_chat_template(CONVERSATIONS[0])  # no default system prompt


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_ids_pixels_and_logits_equal_hf(user_dirs, monkeypatch, family):
    directory, hf_model = user_dirs[family]
    theirs = hf_processor(directory, family, monkeypatch, FPS, _budget(directory))
    ours = Processor.from_pretrained(directory)
    images = [_image(64, 96), _image(300, 200, seed=1), _image(70, 70, seed=3)]
    hf_text = theirs.apply_chat_template(CONVERSATIONS, tokenize=False, add_generation_prompt=True)
    hf_batch = theirs(text=hf_text, images=images, videos=[VIDEO], padding=True, return_tensors="pt")
    batch = ours(text=ours.apply_chat_template(CONVERSATIONS), images=images, videos=[VIDEO], fps=FPS)

    assert set(batch) == set(hf_batch) - {"video_metadata"}  # no second_per_grid_ts on either side
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(batch[key], hf_batch[key]), key
    for key in ("pixel_values_videos", "video_grid_thw"):
        assert torch.equal(batch[key], hf_batch[key]), key
    text = ours.tokenizer.decode(batch["input_ids"][1].tolist(), skip_special_tokens=False)
    assert "<0.4 seconds>" in text and "<1.6 seconds>" in text  # frames 0, 3 / 5, 8 of 9 at 4 fps

    model = QwenVL.from_pretrained(directory, dtype=torch.float32)
    hf_inputs = {k: v for k, v in hf_batch.items() if k != "video_metadata"}
    with torch.no_grad():
        want = hf_model(**hf_inputs).logits
        got = model(**batch).logits
    valid = batch["attention_mask"].bool()
    assert (got - want)[valid].abs().max() <= 1e-5 * max(1.0, want.abs().max().item())  # the fp32 rule


def test_normalization_other_than_the_familys_is_refused(user_dirs, tmp_path):
    directory, _ = user_dirs["qwen3_vl"]
    d = shutil.copytree(directory, tmp_path / "d")
    data = json.loads((d / "preprocessor_config.json").read_text())
    (d / "preprocessor_config.json").write_text(
        json.dumps({**data, "image_mean": [0.48145466, 0.4578275, 0.40821073]})
    )
    with pytest.raises(SettingsError, match="image_mean .* is not supported; ours is Qwen3-VL's"):
        image_settings(d)
