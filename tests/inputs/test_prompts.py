"""Chat prompts and placeholder expansion against transformers' Qwen2VLProcessor / Qwen2_5_VLProcessor.

The tokenizer is a small byte-level BPE trained here with Qwen's special tokens. HF's processors get the
same tokenizer (PreTrainedTokenizerFast), the PIL image processor, and the chat template below, written
from the published Qwen2-VL format as a test oracle. HF's video processor needs torchvision, which is not
installable here, so the processors get a stand-in video processor that returns our video outputs: the
expansion, tokenization, mm_token_type_ids and second_per_grid_ts are still HF's.
"""

import numpy as np
import pytest
import torch
from hf_user_dir import VideoStandIn, train_tokenizer
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLProcessor, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

from qwenvl_min.inputs.preprocess import preprocess_image, preprocess_video
from qwenvl_min.inputs.prompts import chat_text, encode, encode_chat, load_tokenizer

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer()  # the same tiny BPE with Qwen's special tokens as the HF-directory tests


def _hf_processor(cls, tokenizer, monkeypatch, fps=2.0):
    original = ProcessorMixin.check_argument_for_proper_class

    def check(self, name, arg):  # the stand-in is not a BaseVideoProcessor (that class needs torchvision)
        return type(arg) if name == "video_processor" else original(self, name, arg)

    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", check)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<|endoftext|>", padding_side="left")
    return cls(
        Qwen2VLImageProcessorPil(), fast, VideoStandIn(fps, {"min_pixels": 784}), chat_template=CHAT_TEMPLATE
    )


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


CONVERSATIONS = [
    [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "What happens in the video?"}, {"type": "video"}],
        },
        {"role": "assistant", "content": "A thing."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And here?"}]},
    ],
]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_text_matches_template(tokenizer, monkeypatch, add_generation_prompt):
    hf = _hf_processor(Qwen2VLProcessor, tokenizer, monkeypatch)
    for messages in CONVERSATIONS:
        expected = hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
        assert chat_text(messages, add_generation_prompt=add_generation_prompt) == expected


@pytest.mark.parametrize("cls", [Qwen2VLProcessor, Qwen2_5_VLProcessor])
def test_batch_matches_hf(tokenizer, monkeypatch, cls):
    hf = _hf_processor(cls, tokenizer, monkeypatch, fps=4.0)
    images = [_image(56, 84), _image(100, 60, seed=1)]
    video = np.random.default_rng(2).integers(0, 256, (5, 56, 112, 3), dtype=np.uint8)
    texts = [chat_text(c) for c in CONVERSATIONS]
    theirs = hf(text=texts, images=images, videos=[video], padding=True, return_tensors="pt")

    pixels = preprocess_image(images)
    clip = preprocess_video(video, fps=4.0, min_pixels=784)
    ours = encode(
        tokenizer, texts, image_grid_thw=pixels["image_grid_thw"], video_grid_thw=clip["video_grid_thw"]
    )
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        assert torch.equal(ours[key], theirs[key]), key
    assert torch.equal(pixels["pixel_values"], theirs["pixel_values"])
    assert (ours["mm_token_type_ids"] == 1).sum() == pixels["image_grid_thw"].prod(-1).sum() // 4
    assert (ours["mm_token_type_ids"] == 2).sum() == clip["video_grid_thw"].prod() // 4
    assert ours["attention_mask"][0, 0] == 0  # the shorter prompt is left padded
    if cls is Qwen2_5_VLProcessor:
        torch.testing.assert_close(
            clip["second_per_grid_ts"], torch.as_tensor(theirs["second_per_grid_ts"]).float()
        )

    chat = encode_chat(
        tokenizer,
        CONVERSATIONS,
        image_grid_thw=pixels["image_grid_thw"],
        video_grid_thw=clip["video_grid_thw"],
    )
    assert all(torch.equal(chat[k], ours[k]) for k in ours)


def test_single_conversation_and_file_tokenizer(tokenizer, tmp_path):
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path)
    out = encode_chat(loaded, CONVERSATIONS[0], image_grid_thw=[[1, 4, 6]])
    assert out["input_ids"].shape[0] == 1 and (out["mm_token_type_ids"] == 1).sum() == 6
    text = loaded.decode(out["input_ids"][0].tolist(), skip_special_tokens=False)
    assert "<|vision_start|>" + "<|image_pad|>" * 6 + "<|vision_end|>" in text.replace(" ", "")


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(("grids", "found", "given"), [([], 1, 0), ([[1, 4, 4], [1, 4, 4]], 1, 2)])
def test_image_count_mismatch(tokenizer, grids, found, given):
    with pytest.raises(ValueError, match=f"has {found} image placeholder.*but {given} image"):
        encode_chat(tokenizer, CONVERSATIONS[0], image_grid_thw=grids or None)


def test_video_count_mismatch(tokenizer):
    with pytest.raises(ValueError, match="has 1 video placeholder.*but 0 video"):
        encode_chat(tokenizer, CONVERSATIONS[1], image_grid_thw=[[1, 4, 4]])
    with pytest.raises(ValueError, match="has 0 video placeholder.*but 1 video"):
        encode_chat(tokenizer, CONVERSATIONS[0], image_grid_thw=[[1, 4, 4]], video_grid_thw=[[1, 4, 4]])


def test_prompt_longer_than_context(tokenizer):
    encode_chat(tokenizer, CONVERSATIONS[0], image_grid_thw=[[1, 4, 4]], max_length=200)
    with pytest.raises(ValueError, match="over the limit of 50"):
        encode_chat(tokenizer, CONVERSATIONS[0], image_grid_thw=[[1, 40, 40]], max_length=50)


def test_bad_messages(tokenizer):
    with pytest.raises(ValueError, match="roles"):
        chat_text([{"role": "robot", "content": "hi"}])
    with pytest.raises(ValueError, match="type 'text', 'image' or 'video'"):
        chat_text([{"role": "user", "content": [{"type": "audio"}]}])
    with pytest.raises(ValueError, match="no messages"):
        chat_text([])
