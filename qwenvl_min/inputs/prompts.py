"""Qwen chat prompts → the token tensors the model takes (input_ids, attention_mask, mm_token_type_ids).

The chat format (Qwen2-VL / Qwen2.5-VL), built in code rather than through a Jinja template:

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n      (added when the first turn is not system)
    <|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>Describe it.<|im_end|>\\n
    <|im_start|>assistant\\n                                           (add_generation_prompt)

Each image or video item becomes one placeholder between vision start/end tokens. `encode` then expands
placeholder i into prod(grid_thw[i]) // merge_size² copies, in order (images and videos counted separately,
across the whole batch, as transformers' Qwen2VLProcessor does), and tokenizes with the `tokenizers` library.
Qwen3-VL videos (`video_timestamps` given) expand instead into one block per temporal patch k,
`<{t_k:.1f} seconds><|vision_start|>` + h·w/merge² pads + `<|vision_end|>`, inside the template's own
vision start / end (transformers 5.24's Qwen3VLProcessor replaces the pad token only).
`mm_token_type_ids` marks each token as text (0), image pad (1) or video pad (2): transformers 5.24 needs it
for 3-D positions, and our model derives the same from the ids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .vision_messages import PreparedVision

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
PAD_TOKEN = "<|endoftext|>"  # Qwen's padding token (also its BOS id, 151643)

TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids values

Message = dict[str, Any]  # {"role": str, "content": str | list[{"type": "text"|"image"|"video", ...}]}


def load_tokenizer(path: str | os.PathLike) -> Any:
    """A `tokenizers.Tokenizer` from a checkpoint directory or a tokenizer.json file."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ImportError(
            "tokenizing prompts needs the tokenizers library: pip install 'qwenvl-min[text]'"
        ) from None
    path = os.fspath(path)
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"no tokenizer.json at {file!r}; pass a checkpoint directory that has one (HF checkpoints do)"
        )
    try:
        return Tokenizer.from_file(file)
    except Exception as err:  # the tokenizers library raises its own untyped Exception for bad files
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{file!r} is not a tokenizer.json the tokenizers library can read ({first}); copy it again "
            "from the Hugging Face checkpoint"
        ) from None


