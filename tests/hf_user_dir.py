"""A user's Hugging Face checkpoint directory in miniature: a tiny random model saved with `save_pretrained`,
a byte-level BPE tokenizer with Qwen's special tokens (saved by transformers' tokenizer class), the image
processor config as published Qwen2.5-VL checkpoints ship it (legacy min_pixels / max_pixels, max 12845056),
the published Qwen2-VL chat template (as chat_template.json) and generation_config.json; plus the HF
processor built from those files (its video processor is a stand-in: HF's needs torchvision, which cannot
be installed beside the pinned CPU torch; expansion, tokenization and second_per_grid_ts stay HF's).

Qwen3-VL directories (families "qwen3_vl", "qwen3_vl_moe") hold what the published Qwen3-VL checkpoints
ship instead: preprocessor_config.json and video_preprocessor_config.json with patch 16, mean / std 0.5
and their budgets, and a Qwen3-VL-style chat template (no default system prompt); their HF processor is
transformers' Qwen3VLProcessor (timestamps and the per-frame expansion are its own).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from hf_models import build_hf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin
from transformers.video_utils import VideoMetadata

from qwenvl_min import Config
from qwenvl_min.inputs import video_qwen3
from qwenvl_min.inputs.preprocess import concat_outputs, preprocess_video

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
SPECIAL += ["<|image_pad|>", "<|video_pad|>"]  # ids 0..6 in this order
IDS = dict(
    bos_token_id=0,
    eos_token_id=2,
    vision_start_token_id=3,
    vision_end_token_id=4,
    image_token_id=5,
    video_token_id=6,
)
# The template the released Qwen2-VL / Qwen2.5-VL Instruct checkpoints ship (chat_template.json).
QWEN_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PREPROCESSOR = {  # published Qwen2.5-VL-7B-Instruct preprocessor_config.json
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}
# A Qwen3-VL-style template written for these tests: ChatML, vision items as <vs> pad <ve> with optional
# "Picture N: " / "Video N: ", and no default system prompt (what the published Qwen3-VL templates do for
# these messages; their tool and reasoning branches are left out).
QWEN3_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}{%- else %}"
    "{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Picture ' ~ image_count.value ~ ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content['type'] == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}{{- 'Video ' ~ video_count.value ~ ': ' }}{%- endif %}"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in content %}{{- content['text'] }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
QWEN3_PREPROCESSOR = {  # published Qwen3-VL preprocessor_config.json
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor",
    "image_processor_type": "Qwen2VLImageProcessorFast",
}
QWEN3_VIDEO_PREPROCESSOR = {  # published Qwen3-VL video_preprocessor_config.json
    "size": {"longest_edge": 25165824, "shortest_edge": 4096},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "Qwen3VLProcessor",
    "video_processor_type": "Qwen3VLVideoProcessor",
    "fps": 2,
    "min_frames": 4,
    "max_frames": 768,
    "do_sample_frames": True,
}
QWEN3 = ("qwen3_vl", "qwen3_vl_moe")
GENERATION = {  # published Qwen2.5-VL-7B-Instruct generation_config.json, with this tokenizer's ids
    "bos_token_id": 0,
    "pad_token_id": 0,
    "do_sample": True,
    "eos_token_id": [2, 0],
    "repetition_penalty": 1.05,
    "temperature": 0.1,
    "top_p": 0.001,
    "top_k": 1,
}


def train_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = ["You are a helpful assistant.", "Describe this image in detail.", "What happens in the video?"]
    tok.train_from_iterator(corpus * 20, trainer)
    return tok


def user_config(family: str) -> Config:
    """The tiny preset of a family with this tokenizer's vocabulary and special ids."""
    preset = {"qwen2_vl": "tiny-qwen2-vl", "qwen2_5_vl": "tiny-qwen2.5-vl", "qwen3_vl": "tiny-qwen3-vl"}
    cfg = Config.preset(preset.get(family, "tiny-qwen3-vl-moe"))
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, vocab_size=512), **IDS)


def make_user_dir(directory: Path, family: str, seed: int = 0):
    """Write the directory; returns the HF model (fp32, eval) whose weights it holds."""
    cfg = user_config(family)
    hf = build_hf(cfg, seed=seed)
    hf.save_pretrained(directory, max_shard_size="300KB")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(), pad_token="<|endoftext|>", padding_side="left"
    )
    fast.save_pretrained(directory)
    if family in QWEN3:
        (directory / "preprocessor_config.json").write_text(json.dumps(QWEN3_PREPROCESSOR, indent=2))
        (directory / "video_preprocessor_config.json").write_text(
            json.dumps(QWEN3_VIDEO_PREPROCESSOR, indent=2)
        )
        (directory / "chat_template.json").write_text(json.dumps({"chat_template": QWEN3_TEMPLATE}))
    else:
        (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
        (directory / "chat_template.json").write_text(json.dumps({"chat_template": QWEN_TEMPLATE}))
    (directory / "generation_config.json").write_text(json.dumps(GENERATION, indent=2))
    return hf


class VideoStandIn:
    """Plays HF's video processor: our video outputs (with `budget`) and HF-style metadata."""

    merge_size, temporal_patch_size = 2, 2

    def __init__(self, fps: float, budget: dict) -> None:
        self.fps, self.budget = fps, budget

    def __call__(self, videos, **kwargs):
        data = concat_outputs([preprocess_video(v, fps=self.fps, **self.budget) for v in videos])
        meta = [
            VideoMetadata(total_num_frames=len(v), fps=self.fps, frames_indices=list(range(len(v))))
            for v in videos
        ]
        return {
            "pixel_values_videos": data["pixel_values_videos"],
            "video_grid_thw": data["video_grid_thw"],
            "video_metadata": meta,
        }


class Qwen3VideoStandIn:
    """Plays Qwen3-VL's video processor: our Qwen3 video outputs and the metadata transformers' processor
    turns into timestamps (the kept frame numbers and the rate)."""

    merge_size, temporal_patch_size = 2, 2

    def __init__(self, fps: float, budget: dict) -> None:
        self.fps, self.budget = fps, budget

    def __call__(self, videos, **kwargs):
        outputs, meta = [], []
        for video in videos:
            data, _ = video_qwen3.preprocess_video(video, fps=self.fps, **self.budget)
            indices = video_qwen3.sample_frame_indices(len(video), self.fps).tolist()
            outputs.append(data)
            meta.append(VideoMetadata(total_num_frames=len(video), fps=self.fps, frames_indices=indices))
        data = concat_outputs(outputs)
        return {**data, "video_metadata": meta}


def hf_processor(directory: Path, family: str, monkeypatch, fps: float, video_budget: dict):
    """transformers' processor from the directory's files (tokenizer, image processor, chat template)."""
    original = ProcessorMixin.check_argument_for_proper_class

    def check(self, name, arg):  # the stand-in is not a BaseVideoProcessor (that class needs torchvision)
        return type(arg) if name == "video_processor" else original(self, name, arg)

    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", check)
    cls = {"qwen2_vl": Qwen2VLProcessor, "qwen2_5_vl": Qwen2_5_VLProcessor}.get(family, Qwen3VLProcessor)
    template = json.loads((directory / "chat_template.json").read_text())["chat_template"]
    video = (Qwen3VideoStandIn if family in QWEN3 else VideoStandIn)(fps, video_budget)
    return cls(
        Qwen2VLImageProcessorPil.from_pretrained(directory),
        PreTrainedTokenizerFast.from_pretrained(directory),
        video,
        chat_template=template,
    )
