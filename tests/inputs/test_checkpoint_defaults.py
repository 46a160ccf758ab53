"""A checkpoint's own settings are the defaults, checked against transformers on a user's HF directory:
chat template (rendered with jinja2) and prompt ids, pixel budgets (the 3024x4032 photo), video settings'
file priority, generation_config.json in `generate`; explicit overrides; refusals. Also `model(**batch)`
for transformers' processor output and ours, both families."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from hf_user_dir import GENERATION, hf_processor, make_user_dir
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.video_processing_utils import BaseVideoProcessor

from qwenvl_min import QwenVL
from qwenvl_min.generate import generate
from qwenvl_min.generate.settings import generation_settings
from qwenvl_min.inputs.checkpoint_settings import image_settings, video_settings
from qwenvl_min.inputs.preprocess import IMAGE_MAX_PIXELS, IMAGE_MIN_PIXELS, smart_resize
from qwenvl_min.inputs.processor import Processor
from qwenvl_min.utils.settings_files import SettingsError

FAMILIES = ("qwen2_vl", "qwen2_5_vl")
FPS = 4.0


@pytest.fixture(scope="module")
def user_dirs(tmp_path_factory):
    out = {}
    for family in FAMILIES:
        directory = tmp_path_factory.mktemp(family)
        out[family] = (directory, make_user_dir(directory, family))
    return out


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


VIDEO = np.random.default_rng(2).integers(0, 256, (4, 56, 84, 3), dtype=np.uint8)
CONVERSATIONS = [
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}],
    [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "What happens in the video?"}, {"type": "video"}],
        },
        {"role": "assistant", "content": "A thing."},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "And here?"}, {"type": "image"}],
        },
    ],
]


def _video_budget(directory):
    settings = video_settings(directory)
    return dict(min_pixels=settings.min_pixels, max_pixels=settings.max_pixels)


@pytest.mark.parametrize("add_vision_id", [False, True])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_is_the_checkpoints(user_dirs, monkeypatch, add_vision_id, add_generation_prompt):
    directory, _ = user_dirs["qwen2_5_vl"]
    theirs = hf_processor(directory, "qwen2_5_vl", monkeypatch, FPS, _video_budget(directory))
    ours = Processor.from_pretrained(directory)
    for messages in CONVERSATIONS:
        want = theirs.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, add_vision_id=add_vision_id
        )
        got = ours.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, add_vision_id=add_vision_id
        )
        assert got == want
    assert "Picture 2: " in ours.apply_chat_template(CONVERSATIONS[1], add_vision_id=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_ids_pixels_and_logits_equal_hf(user_dirs, monkeypatch, family):
    directory, hf_model = user_dirs[family]
    theirs = hf_processor(directory, family, monkeypatch, FPS, _video_budget(directory))
    ours = Processor.from_pretrained(directory)
    images = [_image(56, 84), _image(100, 60, seed=1), _image(70, 70, seed=3)]
    hf_text = theirs.apply_chat_template(CONVERSATIONS, tokenize=False, add_generation_prompt=True)
    hf_batch = theirs(text=hf_text, images=images, videos=[VIDEO], padding=True, return_tensors="pt")
    batch = ours(text=ours.apply_chat_template(CONVERSATIONS), images=images, videos=[VIDEO], fps=FPS)

    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(batch[key], hf_batch[key]), key
    for key in ("pixel_values_videos", "video_grid_thw"):
        assert torch.equal(batch[key], hf_batch[key]), key
    if family == "qwen2_5_vl":
        torch.testing.assert_close(
            batch["second_per_grid_ts"], torch.as_tensor(hf_batch["second_per_grid_ts"])
        )
    else:
        assert (
            "second_per_grid_ts" not in hf_batch
        )  # ours emits it; Qwen2-VL's forward checks, then ignores it

    model = QwenVL.from_pretrained(directory, dtype=torch.float32)
    with torch.no_grad():
        want = hf_model(**hf_batch).logits
        for inputs in (hf_batch, batch):  # every key of both is a model argument: nothing to pop
            got = model(**inputs).logits
            valid = inputs["attention_mask"].bool()
            # fp32 both sides, same weights: summation-order noise only
            assert (got - want)[valid].abs().max() <= 1e-5 * max(1.0, want.abs().max().item())


def test_mm_token_type_ids_must_agree(user_dirs):
    directory, _ = user_dirs["qwen2_5_vl"]
    processor = Processor.from_pretrained(directory)
    batch = processor(text=processor.apply_chat_template(CONVERSATIONS[0]), images=[_image(56, 56)])
    model = QwenVL.from_pretrained(directory)
    batch["mm_token_type_ids"] = batch["mm_token_type_ids"].clone()
    batch["mm_token_type_ids"][0, 0] = 1
    with pytest.raises(
        ValueError, match=r"mm_token_type_ids disagree with input_ids at 1 token\(s\), first \(row 0"
    ):
        model(**batch)
    with pytest.raises(ValueError, match="mm_token_type_ids must be a tensor shaped like input_ids"):
        model(**{**batch, "mm_token_type_ids": batch["mm_token_type_ids"][:, 1:]})


def test_photo_token_count_follows_the_checkpoint(user_dirs):
    """A 3024x4032 photo: 15552 tokens with the published max_pixels 12845056, as transformers' image
    processor loaded from the same directory; 1230 with the library's class defaults (no checkpoint)."""
    directory, _ = user_dirs["qwen2_5_vl"]
    settings = Processor.from_pretrained(directory).image
    assert (settings.min_pixels, settings.max_pixels) == (3136, 12845056)
    h, w = smart_resize(3024, 4032, 28, settings.min_pixels, settings.max_pixels)
    ours = h * w // (28 * 28)
    theirs = (
        Qwen2VLImageProcessorPil.from_pretrained(directory).get_number_of_image_patches(3024, 4032, {}) // 4
    )
    assert ours == theirs == 15552
    h, w = smart_resize(3024, 4032, 28, IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS)
    assert h * w // 784 == 1230
    photo = _image(3024 // 12, 4032 // 12)  # the real pipeline on a smaller photo, budget from the file
    assert torch.equal(
        Processor.from_pretrained(directory)(text="<|image_pad|>", images=[photo])["pixel_values"],
        Qwen2VLImageProcessorPil.from_pretrained(directory)(photo, return_tensors="pt")["pixel_values"],
    )


def test_video_settings_follow_transformers_file_priority(user_dirs, tmp_path):
    directory, _ = user_dirs["qwen2_5_vl"]
    d = shutil.copytree(directory, tmp_path / "d")

    def hf_budget():
        data, _ = BaseVideoProcessor.get_video_processor_dict(str(d))
        size = data.get("size") or {}
        return data.get("min_pixels", size.get("shortest_edge")), data.get(
            "max_pixels", size.get("longest_edge")
        )

    # no video file: the image processor's file applies to every frame, as transformers loads it
    assert hf_budget() == (3136, 12845056)
    assert (video_settings(d).min_pixels, video_settings(d).max_pixels) == (3136, 12845056)
    video_file = {
        "size": {"shortest_edge": 784 * 8, "longest_edge": 784 * 64},
        "do_sample_frames": True,
        "fps": 2,
    }
    (d / "video_preprocessor_config.json").write_text(json.dumps(video_file))
    assert hf_budget() == (784 * 8, 784 * 64)
    settings = video_settings(d)
    assert (settings.min_pixels, settings.max_pixels, settings.sample_fps) == (784 * 8, 784 * 64, 2)
    nested = {"video_processor": {"min_pixels": 784 * 4, "max_pixels": 784 * 16}}
    (d / "processor_config.json").write_text(json.dumps(nested))
    assert hf_budget() == (784 * 4, 784 * 16)
    assert (video_settings(d).min_pixels, video_settings(d).max_pixels) == (784 * 4, 784 * 16)
    assert image_settings(d).max_pixels == 12845056  # the nested file has no image_processor section


def test_overrides_and_no_checkpoint_defaults(user_dirs, tmp_path):
    directory, _ = user_dirs["qwen2_5_vl"]
    processor = Processor.from_pretrained(directory)
    small = processor(text="<|image_pad|>", images=[_image(280, 280)], max_pixels=56 * 56)
    assert small["image_grid_thw"].tolist() == [[1, 4, 4]]
    bare = shutil.copytree(directory, tmp_path / "bare")
    for name in ("preprocessor_config.json", "generation_config.json", "chat_template.json"):
        (bare / name).unlink()
    data = json.loads((bare / "tokenizer_config.json").read_text())
    data.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(data))
    plain = Processor.from_pretrained(bare)
    assert (plain.image.min_pixels, plain.image.max_pixels) == (IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS)
    assert plain.chat_template is None
    assert plain.apply_chat_template(CONVERSATIONS[0]) == processor.apply_chat_template(CONVERSATIONS[0])
    assert QwenVL.from_pretrained(bare).generation_settings == generation_settings(bare)
    assert generation_settings(bare).temperature == 0.0 and generation_settings(bare).stop_token_ids is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"resample": 2}, "resample 2 is not supported"),
        ({"image_mean": [0.5, 0.5, 0.5]}, "image_mean .* is not supported"),
        ({"do_rescale": False}, "do_rescale=false is not supported"),
        ({"max_pixels": -1}, "max_pixels must be a positive integer"),
    ],
)
def test_processor_settings_we_cannot_honour_are_refused(user_dirs, tmp_path, edit, message):
    directory, _ = user_dirs["qwen2_5_vl"]
    d = shutil.copytree(directory, tmp_path / "d")
    data = json.loads((d / "preprocessor_config.json").read_text())
    (d / "preprocessor_config.json").write_text(json.dumps({**data, **edit}))
    with pytest.raises(SettingsError, match=message):
        image_settings(d)