def _content_text(content: str | Sequence[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for item in content:
        kind = item.get("type")
        # the test of Qwen's chat template: a type, or the payload key alone (qwen-vl-utils items)
        if kind in ("image", "image_url") or "image" in item or "image_url" in item:
            parts.append(VISION_START + IMAGE_PAD + VISION_END)
        elif kind == "video" or "video" in item:
            parts.append(VISION_START + VIDEO_PAD + VISION_END)
        elif kind == "text":
            parts.append(item["text"])
        else:
            raise ValueError(
                f"content items must have type 'text', 'image' or 'video' (or 'image_url'), got {item!r:.120}"
            )
    return "".join(parts)


def chat_text(
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> str:
    """The chat-formatted prompt, one `<|image_pad|>` / `<|video_pad|>` per image / video (not yet expanded).

    `system_prompt` is inserted when the first message is not a system turn (None: insert nothing).
    `add_generation_prompt` ends the text with an open assistant turn for the model to complete.
    """
    if not messages:
        raise ValueError("no messages given")
    turns = []
    if messages[0]["role"] != "system" and system_prompt is not None:
        turns.append(f"{IM_START}system\n{system_prompt}{IM_END}\n")
    for message in messages:
        role = message["role"]
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"message roles are 'system', 'user' or 'assistant', got {role!r}")
        turns.append(f"{IM_START}{role}\n{_content_text(message['content'])}{IM_END}\n")
    if add_generation_prompt:
        turns.append(f"{IM_START}assistant\n")
    return "".join(turns)


def _grid_tokens(grid_thw: torch.Tensor | Sequence[Sequence[int]] | None, merge_size: int) -> list[int]:
    if grid_thw is None:
        return []
    return [int(t) * int(h) * int(w) // merge_size**2 for t, h, w in torch.as_tensor(grid_thw).tolist()]


def _expand(texts: list[str], token: str, replacements: list[str], what: str) -> list[str]:
    """Replace the i-th `token` across all texts by replacements[i]."""
    found = sum(text.count(token) for text in texts)
    if found != len(replacements):
        raise ValueError(
            f"the prompt has {found} {what} placeholder(s) ({token}) but {len(replacements)} {what}(s) were "
            f"given; give one {what} per placeholder"
        )
    remaining = iter(replacements)
    expanded = []
    for text in texts:
        first, *rest = text.split(token)
        expanded.append(first + "".join(next(remaining) + piece for piece in rest))
    return expanded


def _timed_frames(
    video_grid_thw: torch.Tensor | Sequence[Sequence[int]] | None,
    timestamps: Sequence[Sequence[float]],
    merge_size: int,
) -> list[str]:
    """Qwen3-VL: each video's pads as one `<t seconds>`-headed vision block per temporal patch."""
    grids = [] if video_grid_thw is None else torch.as_tensor(video_grid_thw).tolist()
    if len(timestamps) != len(grids):
        raise ValueError(
            f"{len(timestamps)} timestamp lists were given for {len(grids)} videos; give one per video"
        )
    blocks = []
    for (t, h, w), seconds in zip(grids, timestamps):
        if len(seconds) != t:
            raise ValueError(f"a video of {t} temporal patches needs {t} timestamps, got {len(seconds)}")
        frame = VISION_START + VIDEO_PAD * (h * w // merge_size**2) + VISION_END
        blocks.append("".join(f"<{second:.1f} seconds>{frame}" for second in seconds))
    return blocks


def encode(
    tokenizer: Any,
    texts: str | Sequence[str],
    *,
    image_grid_thw: torch.Tensor | Sequence[Sequence[int]] | None = None,
    video_grid_thw: torch.Tensor | Sequence[Sequence[int]] | None = None,
    merge_size: int = 2,
    max_length: int | None = None,
    pad_token: str = PAD_TOKEN,
    video_timestamps: Sequence[Sequence[float]] | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenize prompts whose images / videos are single placeholders; returns int64 (B, T) tensors
    {"input_ids", "attention_mask", "mm_token_type_ids"}, left padded with `pad_token` (mask 0, type 0).

    `tokenizer` is a `tokenizers.Tokenizer` (see `load_tokenizer`). Grids are the `image_grid_thw` /
    `video_grid_thw` of the preprocessed media, in the order the placeholders appear across the batch.
    `max_length` (the model's context) makes a longer prompt an error instead of a silent truncation.
    `video_timestamps` (Qwen3-VL): per video, the seconds of each temporal patch; the video then expands
    into timestamped per-frame blocks (see the module docstring).
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no prompts given")
    texts = _expand(
        texts, IMAGE_PAD, [IMAGE_PAD * n for n in _grid_tokens(image_grid_thw, merge_size)], "image"
    )
    if video_timestamps is None:
        videos = [VIDEO_PAD * n for n in _grid_tokens(video_grid_thw, merge_size)]
    else:
        videos = _timed_frames(video_grid_thw, video_timestamps, merge_size)
    texts = _expand(texts, VIDEO_PAD, videos, "video")

    ids = [encoding.ids for encoding in tokenizer.encode_batch(texts)]
    longest = max(len(row) for row in ids)
    if max_length is not None and longest > max_length:
        raise ValueError(
            f"a prompt is {longest} tokens long, over the limit of {max_length}; shorten the text or lower "
            "max_pixels / the frame count to use fewer vision tokens"
        )
    special = {name: tokenizer.token_to_id(name) for name in (pad_token, IMAGE_PAD, VIDEO_PAD)}
    if missing := [name for name, i in special.items() if i is None]:
        raise ValueError(f"the tokenizer does not know the token(s) {missing}; is it a Qwen2-VL tokenizer?")

    input_ids = torch.full((len(ids), longest), special[pad_token], dtype=torch.int64)
    attention_mask = torch.zeros((len(ids), longest), dtype=torch.int64)
    for b, row in enumerate(ids):
        if row:
            input_ids[b, longest - len(row) :] = torch.tensor(row)
            attention_mask[b, longest - len(row) :] = 1
    mm_token_type_ids = torch.zeros_like(input_ids)
    mm_token_type_ids[input_ids == special[IMAGE_PAD]] = IMAGE
    mm_token_type_ids[input_ids == special[VIDEO_PAD]] = VIDEO
    return {"input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": mm_token_type_ids}


def encode_chat(
    tokenizer: Any,
    conversations: Sequence[Message] | Sequence[Sequence[Message]],
    *,
    image_grid_thw: torch.Tensor | Sequence[Sequence[int]] | None = None,
    video_grid_thw: torch.Tensor | Sequence[Sequence[int]] | None = None,
    add_generation_prompt: bool = True,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    merge_size: int = 2,
    max_length: int | None = None,
    vision: PreparedVision | None = None,
) -> dict[str, torch.Tensor]:
    """`chat_text` then `encode`, for one conversation (a list of messages) or a batch of them.

    `vision`: the `prepare_vision(conversations)` result; its grids are used (instead of passing
    image_grid_thw / video_grid_thw) and the model takes `vision.model_inputs()` beside the ids."""
    if vision is not None:
        if image_grid_thw is not None or video_grid_thw is not None:
            raise ValueError("pass either vision= or image_grid_thw / video_grid_thw, not both")
        image_grid_thw, video_grid_thw, merge_size = (
            vision.image_grid_thw,
            vision.video_grid_thw,
            vision.merge_size,
        )
    if conversations and isinstance(conversations[0], dict):
        conversations = [conversations]
    texts = [
        chat_text(c, add_generation_prompt=add_generation_prompt, system_prompt=system_prompt)
        for c in conversations
    ]
    return encode(
        tokenizer,
        texts,
        image_grid_thw=image_grid_thw,
        video_grid_thw=video_grid_thw,
        merge_size=merge_size,
        max_length=max_length,
    )
