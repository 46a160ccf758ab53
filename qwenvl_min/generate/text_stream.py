"""Incremental detokenization for streamed answers: each new token's text, without decoding the whole
answer again at every step.

Byte-level BPE (Qwen's tokenizer) can split one character over several tokens: the first bytes of "日"
alone are no text. `tokenizers.decoders.DecodeStream` keeps the bytes that do not yet form a character
and returns text only once they do (an empty piece until then), so the pieces concatenate to the full
decode. `finish` returns what is still held back at the end (a character the answer stopped inside of,
shown as the replacement character, as a full decode shows it).
"""

from __future__ import annotations

from typing import Any


class TextStream:
    """push(token id) -> the new text it completes ("" while a character is incomplete)."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        try:
            from tokenizers.decoders import DecodeStream
        except ImportError:
            raise ImportError(
                "streaming text needs tokenizers >= 0.22 (DecodeStream): pip install 'qwenvl-min[text]'"
            ) from None
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self.ids: list[int] = []
        self.text = ""  # everything returned so far

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        piece = self._stream.step(self.tokenizer, token_id) or ""
        self.text += piece
        return piece

    def finish(self) -> str:
        """The text of the held-back bytes (one full decode, once, at the end)."""
        full = self.tokenizer.decode(self.ids, skip_special_tokens=self.skip_special_tokens)
        rest = full[len(self.text) :] if full.startswith(self.text) else ""
        self.text += rest
        return rest