def test_generation_config_is_the_default(user_dirs):
    directory, hf_model = user_dirs["qwen2_5_vl"]
    settings = generation_settings(directory)
    assert settings.stop_token_ids == (2, 0) and settings.pad_token_id == 0
    assert (settings.temperature, settings.top_k, settings.top_p) == (0.1, 1, 0.001)
    assert settings.repetition_penalty == 1.05
    model = QwenVL.from_pretrained(directory, dtype=torch.float32)
    assert model.generation_settings == settings
    processor = Processor.from_pretrained(directory)
    batch = processor(text=processor.apply_chat_template(CONVERSATIONS[0]), images=[_image(56, 84)])
    # transformers' generate with the generation_config.json it loads from the same directory
    from transformers import Qwen2_5_VLForConditionalGeneration

    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    assert reloaded.generation_config.repetition_penalty == GENERATION["repetition_penalty"]
    want = reloaded.generate(**batch, max_new_tokens=12)[:, batch["input_ids"].shape[1] :]
    got = generate(model, **batch, max_new_tokens=12, seed=0)  # top_k 1: the same token whatever the seed
    assert torch.equal(got[:, : want.shape[1]], want)
    plain = generate(model, **batch, max_new_tokens=12, temperature=0.0, repetition_penalty=1.0)
    greedy = reloaded.generate(**batch, max_new_tokens=12, do_sample=False, repetition_penalty=1.0)
    assert torch.equal(
        plain[:, : greedy.shape[1] - batch["input_ids"].shape[1]], greedy[:, batch["input_ids"].shape[1] :]
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_our_prompt_and_processor_functions_feed_the_model_whole(user_dirs, family):
    """encode_chat + preprocess_image + preprocess_video (which always emits second_per_grid_ts): the
    merged dicts are model arguments as they are, on both families; logits equal HF's."""
    from qwenvl_min.inputs.preprocess import preprocess_image, preprocess_video
    from qwenvl_min.inputs.prompts import encode_chat, load_tokenizer

    directory, hf_model = user_dirs[family]
    pixels = preprocess_image([_image(56, 84)])
    clip = preprocess_video(VIDEO, fps=FPS)
    assert "second_per_grid_ts" in clip
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Hi"}]}
    ]
    tokens = encode_chat(
        load_tokenizer(directory),
        messages,
        image_grid_thw=pixels["image_grid_thw"],
        video_grid_thw=clip["video_grid_thw"],
    )
    batch = {**tokens, **pixels, **clip}
    model = QwenVL.from_pretrained(directory, dtype=torch.float32)
    hf_batch = (
        batch if family == "qwen2_5_vl" else {k: v for k, v in batch.items() if k != "second_per_grid_ts"}
    )
    with torch.no_grad():
        got, want = model(**batch).logits, hf_model(**hf_batch).logits
    assert (got - want).abs().max() <= 1e-5 * max(1.0, want.abs().max().item())  # fp32 rounding only
