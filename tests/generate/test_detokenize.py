"""Streamed text (`qwenvl_min.generate.text_stream.TextStream`, tokenizers' DecodeStream): the pieces concatenate to
the full decode, also when a multi-byte character is split over several byte-level tokens."""

from __future__ import annotations

from hf_user_dir import train_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from qwenvl_min.generate.text_stream import TextStream

TOKENIZER = train_tokenizer()  # byte-level BPE trained on ASCII text: other characters are byte tokens


def _pieces(ids: list[int]) -> tuple[list[str], str]:
    """The streamed pieces, and all the text shown (pieces, then what `finish` adds)."""
    stream = TextStream(TOKENIZER)
    pieces = [stream.push(i) for i in ids]
    return pieces, "".join(pieces) + stream.finish()


def test_multibyte_characters_split_over_tokens_come_out_whole():
    text = "Describe this: héllo, 日本語 and 🙂!"
    ids = TOKENIZER.encode(text).ids
    # each of 日, 本, 語 (3 bytes) and 🙂 (4 bytes) is several tokens here: the test covers the split case
    assert len(ids) > len(text.encode("ascii", "ignore").split()) + 10
    pieces, joined = _pieces(ids)
    assert joined == TOKENIZER.decode(ids) == text
    assert "" in pieces  # a token that completes no character yet gives no text
    assert all("\ufffd" not in p for p in pieces)  # never half a character
    assert any("日" in p for p in pieces) and any("🙂" in p for p in pieces)


def test_an_answer_stopped_inside_a_character_ends_like_the_full_decode():
    ids = TOKENIZER.encode("ok 日").ids[:-1]  # the last byte of 日 is missing
    stream = TextStream(TOKENIZER)
    shown = "".join(stream.push(i) for i in ids)
    assert "\ufffd" not in shown
    assert shown + stream.finish() == TOKENIZER.decode(ids)  # the replacement character, as decode shows it


def test_special_tokens_are_skipped_as_decode_skips_them():
    ids = TOKENIZER.encode("hi").ids + [TOKENIZER.token_to_id("<|im_end|>")] + TOKENIZER.encode(" there").ids
    _, joined = _pieces(ids)
    assert joined == TOKENIZER.decode(ids) == "hi there"


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40))
def test_any_text_streams_to_its_decode(text):
    ids = TOKENIZER.encode(text).ids
    _, joined = _pieces(ids)
    assert joined == TOKENIZER.decode(ids)
