"""A word-level tokenizer for the tiny configs, shared by the CLI, fault-injection and tensor-parallel tests."""

from __future__ import annotations

from pathlib import Path

from qwenvl_min import Config


def word_level_tokenizer(path: Path, config: Config) -> None:
    """A word-level tokenizer whose special tokens have the tiny config's ids (250..255)."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    special = {
        "<|endoftext|>": config.bos_token_id,
        "<|im_end|>": config.eos_token_id,
        "<|vision_start|>": config.vision_start_token_id,
        "<|vision_end|>": config.vision_end_token_id,
        "<|image_pad|>": config.image_token_id,
        "<|video_pad|>": config.video_token_id,
        "<|im_start|>": 249,
    }
    words = [
        "<unk>",
        "system",
        "user",
        "assistant",
        "You",
        "are",
        "a",
        "helpful",
        "assistant.",
        "describe",
        "it",
    ]
    vocab = {w: i for i, w in enumerate(words)}
    vocab |= {f"w{i}": i for i in range(len(words), 249)}
    vocab |= special
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(list(special))
    tokenizer.save(str(path))
